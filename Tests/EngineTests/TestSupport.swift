// Test helpers: fixture paths, seeded random tensors, and closeness checks that report where they fail.
import Foundation
import XCTest
@testable import Engine

enum Fixtures {
    /// Path of a file under Tests/EngineTests/Fixtures (copied into the test bundle).
    static func path(_ relative: String) -> String {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures").appendingPathComponent(relative).path
    }
}

/// A small deterministic generator for test inputs (the engine's SplitMix64).
struct TestRNG {
    var generator: SplitMix64
    init(seed: UInt64) { generator = SplitMix64(seed: seed) }
    mutating func next() -> UInt64 { generator.next() }
    /// Uniform in [-1, 1).
    mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
    mutating func tensor(_ shape: [Int], scale: Float = 1) -> Tensor {
        let t = Tensor(uninitialized: shape)
        for i in 0..<t.count { t.data[i] = uniform() * scale }
        return t
    }
}

/// Asserts |a − g| ≤ atol + rtol·|g| element-wise; on failure reports the worst element and the max errors.
func assertClose(_ a: Tensor, _ g: Tensor, atol: Float, rtol: Float, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    guard a.shape == g.shape else {
        XCTFail("\(what): shape \(a.shape) != expected \(g.shape)", file: file, line: line)
        return
    }
    var maxAbs: Float = 0, maxRel: Float = 0, worst = -1, worstExcess: Float = 0
    for i in 0..<a.count {
        let d = abs(a.data[i] - g.data[i])
        maxAbs = max(maxAbs, d)
        maxRel = max(maxRel, d / max(abs(g.data[i]), 1e-12))
        let excess = d - (atol + rtol * abs(g.data[i]))
        if excess > worstExcess || (d.isNaN && worst < 0) { worstExcess = excess; worst = i }
    }
    if worst >= 0 {
        XCTFail("\(what): element \(worst) = \(a.data[worst]) vs \(g.data[worst]); max abs err \(maxAbs), max rel err \(maxRel) (atol \(atol), rtol \(rtol))",
                file: file, line: line)
    }
}
