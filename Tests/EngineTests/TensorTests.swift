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
