// PNGTests: PNGImage against fixtures written by tools/fixtures/make_png_fixtures.py (an independent encoder).
import Foundation
import XCTest
@testable import Engine

final class PNGTests: XCTestCase {
    /// One entry of Fixtures/png/expected.json: row-major RGB levels; decoded floats equal level / max.
    private struct Expected: Decodable {
        let width: Int
        let height: Int
        let max: Int
        let rgb: [[Int]]
    }

    private static var fixtures: URL {
        // The test target copies the whole Fixtures folder into its bundle.
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures/png")
    }

    private func fixtureNames(_ folder: String) throws -> [String] {
        let url = Self.fixtures.appendingPathComponent(folder)
        return try FileManager.default.contentsOfDirectory(atPath: url.path)
            .filter { $0.hasSuffix(".png") }.map { String($0.dropLast(4)) }.sorted()
    }

    private func path(_ folder: String, _ name: String) -> String {
        Self.fixtures.appendingPathComponent("\(folder)/\(name).png").path
    }

    private func loadExpected() throws -> [String: Expected] {
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("expected.json"))
        return try JSONDecoder().decode([String: Expected].self, from: data)
    }

    // MARK: - Valid files

    func testEveryValidFixtureHasExpectedValues() throws {
        let expected = try loadExpected()
        XCTAssertEqual(try fixtureNames("valid"), expected.keys.sorted())
        XCTAssertGreaterThanOrEqual(expected.count, 9)
    }

    /// Exact: an 8-bit level v must decode to Float(v) / 255, a 16-bit one to Float(v) / 65535.
    func testValidFixturesDecodeExactly() throws {
        for (name, want) in try loadExpected().sorted(by: { $0.key < $1.key }) {
            let fromFile = try PNGImage.read(path: path("valid", name))
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path("valid", name))))
            let fromData = try PNGImage.read(data: bytes)
            for image in [fromFile, fromData] {
                XCTAssertEqual(image.shape, [1, 3, want.height, want.width], name)
                guard image.shape == [1, 3, want.height, want.width] else { continue }
                let plane = want.width * want.height
                var mismatches = 0
                for i in 0..<plane {
                    for c in 0..<3 {
                        let expect = Float(want.rgb[i][c]) / Float(want.max)
                        let got = image[flat: c * plane + i]
                        if got != expect {
                            mismatches += 1
                            if mismatches <= 3 {
                                XCTFail("\(name): channel \(c) at (x \(i % want.width), y \(i / want.width)): "
                                        + "got \(got), expected \(expect) (level \(want.rgb[i][c]) / \(want.max))")
                            }
                        }
                    }
                }
                XCTAssertEqual(mismatches, 0, "\(name): \(mismatches) mismatching samples")
            }
        }
    }

    // MARK: - Broken files

    func testBrokenFixturesThrowFormatErrorsNamingTheFile() throws {
        let names = try fixtureNames("broken")
        XCTAssertGreaterThanOrEqual(names.count, 8)
        for name in names {
            let file = path("broken", name)
            XCTAssertThrowsError(try PNGImage.read(path: file), name) { error in
                guard case .format(let message)? = error as? EngineError else {
                    return XCTFail("\(name): expected EngineError.format, got \(error)")
                }
                XCTAssertTrue(message.contains(file), "\(name): message does not name the file: \(message)")
            }
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
            XCTAssertThrowsError(try PNGImage.read(data: bytes), name) { error in
                guard case .format? = error as? EngineError else {
                    return XCTFail("\(name): expected EngineError.format, got \(error)")
                }
            }
        }
    }

    func testBrokenFixturesReportTheirCause() throws {
        let causes = [
            "empty": "empty",
            "not_png": "not a PNG",
            "signature_only": "truncated",
            "truncated_after_ihdr": "truncated",
            "truncated_mid_idat": "truncated",
            "truncated_before_iend": "truncated",
            "bad_crc_ihdr": "CRC",
            "huge_dimensions": "100000x100000",
            "too_wide": "too large",
            "too_many_pixels": "too large",
            "zero_width": "width is zero",
            "bad_bit_depth": "bit depth",
            "corrupt_zlib_header": "IDAT",
            "not_enough_data": "Not enough image data",
        ]
        for (name, expected) in causes.sorted(by: { $0.key < $1.key }) {
            let file = path("broken", name)
            XCTAssertThrowsError(try PNGImage.read(path: file), name) { error in
                let message = "\(error)"
                // Look past the file name, which may itself contain the word.
                let cause = message.components(separatedBy: file).last ?? message
                XCTAssertTrue(cause.contains(expected), "\(name): expected \"\(expected)\" in: \(message)")
            }
        }
    }

    /// Every prefix of a valid file (cut anywhere before the end of IEND) is refused, never crashes.
    func testEveryTruncationThrows() throws {
        for name in ["rgb8", "rgb16", "rgb8_interlaced", "palette8_trns"] {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path("valid", name))))
            XCTAssertNoThrow(try PNGImage.read(data: bytes), name)
            for length in 0..<bytes.count {
                XCTAssertThrowsError(try PNGImage.read(data: Array(bytes[..<length])), "\(name) cut at \(length)")
            }
        }
    }

    /// Random byte corruptions either decode to a well-formed tensor or throw; neither may crash.
    func testCorruptedBytesNeverCrash() throws {
        var rng = SplitMix64(seed: 0x5EED_0F_9A7E)
        for name in ["rgb8", "gray16_interlaced", "palette8_trns", "rgba16"] {
            let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path("valid", name))))
            var decoded = 0
            for _ in 0..<400 {
                var bytes = original
                for _ in 0..<(1 + Int(rng.next() % 3)) {
                    // Corrupt after the signature so most attempts reach libpng's chunk parsing.
                    let at = 8 + Int(rng.next() % UInt64(bytes.count - 8))
                    bytes[at] = UInt8(truncatingIfNeeded: rng.next())
                }
                if let image = try? PNGImage.read(data: bytes) {
                    decoded += 1
                    XCTAssertEqual(image.rank, 4)
                    XCTAssertEqual(image.shape[1], 3)
                    XCTAssertTrue(image.array.allSatisfy { $0 >= 0 && $0 <= 1 }, name)
                }
            }
            XCTAssertLessThan(decoded, 400, "\(name): no corruption was detected")
        }
    }

    // MARK: - Round trips

    func testRoundTripIsExactAt8And16Bits() throws {
        var rng = SplitMix64(seed: 42)
        for bitDepth in [8, 16] {
            let levels: Float = bitDepth == 16 ? 65535 : 255
            let (height, width) = (7, 11)
            let values = (0..<(3 * height * width)).map { _ in Float(rng.next() % UInt64(levels + 1)) / levels }
            let image = Tensor(shape: [1, 3, height, width], values: values)

            let decoded = try PNGImage.read(data: PNGImage.encode(image, bitDepth: bitDepth))
            XCTAssertEqual(decoded.shape, [1, 3, height, width])
            XCTAssertEqual(decoded.array, values, "\(bitDepth)-bit round trip through memory")

            let file = temporaryPath("roundtrip\(bitDepth).png")
            defer { try? FileManager.default.removeItem(atPath: file) }
            try PNGImage.write(image, path: file, bitDepth: bitDepth)
            XCTAssertEqual(try PNGImage.read(path: file).array, values, "\(bitDepth)-bit round trip through a file")
        }
    }

    func testWriteAcceptsCHWAndClampsAndRounds() throws {
        let inputs: [Float] = [-1, 2, .nan, .infinity, -.infinity, 0.5, 0.2, 1, 0]
        let image = Tensor(shape: [3, 1, 3], values: inputs) // [C, H, W]
        let decoded = try PNGImage.read(data: PNGImage.encode(image))
        XCTAssertEqual(decoded.shape, [1, 3, 1, 3])
        let levels: [Float] = [0, 255, 0, 255, 0, 128, 51, 255, 0]
        XCTAssertEqual(decoded.array, levels.map { $0 / 255 })

        let deep = try PNGImage.read(data: PNGImage.encode(image, bitDepth: 16))
        XCTAssertEqual(deep.array, [0, 65535, 0, 65535, 0, 32768, 13107, 65535, 0].map { Float($0) / 65535 })
    }

    func testWriteRejectsWrongShapesAndBitDepths() {
        let badShapes: [[Int]] = [[4, 4], [1, 1, 4, 4], [1, 4, 4, 4], [2, 3, 4, 4], [4, 4, 4], [1, 3, 0, 4],
                                  [3, 4, 0], [1, 3, 4, 4, 1], [3], []]
        for shape in badShapes {
            let image = Tensor(zeros: shape)
            XCTAssertThrowsError(try PNGImage.encode(image), "\(shape)") { error in
                guard case .format? = error as? EngineError else { return XCTFail("\(shape): got \(error)") }
            }
        }
        let image = Tensor(zeros: [1, 3, 2, 2])
        for bitDepth in [0, 1, 4, 12, 32, -8] {
            XCTAssertThrowsError(try PNGImage.encode(image, bitDepth: bitDepth), "bit depth \(bitDepth)") { error in
                guard case .format? = error as? EngineError else { return XCTFail("\(bitDepth): got \(error)") }
            }
        }
        XCTAssertThrowsError(try PNGImage.encode(Tensor(zeros: [1, 3, 1, PNGImage.maxSide + 1])))
    }

    // MARK: - I/O errors

    func testMissingFileThrowsIOErrorNamingThePath() {
        let missing = temporaryPath("does-not-exist-\(UInt32.random(in: 0...UInt32.max)).png")
        XCTAssertThrowsError(try PNGImage.read(path: missing)) { error in
            guard case .io(let message)? = error as? EngineError else { return XCTFail("got \(error)") }
            XCTAssertTrue(message.contains(missing), message)
        }
        XCTAssertThrowsError(try PNGImage.read(path: NSTemporaryDirectory())) { error in
            guard case .io? = error as? EngineError else { return XCTFail("directory: got \(error)") }
        }
    }

    func testWriteToMissingFolderThrowsIOError() {
        let file = temporaryPath("no-such-folder-\(UInt32.random(in: 0...UInt32.max))/out.png")
        XCTAssertThrowsError(try PNGImage.write(Tensor(zeros: [1, 3, 2, 2]), path: file)) { error in
            guard case .io(let message)? = error as? EngineError else { return XCTFail("got \(error)") }
            XCTAssertTrue(message.contains(file), message)
        }
    }

    private func temporaryPath(_ name: String) -> String {
        URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("png-tests-\(getpid())-\(name)").path
    }
}

/// A small deterministic generator (SplitMix64) so corruption and round-trip inputs repeat run to run.
private struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
