// Model folder settings (model_index.json) and the AdaIN colour fix.
import Foundation
import XCTest
@testable import Engine

final class ModelIndexTests: XCTestCase {
    func tempDir() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("autodir-index-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    func testDefaultsAndOverrides() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(#"{"_class_name": "AutoDIRPipeline", "format_version": 1, "autodir": {"defaults": {"steps": 20, "cfg_text": 1.5}}}"#.utf8)
            .write(to: URL(fileURLWithPath: dir + "/model_index.json"))
        let index = try ModelIndex.load(directory: dir)
        XCTAssertEqual(index.autodir.categories.count, 8)
        XCTAssertEqual(index.autodir.categories.last, "no")
        XCTAssertEqual(index.autodir.prompt(for: "low resolution"), "A photo needs low resolution artifact reduction")
        XCTAssertEqual(index.autodir.scaleFactor, 0.18215)
        XCTAssertEqual(index.autodir.defaults.steps, 20)
        XCTAssertEqual(index.autodir.defaults.cfgText, 1.5)
        XCTAssertEqual(index.autodir.defaults.cfgImage, 1)
        XCTAssertEqual(index.autodir.defaults.maxPasses, 7)
    }

    func testBadFoldersAndFilesAreErrors() throws {
        XCTAssertThrowsError(try ModelIndex.load(directory: "/nonexistent/autodir-model")) {
            XCTAssertTrue("\($0)".contains("does not exist"), "\($0)")
        }
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        XCTAssertThrowsError(try ModelIndex.load(directory: dir))  // no model_index.json
        for bad in ["{", "[]", #"{"format_version": 2}"#, #"{"autodir": {"categories": ["noise"]}}"#,
                    #"{"autodir": {"prompt_template": "no placeholder"}}"#, #"{"autodir": {"defaults": {"steps": 0}}}"#] {
            try Data(bad.utf8).write(to: URL(fileURLWithPath: dir + "/model_index.json"))
            XCTAssertThrowsError(try ModelIndex.load(directory: dir), bad)
        }
    }

    func testAdaINGivesEachChannelTheReferenceStatistics() {
        var rng = TestRNG(seed: 9)
        let x = rng.tensor([1, 3, 17, 13], scale: 2), ref = rng.tensor([1, 3, 9, 11], scale: 0.3)
        for i in 0..<ref.count { ref.data[i] += Float(i % 3) * 0.1 }
        let y = Ops.adainColorFix(x, reference: ref)
        func meanStd(_ t: Tensor, _ c: Int) -> (Double, Double) {
            let plane = t.count / 3
            let v = (0..<plane).map { Double(t.data[c * plane + $0]) }
            let m = v.reduce(0, +) / Double(plane)
            return (m, (v.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(plane - 1)).squareRoot())
        }
        for c in 0..<3 {
            let (my, sy) = meanStd(y, c), (mr, sr) = meanStd(ref, c)
            XCTAssertEqual(my, mr, accuracy: 1e-5)
            XCTAssertEqual(sy, sr, accuracy: 1e-3 * sr)
        }
    }
}
