// UNet2DConditionModel against diffusers (tools/fixtures/make_unet_fixture.py: tiny random configs,
// non-square 8×12 latent, float timesteps), plus the token kernels it uses against their naive twins.
import Foundation
import XCTest
@testable import Engine

final class UNetTests: XCTestCase {
    static let blocks = ["time_proj", "time_emb", "conv_in", "attn0"]

    /// Runs the fixture in `dir` and compares the output (1e-3) and every traced block (1e-4).
    func checkFixture(_ dir: String, levels: Int) throws {
        let model = try UNet2DConditionModel(directory: Fixtures.path(dir))
        let io = try SafeTensors(path: Fixtures.path(dir + "/io.safetensors"))
        var traced: [String: Tensor] = [:]
        let t = try io.tensor("timestep").data[0]
        let out = try model(try io.tensor("sample"), timestep: t, context: try io.tensor("context")) { traced[$0] = $1.copy() }
        let names = Self.blocks + (0..<levels).map { "down\($0)" } + ["mid"] + (0..<levels).map { "up\($0)" }
        for name in names {
            guard let got = traced[name] else { XCTFail("\(dir): no trace \(name)"); continue }
            assertClose(got, try io.tensor(name), atol: 1e-4, rtol: 1e-4, "\(dir) \(name)")
        }
        assertClose(out, try io.tensor("output"), atol: 1e-3, rtol: 1e-3, "\(dir) output 8×12")
        // Batch 2 with another timestep.
        let t2 = try io.tensor("timestep2").data[0]
        let out2 = try model(try io.tensor("sample2"), timestep: t2, context: try io.tensor("context2"))
        assertClose(out2, try io.tensor("output2"), atol: 1e-3, rtol: 1e-3, "\(dir) output batch 2")
    }

    func testMatchesDiffusersConvProjection() throws { try checkFixture("unet", levels: 2) }

    func testMatchesDiffusersLinearProjectionThreeLevels() throws { try checkFixture("unet/linear", levels: 3) }

    func testTimestepProjectionMatchesDiffusers() throws {
        let io = try SafeTensors(path: Fixtures.path("unet/io.safetensors"))
        let ts = try io.tensor("tproj_ts")
        for dim in [32, 320] {
            let golden = try io.tensor("tproj_\(dim)")
            let got = Tensor(uninitialized: [ts.count, dim])
            for (i, t) in ts.array.enumerated() {
                let e = UNet2DConditionModel.timestepProjection(t, dim: dim)
                for j in 0..<dim { got.data[i * dim + j] = e[j] }
            }
            // sin/cos of t·f with t up to 999: one float32 ulp of the argument is ~6e-5.
            assertClose(got, golden, atol: 1e-4, rtol: 0, "timestep projection dim \(dim) at \(ts.array)")
        }
    }

    func testConfigDefaultsAreAutoDIRsUNet() throws {
        let c = try JSONDecoder().decode(UNet2DConditionModelConfig.self, from: Data("{}".utf8))
        XCTAssertEqual(c, UNet2DConditionModelConfig())
        XCTAssertEqual([c.inChannels, c.outChannels, c.crossAttentionDim, c.normNumGroups], [8, 4, 768, 32])
        XCTAssertEqual(c.blockOutChannels, [320, 640, 1280, 1280])
        XCTAssertEqual(c.layersPerBlock, [2])
        XCTAssertEqual(c.attentionHeadDim, [8])
        XCTAssertEqual(c.downBlockTypes, ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"])
        XCTAssertEqual(c.upBlockTypes, ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
        XCTAssertTrue(c.flipSinToCos)
        XCTAssertEqual(c.freqShift, 0)
        XCTAssertFalse(c.useLinearProjection)
        XCTAssertNoThrow(try c.validate())
        // The 803 GFLOP PyTorch counts for the full model at 512×512 (64×64 latent, 77 context tokens).
        XCTAssertEqual(c.flops(height: 64, width: 64) / 1e9, 803, accuracy: 1)
    }

    /// FlopCounterMode's exact totals for the fixtures on an 8×12 latent with 7 context tokens
    /// (`with FlopCounterMode() as fc: unet(x, t, encoder_hidden_states=c)`, diffusers 0.42.1, torch 2.15).
    func testFlopCountMatchesPyTorchsCounter() throws {
        for (dir, golden) in [("unet", 17_500_160.0), ("unet/linear", 8_720_256.0)] {
            let c = try UNet2DConditionModelConfig.load(path: Fixtures.path(dir + "/config.json"))
            XCTAssertEqual(c.flops(height: 8, width: 12, contextTokens: 7), golden, dir)
        }
    }

    func testUnsupportedConfigOptionsAreErrors() throws {
        for json in [#"{"class_embed_type": "timestep"}"#, #"{"time_embedding_type": "fourier"}"#,
                     #"{"num_attention_heads": 8}"#, #"{"mid_block_type": null}"#, #"{"down_block_types": ["X", "Y", "Z", "W"]}"#,
                     #"{"block_out_channels": [320, 640]}"#, #"{"attention_head_dim": 7}"#, #"{"only_cross_attention": true}"#] {
            let c = try JSONDecoder().decode(UNet2DConditionModelConfig.self, from: Data(json.utf8))
            XCTAssertThrowsError(try c.validate(), json)
        }
        let ok = try JSONDecoder().decode(UNet2DConditionModelConfig.self,
                                          from: Data(#"{"only_cross_attention": [false, false, false, false], "upcast_attention": true}"#.utf8))
        XCTAssertNoThrow(try ok.validate())
    }

    func testBadInputsAreErrors() throws {
        let model = try UNet2DConditionModel(directory: Fixtures.path("unet"))
        let ctx = Tensor(zeros: [1, 7, 16])
        XCTAssertThrowsError(try model(Tensor(zeros: [1, 8, 7, 12]), timestep: 1, context: ctx))   // odd height
        XCTAssertThrowsError(try model(Tensor(zeros: [1, 8, 8, 5]), timestep: 1, context: ctx))    // odd width
        XCTAssertThrowsError(try model(Tensor(zeros: [1, 4, 8, 8]), timestep: 1, context: ctx))    // channels
        XCTAssertThrowsError(try model(Tensor(zeros: [8, 8, 8]), timestep: 1, context: ctx))       // rank
        XCTAssertThrowsError(try model(Tensor(zeros: [1, 8, 8, 8]), timestep: 1, context: Tensor(zeros: [1, 7, 15])))
        XCTAssertThrowsError(try model(Tensor(zeros: [1, 8, 8, 8]), timestep: 1, context: Tensor(zeros: [2, 7, 16])))
        XCTAssertThrowsError(try model(Tensor(zeros: [1, 8, 8, 8]), timestep: .nan, context: ctx))
        XCTAssertEqual(try model(Tensor(zeros: [1, 8, 2, 4]), timestep: 1, context: ctx).shape, [1, 4, 2, 4])
    }

    func testStrictLoadingNamesTheProblem() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("unet-strict-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = try SafeTensors(path: Fixtures.path("unet/diffusion_pytorch_model.safetensors"))
        var tensors = try file.keys.map { ($0, try file.tensor($0)) }
        let config = try UNet2DConditionModelConfig.load(path: Fixtures.path("unet/config.json"))
        let missing = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        try SafeTensors.write(tensors.filter { $0.0 != missing }, to: dir + "/missing.safetensors")
        XCTAssertThrowsError(try UNet2DConditionModel(config: config, weights: WeightLoader(path: dir + "/missing.safetensors"))) {
            XCTAssertTrue("\($0)".contains(missing), "\($0)")
        }
        // A conv-shaped proj_in where the config says linear projection.
        var linear = config
        linear.useLinearProjection = true
        XCTAssertThrowsError(try UNet2DConditionModel(config: linear, weights: WeightLoader(path: Fixtures.path("unet/diffusion_pytorch_model.safetensors")))) {
            XCTAssertTrue("\($0)".contains("proj_in.weight"), "\($0)")
        }
        tensors.append(("up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.bias", Tensor(zeros: [16])))
        try SafeTensors.write(tensors, to: dir + "/extra.safetensors")
        XCTAssertThrowsError(try UNet2DConditionModel(config: config, weights: WeightLoader(path: dir + "/extra.safetensors"))) {
            XCTAssertTrue("\($0)".contains("attn1.to_q.bias"), "\($0)")
        }
        XCTAssertThrowsError(try UNet2DConditionModel(directory: dir + "/nope"))
    }

    // MARK: token kernels against their naive twins

    func testTokenKernelsMatchNaiveTwins() {
        var rng = TestRNG(seed: 7)
        let x = rng.tensor([2, 5, 3, 7])                                     // [N, C, H, W]
        assertClose(Ops.nchwToTokens(x), NaiveOps.nchwToTokens(x), atol: 0, rtol: 0, "nchwToTokens")
        let big = rng.tensor([1, 70, 9, 11])
        assertClose(Ops.nchwToTokens(big), NaiveOps.nchwToTokens(big), atol: 0, rtol: 0, "nchwToTokens tiled")
        let tokens = rng.tensor([2, 21, 5])
        assertClose(Ops.tokensToNCHW(tokens, height: 3, width: 7), NaiveOps.tokensToNCHW(tokens, height: 3, width: 7),
                    atol: 0, rtol: 0, "tokensToNCHW")
        let (wIn, bIn) = (rng.tensor([6, 5, 1, 1]), rng.tensor([6]))
        assertClose(Ops.projectToTokens(x, weight: wIn, bias: bIn), NaiveOps.projectToTokens(x, weight: wIn, bias: bIn),
                    atol: 1e-5, rtol: 1e-5, "projectToTokens")
        let t6 = rng.tensor([2, 21, 6])
        let (wOut, bOut) = (rng.tensor([5, 6]), rng.tensor([5]))
        assertClose(Ops.projectFromTokens(t6, weight: wOut, bias: bOut, residual: x),
                    NaiveOps.projectFromTokens(t6, weight: wOut, bias: bOut, residual: x), atol: 1e-5, rtol: 1e-5, "projectFromTokens")
        let (a, b) = (rng.tensor([2, 21, 6]), rng.tensor([2, 21, 6]))
        let (w, bias) = (rng.tensor([6, 6]), rng.tensor([6]))
        let (fast, naive) = (a.copy(), a.copy())
        Ops.linear(b, weight: w, bias: bias, accumulatingInto: fast)
        NaiveOps.linear(b, weight: w, bias: bias, accumulatingInto: naive)
        assertClose(fast, naive, atol: 1e-5, rtol: 1e-5, "linear accumulating")
        let g = rng.tensor([3, 4, 10], scale: 3)
        assertClose(Ops.geglu(g), NaiveOps.geglu(g), atol: 1e-6, rtol: 1e-5, "geglu")
        // GEGLU = first half · gelu(second half).
        let one = Tensor(shape: [1, 2], values: [2, 1])
        let gated = Ops.geglu(one)
        XCTAssertEqual(gated[flat: 0], 2 * 0.8413447, accuracy: 1e-5)
    }

    func testVectorisedSoftmaxMatchesNaiveTwin() {
        var rng = TestRNG(seed: 11)
        for cols in [1, 7, 8, 77, 1000] {
            let x = rng.tensor([5, cols], scale: 30)
            if cols > 1 { x.data[3] = -.infinity }                                // a masked score
            let fast = x.copy()
            Ops.softmaxRowsFast(fast.data, rows: 5, cols: cols)
            assertClose(fast, NaiveOps.softmax(x), atol: 1e-7, rtol: 1e-5, "softmax cols \(cols)")
        }
        let tiny = Tensor(shape: [1, 9], values: [-80, -70, -60, 0, 10, 80, 88, -88, -100])
        let e = tiny.copy()
        Ops.softmaxRowsFast(e.data, rows: 1, cols: 9)
        assertClose(e, NaiveOps.softmax(tiny), atol: 1e-7, rtol: 1e-5, "softmax extremes")
        let masked = Tensor(shape: [1, 3], values: [-.infinity, -.infinity, -.infinity])
        Ops.softmaxRowsFast(masked.data, rows: 1, cols: 3)
        XCTAssertTrue(masked[flat: 0].isNaN, "an all-masked row is NaN as in PyTorch")
    }

    /// Ops.attention's two schedules (items over our threads with single-threaded BLAS, or one thread with
    /// BLAS's own threads) against the plain loops, with a mask and several query blocks; BLAS's thread count
    /// is restored afterwards.
    func testAttentionSchedulesMatchNaiveTwin() {
        var rng = TestRNG(seed: 5)
        let (b, lq, lk, heads, d) = (1, 260, 4100, 2, 2)                      // 260 queries = 2 blocks of 255
        let q = rng.tensor([b, lq, heads * d]), k = rng.tensor([b, lk, heads * d]), v = rng.tensor([b, lk, heads * d])
        let mask = rng.tensor([lq, lk], scale: 2)
        let golden = NaiveOps.attention(q: q, k: k, v: v, heads: heads, mask: mask)
        let (savedParallel, savedBLAS) = (Parallel.threads, BLAS.threads)
        defer { Parallel.threads = savedParallel }
        for threads in [1, 2] {
            Parallel.threads = threads
            assertClose(Ops.attention(q: q, k: k, v: v, heads: heads, mask: mask), golden, atol: 1e-5, rtol: 1e-4,
                        "attention with \(threads) threads")
            XCTAssertEqual(BLAS.threads, savedBLAS)
        }
    }
}

