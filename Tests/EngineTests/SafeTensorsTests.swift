// SafeTensorsTests: the safetensors reader/writer and WeightLoader, against files from Python `safetensors`
// and against broken files written here (each must throw; none may trap).
import Foundation
import XCTest
@testable import Engine

final class SafeTensorsTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("autodir-st-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    // MARK: - Helpers

    private func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    /// Writes a safetensors file by hand: a length field (the header's, or `headerLength`), the header text, then data.
    @discardableResult
    private func rawFile(_ name: String, header: String, data: [UInt8] = [], headerLength: UInt64? = nil) throws -> String {
        var bytes: [UInt8] = []
        let h = Array(header.utf8)
        withUnsafeBytes(of: (headerLength ?? UInt64(h.count)).littleEndian) { bytes.append(contentsOf: $0) }
        bytes += h + data
        return try bytesFile(name, bytes)
    }

    @discardableResult
    private func bytesFile(_ name: String, _ bytes: [UInt8]) throws -> String {
        let p = path(name)
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }

    private func floatBytes(_ xs: [Float]) -> [UInt8] {
        xs.flatMap { x in withUnsafeBytes(of: x.bitPattern.littleEndian) { Array($0) } }
    }

    /// Asserts that `body` throws an EngineError whose description contains every one of `fragments`.
    private func assertEngineError<T>(_ body: @autoclosure () throws -> T, _ fragments: [String],
                                      file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try body()
            XCTFail("expected an error containing \(fragments)", file: file, line: line)
        } catch let e as EngineError {
            let text = e.description
            for f in fragments where !text.contains(f) {
                XCTFail("error \"\(text)\" does not contain \"\(f)\"", file: file, line: line)
            }
        } catch {
            XCTFail("expected EngineError, got \(error)", file: file, line: line)
        }
    }

    private func sameBits(_ a: Float, _ b: Float) -> Bool {
        a.isNaN ? b.isNaN : a.bitPattern == b.bitPattern
    }

    // MARK: - Round trips

    func testRoundTripF32IsExactWithMetadataAndSortedKeys() throws {
        let p = path("f32.safetensors")
        let a = Tensor(shape: [2, 3], values: [1, -2, 3.5, .infinity, -.infinity, .leastNonzeroMagnitude])
        let b = Tensor(shape: [], values: [42])
        let c = Tensor(zeros: [0, 4])
        let d = Tensor(shape: [3], values: [.nan, -0.0, .greatestFiniteMagnitude])
        try SafeTensors.write([("z.last", a), ("a.first", b), ("m.empty", c), ("m.special", d)],
                              metadata: ["format": "pt", "note": "quote \" backslash \\ newline \n é"], to: p)
        let f = try SafeTensors(path: p)
        XCTAssertEqual(f.keys, ["a.first", "m.empty", "m.special", "z.last"])
        XCTAssertEqual(f.metadata, ["format": "pt", "note": "quote \" backslash \\ newline \n é"])
        XCTAssertEqual(f.entry("z.last")?.dtype, "F32")
        XCTAssertEqual(f.entry("z.last")?.shape, [2, 3])
        XCTAssertNil(f.entry("nope"))
        for (key, t) in [("z.last", a), ("a.first", b), ("m.empty", c), ("m.special", d)] {
            let r = try f.tensor(key)
            XCTAssertEqual(r.shape, t.shape, key)
            XCTAssertTrue(zip(r.array, t.array).allSatisfy { sameBits($0, $1) }, "\(key): \(r.array) vs \(t.array)")
        }
    }

    func testZeroCopyTensorOutlivesFileAndWritesStayPrivate() throws {
        let p = path("cow.safetensors")
        try SafeTensors.write([("w", Tensor(shape: [4], values: [1, 2, 3, 4]))], to: p)
        var t: Tensor? = try SafeTensors(path: p).tensor("w")  // the SafeTensors object is released here
        t?[flat: 0] = 99  // copy-on-write page: allowed, and never reaches the file
        XCTAssertEqual(t?.array, [99, 2, 3, 4])
        t = nil
        XCTAssertEqual(try SafeTensors(path: p).tensor("w").array, [1, 2, 3, 4])
    }

    func testRoundTripF16WithinHalfUlpAndSpecialValues() throws {
        var rng = SplitMix(seed: 1)
        let random = (0..<4096).map { _ in Float(rng.uniform() * 2 - 1) * powf(2, Float(Int(rng.uniform() * 30) - 14)) }
        let specials: [Float] = [0, -0.0, 1, -2.5, 65504, 65519, 65520, -1e6, 0x1p-14, 0x1p-24, 0x1p-26, 1e-9,
                                 .infinity, -.infinity, .nan]
        let p = path("f16.safetensors")
        try SafeTensors.write([("r", Tensor(shape: [64, 64], values: random)),
                               ("s", Tensor(shape: [specials.count], values: specials))], dtype: .f16, to: p)
        let f = try SafeTensors(path: p)
        XCTAssertEqual(f.entry("r")?.dtype, "F16")
        let r = try f.tensor("r")
        XCTAssertEqual(r.shape, [64, 64])
        var worst: Float = 0
        for (x, y) in zip(random, r.array) {
            // Normal range: |error| ≤ half an ulp = 2^-11 relative; subnormal range: ≤ 2^-25 absolute.
            let err = abs(x - y)
            XCTAssertLessThanOrEqual(err, max(abs(x) * 0x1p-11, 0x1p-25), "\(x) -> \(y)")
            worst = max(worst, err / max(abs(x), 0x1p-14))
        }
        XCTAssertGreaterThan(worst, 0)  // the values really went through F16
        let expected: [Float] = [0, -0.0, 1, -2.5, 65504, 65504, .infinity, -.infinity, 0x1p-14, 0x1p-24, 0, 0,
                                 .infinity, -.infinity, .nan]
        let s = try f.tensor("s").array
        for (i, (e, g)) in zip(expected, s).enumerated() {
            XCTAssertTrue(sameBits(e, g), "special #\(i): \(specials[i]) -> \(g), expected \(e)")
        }
    }

    func testRoundTripBF16RoundsToNearestEven() throws {
        var rng = SplitMix(seed: 2)
        let random = (0..<4096).map { _ in Float(rng.uniform() * 2 - 1) * powf(2, Float(Int(rng.uniform() * 200) - 100)) }
        let specials: [Float] = [
            1 + 0x1p-8,              // tie → even (1)
            1 + 3 * 0x1p-8,          // tie → even (1 + 2^-6)
            1 + 0x1p-8 + 0x1p-20,    // just above the tie → up
            -(1 + 0x1p-8),
            .greatestFiniteMagnitude,  // rounds past the largest BF16 → inf
            0x1p-133, -0.0, .infinity, -.infinity, .nan,
        ]
        let p = path("bf16.safetensors")
        try SafeTensors.write([("r", Tensor(shape: [4096], values: random)),
                               ("s", Tensor(shape: [specials.count], values: specials))], dtype: .bf16, to: p)
        let f = try SafeTensors(path: p)
        XCTAssertEqual(f.entry("s")?.dtype, "BF16")
        for (x, y) in zip(random, try f.tensor("r").array) {
            XCTAssertLessThanOrEqual(abs(x - y), abs(x) * 0x1p-8, "\(x) -> \(y)")
            XCTAssertEqual(y.bitPattern & 0xFFFF, 0)
        }
        let expected: [Float] = [1, 1 + 0x1p-6, 1 + 0x1p-7, -1, .infinity, 0x1p-133, -0.0, .infinity, -.infinity, .nan]
        let s = try f.tensor("s").array
        for (i, (e, g)) in zip(expected, s).enumerated() {
            XCTAssertTrue(sameBits(e, g), "special #\(i): \(specials[i]) -> \(g), expected \(e)")
        }
    }

    /// Every F16 and BF16 bit pattern, in a file written by hand, against an independent decoding.
    func testWideningOfEveryF16AndBF16BitPattern() throws {
        let n = 65536
        var data: [UInt8] = []
        data.reserveCapacity(4 * n)
        for b in 0..<n { data += [UInt8(b & 0xFF), UInt8(b >> 8)] }
        data += data
        let header = #"{"h":{"dtype":"F16","shape":[256,256],"data_offsets":[0,131072]},"# +
                     #""b":{"dtype":"BF16","shape":[65536],"data_offsets":[131072,262144]}}"#
        let f = try SafeTensors(path: rawFile("bits.safetensors", header: header, data: data))
        let h = try f.tensor("h"), b = try f.tensor("b")
        for bits in 0..<n {
            let sign: Float = bits & 0x8000 != 0 ? -1 : 1
            let e = (bits >> 10) & 0x1F, m = bits & 0x3FF
            let want: Float
            switch e {
            case 0: want = sign * Float(m) * 0x1p-24
            case 31: want = m == 0 ? sign * .infinity : .nan
            default: want = sign * (1 + Float(m) / 1024) * powf(2, Float(e - 15))
            }
            XCTAssertTrue(sameBits(want, h[flat: bits]), "F16 0x\(String(bits, radix: 16)): \(h[flat: bits]) vs \(want)")
            if m != 0 && e == 31 {
                // NaN payloads survive (quiet bit set by hardware conversion is fine).
                XCTAssertEqual((h[flat: bits].bitPattern >> 13) & 0x1FF, UInt32(m) & 0x1FF)
            }
            XCTAssertTrue(sameBits(Float(Float16(bitPattern: UInt16(bits))), h[flat: bits]))  // the library's conversion
            XCTAssertEqual(b[flat: bits].bitPattern, UInt32(bits) << 16)
        }
    }

    func testUnalignedF32DataIsCopiedCorrectly() throws {
        // A header of 4k+1 bytes puts the data region at an odd offset, so F32 data is not 4-byte aligned.
        let header = #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#
        var padded = header
        while padded.utf8.count % 4 != 1 { padded += " " }
        XCTAssertEqual((8 + padded.utf8.count) % 4, 1)
        let f = try SafeTensors(path: rawFile("unaligned.safetensors", header: padded, data: floatBytes([1.5, -2, 0x1p-140])))
        XCTAssertEqual(try f.tensor("a").array, [1.5, -2, 0x1p-140])
    }

    func testWriterLayoutIsSortedContiguousAndPadded() throws {
        let p = path("layout.safetensors")
        try SafeTensors.write([("b", Tensor(shape: [3], repeating: 1)), ("a", Tensor(shape: [1, 2], repeating: 2)),
                               ("c", Tensor(shape: [5], repeating: 3))], dtype: .f16, metadata: ["k": "v"], to: p)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: p))
        let n = bytes.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        XCTAssertEqual(n % 8, 0)
        XCTAssertEqual(bytes.count, 8 + n + 2 * (3 + 2 + 5))
        let header = String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
        XCTAssertTrue(header.hasPrefix(#"{"__metadata__":{"k":"v"},"a":"#), header)
        XCTAssertEqual(header.trimmingCharacters(in: .whitespaces).last, "}")
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(header.utf8)) as? [String: Any])
        func offsets(_ k: String) -> [Int] { ((json[k] as? [String: Any])?["data_offsets"] as? [Int]) ?? [] }
        XCTAssertEqual(offsets("a"), [0, 4])
        XCTAssertEqual(offsets("b"), [4, 10])
        XCTAssertEqual(offsets("c"), [10, 20])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["layout.safetensors"])
    }

    func testWriterRejectsBadInput() throws {
        let t = Tensor(shape: [1], values: [1])
        assertEngineError(try SafeTensors.write([("x", t), ("x", t)], to: path("dup.safetensors")), ["duplicate", "'x'"])
        assertEngineError(try SafeTensors.write([("__metadata__", t)], to: path("meta.safetensors")), ["reserved"])
        assertEngineError(try SafeTensors.write([("x", t)], dtype: .f64, to: path("f64.safetensors")), ["F64"])
        assertEngineError(try SafeTensors.write([("x", t)], to: path("no/such/dir/x.safetensors")), ["I/O error"])
    }

    // MARK: - File from Python safetensors

    func testReadsReferenceFileFromPythonSafetensors() throws {
        // Written by tools/fixtures/make_safetensors_fixture.py (safetensors 0.8.0, torch 2.15).
        let url = try XCTUnwrap(Bundle.module.url(forResource: "reference", withExtension: "safetensors",
                                                  subdirectory: "Fixtures/safetensors"))
        let f = try SafeTensors(path: url.path)
        XCTAssertEqual(f.keys, ["bf16.values", "f16.values", "f32.empty", "f32.matrix", "f32.scalar", "i64.ids"])
        XCTAssertEqual(f.metadata, ["format": "pt", "producer": "make_safetensors_fixture.py"])

        let m = try f.tensor("f32.matrix")
        XCTAssertEqual(m.shape, [2, 3])
        XCTAssertEqual(m.array, [-1, -0.5, 0, 0.5, 1, 1.5])
        let s = try f.tensor("f32.scalar")
        XCTAssertEqual(s.shape, [])
        XCTAssertEqual(s.array, [3.25])
        XCTAssertEqual(try f.tensor("f32.empty").shape, [0, 3])
        XCTAssertEqual(try f.tensor("f32.empty").count, 0)

        let h = try f.tensor("f16.values")
        XCTAssertEqual(f.entry("f16.values")?.dtype, "F16")
        XCTAssertEqual(h.shape, [2, 5])
        let h16: [Float] = [0, -0.0, 1, -2.5, 65504, 0x1p-14, 0x1p-24, .infinity, -.infinity, .nan]
        for (i, (e, g)) in zip(h16, h.array).enumerated() { XCTAssertTrue(sameBits(e, g), "f16[\(i)] = \(g), expected \(e)") }

        let b = try f.tensor("bf16.values")
        XCTAssertEqual(f.entry("bf16.values")?.dtype, "BF16")
        XCTAssertEqual(b.shape, [8])
        let b16: [Float] = [1, -1.5, 3.140625, 0x1p-133, Float(bitPattern: 0x7F7F_0000), .infinity, -.infinity, .nan]
        for (i, (e, g)) in zip(b16, b.array).enumerated() { XCTAssertTrue(sameBits(e, g), "bf16[\(i)] = \(g), expected \(e)") }

        XCTAssertEqual(f.entry("i64.ids")?.dtype, "I64")
        XCTAssertEqual(f.entry("i64.ids")?.shape, [4])
        assertEngineError(try f.tensor("i64.ids"), ["I64", "i64.ids", url.path])
    }

    // MARK: - WeightLoader

    private func twoFiles() throws -> (String, String) {
        let a = path("model-1.safetensors"), b = path("model-2.safetensors")
        try SafeTensors.write([("unet.down.0.weight", Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6])),
                               ("unet.down.0.bias", Tensor(shape: [2], values: [7, 8]))], to: a)
        try SafeTensors.write([("unet.up.weight", Tensor(shape: [4], values: [9, 10, 11, 12])),
                               ("vae.scale", Tensor(shape: [], values: [0.5]))], dtype: .bf16, to: b)
        return (a, b)
    }

    func testLoaderAcrossFilesWithNestedScopes() throws {
        let (a, b) = try twoFiles()
        let loader = try WeightLoader(paths: [a, b])
        let unet = loader.scoped("unet")
        let down = unet.scoped("down").scoped("0")
        XCTAssertEqual(down.prefix, "unet.down.0")
        XCTAssertEqual(down.key("weight"), "unet.down.0.weight")
        XCTAssertTrue(down.contains("bias"))
        XCTAssertFalse(down.contains("missing"))
        XCTAssertFalse(loader.contains("weight"))
        XCTAssertEqual(down.shape("weight"), [2, 3])
        XCTAssertEqual(try down.tensor("weight", shape: [2, 3]).array, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(try down.tensor("bias", shape: [2]).array, [7, 8])
        XCTAssertEqual(try unet.tensor("up.weight", shape: [4]).array, [9, 10, 11, 12])
        assertEngineError(try loader.finish(), ["1 unexpected", "'vae.scale'"])
        XCTAssertEqual(try loader.scoped("vae").tensor("scale", shape: []).array, [0.5])
        XCTAssertNoThrow(try loader.finish())
        XCTAssertNoThrow(try down.finish())  // the record of taken keys is shared
    }

    func testLoaderStrictErrors() throws {
        let (a, b) = try twoFiles()
        let loader = try WeightLoader(paths: [a, b])
        let down = loader.scoped("unet.down.0")
        assertEngineError(try down.tensor("wieght", shape: [2, 3]), ["missing tensor 'unet.down.0.wieght'", "[2, 3]"])
        assertEngineError(try down.tensor("weight", shape: [3, 2]),
                          ["'unet.down.0.weight'", a, "has shape [2, 3], expected [3, 2]"])
        assertEngineError(try loader.finish(), ["4 unexpected", "'unet.down.0.bias'", "'vae.scale'"])
        loader.ignore("vae.scale")
        loader.ignore("not.there")
        assertEngineError(try loader.finish(), ["3 unexpected"])

        // The same key in two files.
        let c = path("dup.safetensors")
        try SafeTensors.write([("unet.up.weight", Tensor(shape: [4], repeating: 0))], to: c)
        assertEngineError(try WeightLoader(paths: [a, b, c]), ["'unet.up.weight'", b, c])

        // Many unexpected keys: at most 20 named, then a count.
        let many = path("many.safetensors")
        try SafeTensors.write((0..<25).map { (($0 < 10 ? "k0\($0)" : "k\($0)"), Tensor(shape: [1], repeating: 0)) }, to: many)
        let big = try WeightLoader(path: many)
        assertEngineError(try big.finish(), ["25 unexpected", "'k00'", "'k19'", "and 5 more"])
        do {
            try big.finish()
        } catch {
            XCTAssertFalse("\(error)".contains("'k20'"))
        }
    }

    func testLoaderIsSafeToUseFromManyThreads() throws {
        let p = path("threads.safetensors")
        let names = (0..<64).map { "layer.\($0).weight" }
        try SafeTensors.write(names.enumerated().map { ($1, Tensor(shape: [16], repeating: Float($0))) }, dtype: .f16, to: p)
        let loader = try WeightLoader(path: p).scoped("layer")
        let failures = Counter()
        DispatchQueue.concurrentPerform(iterations: 64) { i in
            guard let t = try? loader.tensor("\(i).weight", shape: [16]), t.array == Array(repeating: Float(i), count: 16) else {
                failures.add()
                return
            }
        }
        XCTAssertEqual(failures.value, 0)
        XCTAssertNoThrow(try loader.finish())
    }

    func testRandomLoaderIsDeterministicPerKeyAndScaledByFanIn() throws {
        let w = WeightLoader.random(seed: 7)
        let a = try w.scoped("conv").tensor("weight", shape: [8, 4, 3, 3])
        let b = try WeightLoader.random(seed: 7).tensor("conv.weight", shape: [8, 4, 3, 3])
        let c = try WeightLoader.random(seed: 8).tensor("conv.weight", shape: [8, 4, 3, 3])
        let d = try w.tensor("conv.bias", shape: [8])
        XCTAssertEqual(a.shape, [8, 4, 3, 3])
        XCTAssertEqual(a.array, b.array)
        XCTAssertNotEqual(a.array, c.array)
        XCTAssertTrue(a.array.allSatisfy { abs($0) <= 1 / 6 })  // fan_in 36
        XCTAssertGreaterThan(a.array.map(abs).max() ?? 0, 0.1)
        XCTAssertTrue(d.array.allSatisfy { abs($0) <= 0.1 })
        XCTAssertEqual(try w.tensor("big", shape: [300_000]).array.prefix(5), try w.tensor("big", shape: [300_000]).array.prefix(5))
        XCTAssertFalse(w.contains("conv.weight"))
        XCTAssertNoThrow(try w.finish())
        assertEngineError(try w.tensor("bad", shape: [-1]), ["'bad'", "[-1]"])
    }

    // MARK: - Broken files

    func testMissingFileAndDirectoryAreIOErrors() throws {
        assertEngineError(try SafeTensors(path: path("absent.safetensors")), ["I/O error", "absent.safetensors"])
        assertEngineError(try SafeTensors(path: dir.path), ["I/O error", "not a regular file"])
        assertEngineError(try WeightLoader(path: path("absent.safetensors")), ["I/O error"])
    }

    func testBrokenFilesThrowClearErrors() throws {
        let f4 = floatBytes([1, 2, 3, 4])
        func entry(_ body: String) -> String { #"{"t":{"# + body + "}}" }
        let good = #""dtype":"F32","shape":[4],"data_offsets":[0,16]"#
        var cases: [(String, () throws -> String, [String])] = [
            ("empty", { try self.bytesFile("empty", []) }, ["0 bytes", "shorter than"]),
            ("7 bytes", { try self.bytesFile("seven", [1, 2, 3, 4, 5, 6, 7]) }, ["7 bytes"]),
            ("huge header length", { try self.rawFile("huge", header: "{}", headerLength: .max) }, ["exceeds", "limit"]),
            ("header over 100 MB", { try self.rawFile("big", header: "{}", headerLength: 100_000_001) }, ["limit"]),
            ("header past file end", { try self.rawFile("past", header: "{}", headerLength: 64) }, ["exceeds the file"]),
            ("garbage header", { try self.rawFile("garbage", header: "not json at all!") }, ["not valid JSON"]),
            ("binary header", { try self.rawFile("binary", header: "\u{0}\u{1}\u{2}\u{3}") }, ["not valid JSON"]),
            ("trailing garbage", { try self.rawFile("trail", header: "{} x") }, ["after the JSON value"]),
            ("header is an array", { try self.rawFile("array", header: "[1,2]") }, ["not a JSON object"]),
            ("entry not an object", { try self.rawFile("notobj", header: #"{"t":[1]}"#) }, ["'t'", "not a JSON object"]),
            ("duplicate key", { try self.rawFile("dupkey", header: "{" + #""t":{\#(good)},"t":{\#(good)}"# + "}", data: f4) },
             ["duplicate key \"t\""]),
            ("invalid UTF-8 key", { try self.bytesFile("utf8", [7, 0, 0, 0, 0, 0, 0, 0] + Array(#"{"\#u{1}":1}"#.utf8).map { $0 == 1 ? 0xFF : $0 }) },
             ["not valid UTF-8"]),
            ("deep nesting", { try self.rawFile("deep", header: String(repeating: "[", count: 10_000)) }, ["nesting"]),
            ("metadata not strings", { try self.rawFile("meta", header: #"{"__metadata__":{"a":1}}"#) }, ["__metadata__", "'a'"]),
            ("missing dtype", { try self.rawFile("nodtype", header: entry(#""shape":[4],"data_offsets":[0,16]"#), data: f4) },
             ["'t'", "missing \"dtype\""]),
            ("missing shape", { try self.rawFile("noshape", header: entry(#""dtype":"F32","data_offsets":[0,16]"#), data: f4) },
             ["missing \"shape\""]),
            ("missing data_offsets", { try self.rawFile("nooffs", header: entry(#""dtype":"F32","shape":[4]"#), data: f4) },
             ["missing \"data_offsets\""]),
            ("dtype not a string", { try self.rawFile("dtypenum", header: entry(#""dtype":32,"shape":[4],"data_offsets":[0,16]"#), data: f4) },
             ["\"dtype\" is not a string"]),
            ("negative shape", { try self.rawFile("neg", header: entry(#""dtype":"F32","shape":[-4],"data_offsets":[0,16]"#), data: f4) },
             ["non-negative integers", "-4"]),
            ("fractional shape", { try self.rawFile("frac", header: entry(#""dtype":"F32","shape":[2.5],"data_offsets":[0,16]"#), data: f4) },
             ["non-negative integers", "2.5"]),
            ("boolean shape", { try self.rawFile("bool", header: entry(#""dtype":"F32","shape":[true],"data_offsets":[0,16]"#), data: f4) },
             ["non-negative integers"]),
            ("shape product overflow", {
                try self.rawFile("overflow", header: entry(#""dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]"#), data: f4)
            }, ["overflows"]),
            ("byte count overflow", {
                try self.rawFile("overflow2", header: entry(#""dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]"#), data: f4)
            }, ["needs more than Int.max"]),
            ("truncated data", { try self.rawFile("trunc", header: entry(good), data: Array(f4.prefix(10))) },
             ["run past the data region", "10 bytes"]),
            ("offsets past data", { try self.rawFile("past2", header: entry(#""dtype":"F32","shape":[4],"data_offsets":[16,32]"#), data: f4) },
             ["run past"]),
            ("begin > end", { try self.rawFile("order", header: entry(#""dtype":"F32","shape":[0],"data_offsets":[16,8]"#), data: f4) },
             ["begin > end"]),
            ("size mismatch", { try self.rawFile("size", header: entry(#""dtype":"F32","shape":[3],"data_offsets":[0,16]"#), data: f4) },
             ["hold 16 bytes", "needs 12"]),
            ("three offsets", { try self.rawFile("three", header: entry(#""dtype":"F32","shape":[4],"data_offsets":[0,8,16]"#), data: f4) },
             ["two integers"]),
            ("negative offset", { try self.rawFile("negoff", header: entry(#""dtype":"F32","shape":[4],"data_offsets":[-16,0]"#), data: f4) },
             ["non-negative"]),
            ("offset beyond Int", {
                try self.rawFile("bigoff", header: entry(#""dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551615]"#), data: f4)
            }, ["non-negative integers", "18446744073709551615"]),
            ("overlapping tensors", {
                try self.rawFile("overlap", header: #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[3],"data_offsets":[4,16]}}"#, data: f4)
            }, ["'a'", "'b'", "overlap"]),
            ("overlap with unknown dtype", {
                try self.rawFile("overlap2", header: #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"q":{"dtype":"Q4","shape":[8],"data_offsets":[8,12]}}"#, data: f4)
            }, ["overlap"]),
        ]
        cases.append(("header length 8 but file 8 bytes", { try self.bytesFile("eight", [8, 0, 0, 0, 0, 0, 0, 0]) }, ["exceeds the file"]))
        for (name, make, fragments) in cases {
            let p = try make()
            do {
                _ = try SafeTensors(path: p)
                XCTFail("\(name): opened without error")
            } catch let e as EngineError {
                guard case .format = e else { XCTFail("\(name): expected a format error, got \(e)"); continue }
                for f in fragments + [p] where !e.description.contains(f) {
                    XCTFail("\(name): error \"\(e)\" does not contain \"\(f)\"")
                }
            }
        }
    }

    func testUnknownAndUnreadableDtypesFailWhenRead() throws {
        let header = #"{"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},"# +
                     #""q":{"dtype":"Q4","shape":[3],"data_offsets":[16,20]},"# +
                     #""ok":{"dtype":"F32","shape":[1],"data_offsets":[20,24]}}"#
        let p = try rawFile("dtypes.safetensors", header: header, data: [UInt8](repeating: 0, count: 20) + floatBytes([5]))
        let f = try SafeTensors(path: p)
        XCTAssertEqual(f.entry("q")?.dtype, "Q4")
        XCTAssertEqual(try f.tensor("ok").array, [5])
        assertEngineError(try f.tensor("d"), ["F64", "'d'", p])
        assertEngineError(try f.tensor("q"), ["unknown dtype Q4", "'q'", p])
        assertEngineError(try f.tensor("absent"), ["no tensor 'absent'", p])
        let loader = try WeightLoader([f])
        assertEngineError(try loader.tensor("q", shape: [3]), ["Q4"])
        // A known dtype is validated at open even if it cannot be read: 2 × F64 needs 16 bytes.
        let bad = try rawFile("f64size.safetensors", header: #"{"d":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}}"#,
                              data: [UInt8](repeating: 0, count: 8))
        assertEngineError(try SafeTensors(path: bad), ["needs 16"])
    }

    func testEveryTruncationOfAValidFileThrows() throws {
        let p = path("whole.safetensors")
        try SafeTensors.write([("a", Tensor(shape: [3], values: [1, 2, 3])), ("b", Tensor(shape: [2, 2], values: [4, 5, 6, 7]))],
                              dtype: .f16, metadata: ["m": "x"], to: p)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
        XCTAssertNoThrow(try SafeTensors(path: p))
        for n in 0..<bytes.count {
            let q = try bytesFile("cut", Array(bytes.prefix(n)))
            XCTAssertThrowsError(try SafeTensors(path: q), "prefix of \(n) bytes opened")
        }
    }

    func testRandomCorruptionNeverTraps() throws {
        let p = path("fuzz.safetensors")
        try SafeTensors.write([("a.weight", Tensor(shape: [3, 2], values: [1, 2, 3, 4, 5, 6])),
                               ("b", Tensor(shape: [], values: [7]))], dtype: .bf16, metadata: ["k": "v"], to: p)
        let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: p)))
        let headerEnd = 8 + Int(original[0]) + Int(original[1]) << 8
        var rng = SplitMix(seed: 3)
        let alphabet = Array(#"{}[]",:0123456789-.eE "FBI168tfn\"#.utf8)
        var opened = 0
        for _ in 0..<3000 {
            var bytes = original
            for _ in 0..<(1 + rng.next() % 4) {
                let i = Int(rng.next() % UInt64(headerEnd))
                bytes[i] = rng.next() % 2 == 0 ? UInt8(truncatingIfNeeded: rng.next()) : alphabet[Int(rng.next() % UInt64(alphabet.count))]
            }
            if rng.next() % 8 == 0 { bytes.removeLast(Int(rng.next() % UInt64(bytes.count))) }
            let q = try bytesFile("mutant", bytes)
            guard let f = try? SafeTensors(path: q) else { continue }
            opened += 1
            for k in f.keys { _ = try? f.tensor(k) }
            _ = try? WeightLoader([f]).finish()
        }
        XCTAssertGreaterThan(opened, 0)
    }
}

/// A small seeded generator (SplitMix64) so the random tests are reproducible.
private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func uniform() -> Double { Double(next() >> 11) * 0x1p-53 }
}

private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}
