// 16-bit resident weights (Weight, WeightPrecision): the conversions against Swift's own Float16 for every
// bit pattern, views into F16/BF16 files giving bit-identical model outputs, and F32 files narrowed at load
// staying close to the float32 model.
import CGemm
import Foundation
import XCTest
@testable import Engine

final class WeightTests: XCTestCase {
    func testWideningIsExactForEveryHalf() {
        let all = (0...0xFFFF).map { UInt16($0) }
        var widened = [Float](repeating: 0, count: all.count)
        adg_widen_f16(all, &widened, all.count)
        for (h, f) in zip(all, widened) {
            let expected = Float(Float16(bitPattern: h))
            if expected.isNaN {
                XCTAssertTrue(f.isNaN, "f16 \(h)")
            } else {
                XCTAssertEqual(f.bitPattern, expected.bitPattern, "f16 \(String(h, radix: 16))")
            }
        }
        // again in 15-value pieces, which the vector loops leave to the scalar tail (subnormals, NaN, inf included)
        var tail = [Float](repeating: 0, count: all.count)
        all.withUnsafeBufferPointer { src in
            tail.withUnsafeMutableBufferPointer { dst in
                for start in stride(from: 0, to: all.count, by: 15) {
                    adg_widen_f16(src.baseAddress! + start, dst.baseAddress! + start, min(15, all.count - start))
                }
            }
        }
        for (f, g) in zip(widened, tail) {
            XCTAssertTrue(f.bitPattern == g.bitPattern || (f.isNaN && g.isNaN), "scalar widening of \(f)")
        }
        adg_widen_bf16(all, &widened, all.count)
        for (h, f) in zip(all, widened) { XCTAssertEqual(f.bitPattern, UInt32(h) << 16, "bf16 \(h)") }
    }

    func testNarrowingRoundsToNearestEven() {
        var rng = TestRNG(seed: 5)
        var values: [Float] = [0, -0, 1, -1, 65504, -65504, 65519.99, 6.0e-8, 5.9e-8, 3.0e-8, 2.9e-8, 1e-10,
                               1 + 0x1p-11, 1 + 3 * 0x1p-11, 2049, 2051, .infinity, -.infinity]
        for _ in 0..<4099 { values.append(rng.uniform() * pow(2, Float(Int(rng.next() % 40)) - 24)) }  // 4,117: odd tails
        var halfs = [UInt16](repeating: 0, count: values.count)
        XCTAssertEqual(adg_narrow_f16(values, &halfs, values.count), 0)
        for (x, h) in zip(values, halfs) { XCTAssertEqual(h, Float16(x).bitPattern, "f16(\(x))") }
        var bf = [UInt16](repeating: 0, count: values.count)
        adg_narrow_bf16(values + [.nan], &bf, values.count)
        for (x, h) in zip(values, bf) { XCTAssertEqual(h, SafeTensors.narrowBF16(x), "bf16(\(x))") }
        // finite values beyond the float16 range are counted (they became ±inf)
        let big: [Float] = [65520, -1e6, 1, .infinity]
        var out = [UInt16](repeating: 0, count: big.count)
        XCTAssertEqual(adg_narrow_f16(big, &out, big.count), 2)
    }

    func testNarrowingAnOutOfRangeWeightIsAnErrorNamingIt() {
        let t = Tensor(shape: [2, 2], values: [1, 2, 70_000, 4])
        XCTAssertThrowsError(try Weight.narrowing(t, to: .float16, name: "down.0.weight")) {
            XCTAssertTrue("\($0)".contains("down.0.weight") && "\($0)".contains("bf16"), "\($0)")
        }
        XCTAssertNoThrow(try Weight.narrowing(t, to: .bfloat16, name: "down.0.weight"))
    }

    func testWeightViewsAndCopiesAgree() throws {
        var rng = TestRNG(seed: 9)
        let t = rng.tensor([5, 7])
        let dir = try temporaryDirectory()
        try SafeTensors.write([("w", t)], dtype: .f16, to: dir + "/w.safetensors")
        let view = try WeightLoader(path: dir + "/w.safetensors", precision: .float16).weight("w", shape: [5, 7])
        let widened = try WeightLoader(path: dir + "/w.safetensors", precision: .float32).weight("w", shape: [5, 7])
        XCTAssertEqual(view.precision, .float16)
        XCTAssertEqual(view.residentBytes, 70)
        XCTAssertEqual(widened.residentBytes, 140)
        XCTAssertEqual(view.float32().array, widened.float32().array)
        view.withFloat32 { XCTAssertEqual($0.array, widened.float32().array) }
        var row = [Float](repeating: 0, count: 7)
        view.copyRow(3, to: &row)
        XCTAssertEqual(row, Array(widened.float32().array[21..<28]))
        XCTAssertThrowsError(try WeightLoader(path: dir + "/w.safetensors", precision: .float16).weight("w", shape: [7, 5]))
    }

    // MARK: - Whole models

    /// Writes every float tensor of `file` as `dtype` into `folder` (with the config beside it).
    func convert(_ fixture: String, file: String, to dtype: DType) throws -> String {
        let dir = try temporaryDirectory() + "/" + (fixture as NSString).lastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path(fixture + "/config.json"), toPath: dir + "/config.json")
        let source = try SafeTensors(path: Fixtures.path(fixture + "/" + file))
        let floats = source.keys.filter { key in
            source.entry(key).map { ["F32", "F16", "BF16"].contains($0.dtype) } ?? false
        }
        try SafeTensors.write(try floats.map { ($0, try source.tensor($0)) }, dtype: dtype, to: dir + "/" + file)
        return dir
    }

    func maxDifference(_ a: Tensor, _ b: Tensor) -> (abs: Float, scale: Float) {
        XCTAssertEqual(a.shape, b.shape)
        var d: Float = 0, scale: Float = 0
        for i in 0..<min(a.count, b.count) {
            d = max(d, abs(a.data[i] - b.data[i]))
            scale = max(scale, abs(b.data[i]))
        }
        return (d, scale)
    }

    /// A model's output with `precision` from an F16 (or BF16) file equals the float32 load of the same file bit for
    /// bit (widening is exact; `exact: false` for models that fold weights at load and narrow the result), and a
    /// float32 file narrowed at load stays within `tolerance` × the output's scale.
    func checkModel(_ fixture: String, file: String, tolerance: Float, exact: Bool = true,
                    run: (String, WeightPrecision) throws -> Tensor) throws {
        let stored = try SafeTensors(path: Fixtures.path(fixture + "/" + file))
        let storedAsF32 = stored.keys.contains { stored.entry($0)?.dtype == "F32" }
        for (dtype, precision) in [(DType.f16, WeightPrecision.float16), (.bf16, .bfloat16)] {
            let dir = try convert(fixture, file: file, to: dtype)
            let reference = try run(dir, .float32), resident = try run(dir, precision)
            if exact {
                XCTAssertEqual(resident.array, reference.array, "\(fixture): \(dtype) file kept as \(precision) vs widened at load")
            } else {
                let (d, scale) = maxDifference(resident, reference)
                XCTAssertLessThanOrEqual(d, tolerance * scale * (precision == .bfloat16 ? 8 : 1), "\(fixture): \(dtype) file")
            }
            let (d, scale) = maxDifference(try run(Fixtures.path(fixture), precision), try run(Fixtures.path(fixture), .float32))
            let allowed = tolerance * scale * (precision == .bfloat16 ? 8 : 1)
            XCTAssertLessThanOrEqual(d, allowed, "\(fixture): f32 file narrowed to \(precision)")
            if precision == .bfloat16 || storedAsF32 {  // (the CLIP fixture is stored F16: narrowing it to F16 is exact)
                XCTAssertGreaterThan(d, 0, "\(fixture): narrowing to \(precision) changed nothing (weights not 16-bit?)")
            }
        }
    }

    func testUNetWithSixteenBitWeights() throws {
        let io = try SafeTensors(path: Fixtures.path("unet/io.safetensors"))
        let (sample, context) = (try io.tensor("sample"), try io.tensor("context"))
        try checkModel("unet", file: "diffusion_pytorch_model.safetensors", tolerance: 5e-3) { dir, precision in
            try UNet2DConditionModel(directory: dir, precision: precision)(sample, timestep: 321.5, context: context)
        }
    }

    func testAutoencoderWithSixteenBitWeights() throws {
        let io = try SafeTensors(path: Fixtures.path("vae/io.safetensors"))
        let image = try io.tensor("image")
        try checkModel("vae", file: "diffusion_pytorch_model.safetensors", tolerance: 5e-3) { dir, precision in
            let vae = try AutoencoderKL(directory: dir, precision: precision)
            return try vae.decode(try vae.encode(image))
        }
    }

    func testCLIPWithSixteenBitWeights() throws {
        let io = try SafeTensors(path: Fixtures.path("clip/io.safetensors"))
        let pixels = try io.tensor("pixel_values")
        try checkModel("clip", file: "model.safetensors", tolerance: 5e-3) { dir, precision in
            let clip = try CLIPModel(directory: dir, precision: precision)
            let text = try clip.textModel(inputIds: [[49406, 320, 1125, 539, 49407]]).lastHiddenState
            let image = try clip.imageEmbeds(pixelValues: pixels)
            return Tensor(shape: [text.count + image.count], values: text.array + image.array)
        }
    }

    func testNAFNetWithSixteenBitWeights() throws {
        let io = try SafeTensors(path: Fixtures.path("nafnet/io.safetensors"))
        let input = try io.tensor("input")
        // NAFNet folds LayerNorm affines and β/γ into its 1×1 weights at load, then keeps the folded ones 16-bit
        try checkModel("nafnet", file: "model.safetensors", tolerance: 5e-3, exact: false) { dir, precision in
            try NAFNet(directory: dir, precision: precision)(input)
        }
    }

    func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "autodir-weight-tests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }
}
