// AutoencoderKL against diffusers (tools/fixtures/make_vae_fixture.py: tiny random 4-level config, 24×40 image),
// strict loading, input checks and tiled vs untiled encode/decode.
import Foundation
import XCTest
@testable import Engine

final class AutoencoderKLTests: XCTestCase {
    func loadTiny() throws -> AutoencoderKL { try AutoencoderKL(directory: Fixtures.path("vae")) }

    func testEncodeMatchesDiffusersWithIntermediates() throws {
        let vae = try loadTiny()
        let io = try SafeTensors(path: Fixtures.path("vae/io.safetensors"))
        var traced: [String: Tensor] = [:]
        let mode = try vae.encode(try io.tensor("image")) { name, t in traced[name] = t.copy() }
        // per block: 1e-4
        for name in ["enc_conv_in", "enc_down0", "enc_down3", "enc_mid_attn_in", "enc_mid_attn_out", "enc_mid", "enc_conv_out"] {
            guard let t = traced[name] else { XCTFail("no trace \(name)"); continue }
            assertClose(t, try io.tensor(name), atol: 1e-4, rtol: 1e-4, name)
        }
        // whole model: 1e-3
        assertClose(mode, try io.tensor("mode"), atol: 1e-3, rtol: 1e-3, "encode mode [1,4,3,5]")
    }

    func testDecodeMatchesDiffusersWithIntermediates() throws {
        let vae = try loadTiny()
        let io = try SafeTensors(path: Fixtures.path("vae/io.safetensors"))
        var traced: [String: Tensor] = [:]
        let image = try vae.decode(try io.tensor("latent")) { name, t in traced[name] = t.copy() }
        for name in ["dec_post_quant", "dec_conv_in", "dec_mid", "dec_up0", "dec_up3", "dec_conv_out"] {
            guard let t = traced[name] else { XCTFail("no trace \(name)"); continue }
            assertClose(t, try io.tensor(name), atol: 1e-4, rtol: 1e-4, name)
        }
        assertClose(image, try io.tensor("decoded"), atol: 1e-3, rtol: 1e-3, "decode [1,3,24,40]")
    }

    func testBatchOfTwoEqualsTwoSingles() throws {
        let vae = try loadTiny()
        let io = try SafeTensors(path: Fixtures.path("vae/io.safetensors"))
        let img = try io.tensor("image")
        var rng = TestRNG(seed: 3)
        let other = rng.tensor(img.shape)
        let both = Tensor(uninitialized: [2] + img.shape.dropFirst())
        both.data.update(from: img.data, count: img.count)
        (both.data + img.count).update(from: other.data, count: other.count)
        let z = try vae.encode(both)
        let z1 = try vae.encode(other)
        assertClose(Tensor(shape: z1.shape, values: Array(z.array[z1.count...])), z1, atol: 1e-5, rtol: 1e-5, "batch item 1")
        let x = try vae.decode(z)
        assertClose(Tensor(shape: [1, 3, 24, 40], values: Array(x.array[..<(3 * 24 * 40)])), try vae.decode(try io.tensor("mode")),
                    atol: 1e-4, rtol: 1e-4, "batch item 0 decode")
    }

    func testConfigDefaultsAreKLf8() throws {
        let c = try JSONDecoder().decode(AutoencoderKLConfig.self, from: Data("{}".utf8))
        XCTAssertEqual(c, AutoencoderKLConfig())
        XCTAssertEqual(c.blockOutChannels, [128, 256, 512, 512])
        XCTAssertEqual([c.layersPerBlock, c.latentChannels, c.normNumGroups, c.downsampleFactor], [2, 4, 32, 8])
        XCTAssertEqual(c.scalingFactor, 0.18215)
        let tiny = try AutoencoderKLConfig.load(path: Fixtures.path("vae/config.json"))
        XCTAssertEqual(tiny.blockOutChannels, [8, 16, 16, 32])
        XCTAssertEqual(tiny.downsampleFactor, 8)
        var bad = tiny
        bad.actFn = "gelu"
        XCTAssertThrowsError(try bad.validate())
        bad = tiny
        bad.upBlockTypes = ["UpDecoderBlock2D"]
        XCTAssertThrowsError(try bad.validate())
    }

    func testFullSizeParameterCountAndFlops() throws {
        // diffusers AutoencoderKL(block_out_channels=(128,256,512,512), layers_per_block=2, 4+4 blocks): 83,653,863 parameters;
        // torch.utils.flop_counter.FlopCounterMode: encode 64² 16,919,306,240 and 96² 38,092,032,000; decode 8² latent
        // 38,760,876,032 and 12² 87,235,564,032 (diffusers 0.42.1, torch 2.15). At 512: ≈1117 / 2515 GFLOP.
        let vae = try AutoencoderKL(config: AutoencoderKLConfig(), weights: WeightLoader.random(seed: 0))
        XCTAssertEqual(vae.parameterCount, 83_653_863)
        XCTAssertEqual(vae.encodeFlops(height: 64, width: 64), 16_919_306_240)
        XCTAssertEqual(vae.encodeFlops(height: 96, width: 96), 38_092_032_000)
        XCTAssertEqual(vae.decodeFlops(height: 8, width: 8), 38_760_876_032)
        XCTAssertEqual(vae.decodeFlops(height: 12, width: 12), 87_235_564_032)
        XCTAssertEqual(vae.encodeFlops(height: 512, width: 512) / 1e9, 1117, accuracy: 1)
        XCTAssertEqual(vae.decodeFlops(height: 64, width: 64) / 1e9, 2515, accuracy: 1)
    }

    func testBadInputsAreErrors() throws {
        let vae = try loadTiny()
        XCTAssertThrowsError(try vae.encode(Tensor(zeros: [1, 3, 20, 40])))   // 20 not a multiple of 8
        XCTAssertThrowsError(try vae.encode(Tensor(zeros: [1, 3, 24, 36])))
        XCTAssertThrowsError(try vae.encode(Tensor(zeros: [1, 4, 24, 40])))   // wrong channels
        XCTAssertThrowsError(try vae.encode(Tensor(zeros: [3, 24, 40])))
        XCTAssertThrowsError(try vae.encode(Tensor(zeros: [1, 3, 0, 8])))
        XCTAssertThrowsError(try vae.decode(Tensor(zeros: [1, 3, 3, 5])))
        XCTAssertThrowsError(try vae.decode(Tensor(zeros: [4, 3, 5])))
        XCTAssertThrowsError(try vae.encodeTiled(Tensor(zeros: [1, 3, 24, 40]), tileSize: 12, overlap: 0))
        XCTAssertThrowsError(try vae.encodeTiled(Tensor(zeros: [1, 3, 24, 40]), tileSize: 16, overlap: 16))
        XCTAssertThrowsError(try vae.decodeTiled(Tensor(zeros: [1, 4, 3, 5]), tileSize: 2, overlap: 2))
    }

    func testStrictLoadingNamesTheProblem() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vae-strict-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try SafeTensors(path: Fixtures.path("vae/diffusion_pytorch_model.safetensors"))
        var tensors = try file.keys.map { ($0, try file.tensor($0)) }
        let config = try AutoencoderKLConfig.load(path: Fixtures.path("vae/config.json"))
        let missing = "decoder.mid_block.attentions.0.to_k.bias"
        try SafeTensors.write(tensors.filter { $0.0 != missing }, to: dir + "/missing.safetensors")
        XCTAssertThrowsError(try AutoencoderKL(config: config, weights: WeightLoader(path: dir + "/missing.safetensors"))) {
            XCTAssertTrue("\($0)".contains(missing), "\($0)")
        }
        tensors.append(("encoder.down_blocks.0.resnets.0.extra", Tensor(zeros: [1])))
        try SafeTensors.write(tensors, to: dir + "/extra.safetensors")
        XCTAssertThrowsError(try AutoencoderKL(config: config, weights: WeightLoader(path: dir + "/extra.safetensors"))) {
            XCTAssertTrue("\($0)".contains("encoder.down_blocks.0.resnets.0.extra"), "\($0)")
        }
        // a config that disagrees with the weights (one more layer per block) names a missing key
        var deeper = config
        deeper.layersPerBlock = 2
        XCTAssertThrowsError(try AutoencoderKL(config: deeper, weights: WeightLoader(path: Fixtures.path("vae/diffusion_pytorch_model.safetensors")))) {
            XCTAssertTrue("\($0)".contains("resnets.1") || "\($0)".contains("resnets.2"), "\($0)")
        }
        XCTAssertThrowsError(try AutoencoderKL(directory: dir + "/nope"))
    }

    /// A smooth image: low-frequency sinusoids, in [−1, 1].
    static func smoothImage(height: Int, width: Int) -> Tensor {
        let t = Tensor(uninitialized: [1, 3, height, width])
        for c in 0..<3 {
            for y in 0..<height {
                for x in 0..<width {
                    let (fy, fx) = (Float(y) / Float(height), Float(x) / Float(width))
                    t.data[(c * height + y) * width + x] = 0.8 * sinf(2 * .pi * (fx + 0.5 * fy) + Float(c)) * cosf(.pi * fy)
                }
            }
        }
        return t
    }

    /// Tiled vs untiled on the tiny random VAE, smooth 96×128 image (measured, debug and release alike):
    ///   encode tile 64 px / overlap 32: max |Δ| 1.33 (latent range 2.07); tile 96 / overlap 64: 0.77
    ///   decode tile 8 latent px / overlap 4: max |Δ| 2.28 (image range 3.65); tile 12 / overlap 8: 1.02
    /// The difference is GroupNorm statistics (and the mid-block attention) taken per tile instead of over the whole
    /// image, which a random untrained VAE amplifies; the blending itself is exact (next test). diffusers' own
    /// tiled_encode/tiled_decode on the same model and image (tile_sample_min_size 64, overlap factor 0.5 / 96, 0.67)
    /// differ from untiled by the same order: encode 1.09 / 1.25, decode 2.28 / 1.00.
    func testTiledVersusUntiledOnASmoothImage() throws {
        let vae = try loadTiny()
        let image = Self.smoothImage(height: 96, width: 128)
        let z = try vae.encode(image)                                                   // [1, 4, 12, 16]
        let x = try vae.decode(z)                                                       // [1, 3, 96, 128]
        let (encRange, decRange) = (Self.maxAbs(z), Self.maxAbs(x))
        for (tile, overlap, bound) in [(64, 32, Float(0.7)), (96, 64, 0.4)] {
            let zt = try vae.encodeTiled(image, tileSize: tile, overlap: overlap)
            let xt = try vae.decodeTiled(z, tileSize: tile / 8, overlap: overlap / 8)
            XCTAssertEqual(zt.shape, z.shape)
            XCTAssertEqual(xt.shape, x.shape)
            let (encErr, decErr) = (Self.maxAbsDiff(zt, z), Self.maxAbsDiff(xt, x))
            print("tiled vs untiled, tile \(tile) px, overlap \(overlap) px: encode max |Δ| \(encErr) (range \(encRange)), decode max |Δ| \(decErr) (range \(decRange))")
            XCTAssertLessThan(encErr, bound * encRange, "encode tile \(tile)")
            XCTAssertLessThan(decErr, bound * decRange, "decode tile \(tile)")
            // no seams: the tiled decode jumps between neighbours no more than the untiled one does
            XCTAssertLessThan(Self.maxStep(xt), 1.25 * Self.maxStep(x), "steps tile \(tile)")
        }
        // a single tile is exactly untiled
        assertClose(try vae.decodeTiled(z, tileSize: 16, overlap: 4), x, atol: 0, rtol: 0, "one tile")
    }

    /// With a position-wise body (no GroupNorm, no context) tiling must reproduce the untiled result: the ramps
    /// form a partition of unity and every tile lands where it belongs, for both the ×8 and the ÷8 direction.
    func testBlendingIsExactForAPositionwiseBody() throws {
        var rng = TestRNG(seed: 11)
        let x = rng.tensor([2, 3, 40, 56])
        func up8(_ t: Tensor) -> Tensor {   // nearest ×8, then a per-pixel function of the value
            var y = t
            for _ in 0..<3 { y = Ops.upsampleNearest2x(y) }
            return Ops.silu(y)
        }
        let whole = up8(x)
        let tiled = try AutoencoderKL.tiled(x, outChannels: 3, tile: 16, overlap: 6, scaleUp: 8, scaleDown: 1) { up8($0) }
        assertClose(tiled, whole, atol: 1e-5, rtol: 1e-5, "×8 tiles 16/6 over 40×56")
        func down8(_ t: Tensor) -> Tensor {  // subsample every 8th pixel
            let (n, c, h, w) = (t.shape[0], t.shape[1], t.shape[2] / 8, t.shape[3] / 8)
            let y = Tensor(uninitialized: [n, c, h, w])
            for p in 0..<(n * c) { for i in 0..<h { for j in 0..<w { y.data[(p * h + i) * w + j] = t.data[(p * h * 8 + i * 8) * w * 8 + j * 8] } } }
            return y
        }
        let big = rng.tensor([1, 2, 96, 136])
        assertClose(try AutoencoderKL.tiled(big, outChannels: 2, tile: 48, overlap: 16, scaleUp: 1, scaleDown: 8) { down8($0) },
                    down8(big), atol: 1e-5, rtol: 1e-5, "÷8 tiles 48/16 over 96×136")
    }

    func testTileLayout() {
        XCTAssertEqual(AutoencoderKL.tileStarts(length: 40, tile: 64, overlap: 16), [0])
        XCTAssertEqual(AutoencoderKL.tileStarts(length: 128, tile: 64, overlap: 16), [0, 48, 64])
        XCTAssertEqual(AutoencoderKL.tileStarts(length: 2048, tile: 512, overlap: 128), [0, 384, 768, 1152, 1536])
        let w = AutoencoderKL.rampWeights(size: 8, ramp: 4, left: true, right: false)
        XCTAssertEqual(w, [0.125, 0.375, 0.625, 0.875, 1, 1, 1, 1])
    }

    static func maxAbsDiff(_ a: Tensor, _ b: Tensor) -> Float {
        (0..<a.count).reduce(0) { max($0, abs(a.data[$1] - b.data[$1])) }
    }

    static func maxAbs(_ a: Tensor) -> Float { (0..<a.count).reduce(0) { max($0, abs(a.data[$1])) } }

    /// Largest jump between horizontal or vertical neighbours.
    static func maxStep(_ t: Tensor) -> Float {
        let (c, h, w) = (t.shape[1], t.shape[2], t.shape[3])
        var m: Float = 0
        for p in 0..<c {
            for y in 0..<h {
                for x in 0..<w {
                    let v = t.data[(p * h + y) * w + x]
                    if x + 1 < w { m = max(m, abs(t.data[(p * h + y) * w + x + 1] - v)) }
                    if y + 1 < h { m = max(m, abs(t.data[(p * h + y + 1) * w + x] - v)) }
                }
            }
        }
        return m
    }
}
