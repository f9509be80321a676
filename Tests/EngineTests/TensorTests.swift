import XCTest
@testable import Engine

final class TensorTests: XCTestCase {
    func testReshapeSharesStorage() {
        let t = Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        let r = t.reshaped([3, 2])
        r[flat: 0] = 9
        XCTAssertEqual(t[flat: 0], 9)
        XCTAssertEqual(r.shape, [3, 2])
    }
}

final class ScratchPoolTests: XCTestCase {
    /// Nested buffers are distinct and 64-byte aligned; an idle buffer is handed out again for a request it fits.
    func testBuffersAreReusedAndNestedOnesAreDistinct() {
        ScratchPool.trim()
        var first: UnsafeMutablePointer<Float>?, second: UnsafeMutablePointer<Float>?
        ScratchPool.withBuffer(1000) { a in
            first = a
            XCTAssertEqual(Int(bitPattern: a) % 64, 0)
            a.update(repeating: 1, count: 1000)
            ScratchPool.withBuffer(1000) { b in
                XCTAssertNotEqual(a, b)
                second = b
                b.update(repeating: 2, count: 1000)
                XCTAssertEqual(a[999], 1)
            }
        }
        ScratchPool.withBuffer(500) { c in XCTAssertTrue(c == first || c == second) }   // an idle buffer that fits
        ScratchPool.trim()
    }
}
