// Sampling tests: σ schedule, t(σ) and sampler trajectories against k-diffusion / diffusers goldens
// (tools/fixtures/make_sampler_fixture.py), classifier-free guidance, reproducibility and cancellation.
import Foundation
import XCTest
@testable import Engine

/// The analytic ε-model of the fixture: eps(x_in, t) = tanh(a(t)·x_in + w) + c(t),
/// a(t) = 0.6 + 0.4·cos(t/300), c(t) = 0.05·sin(t/70); w is broadcast over extra leading batch blocks.
private func analyticEps(_ xIn: Tensor, _ t: Float, w: Tensor) -> Tensor {
    let td = Double(t)
    let a = Float(0.6 + 0.4 * cos(td / 300)), c = Float(0.05 * sin(td / 70))
    let out = Tensor(uninitialized: xIn.shape)
    for i in 0..<xIn.count { out.data[i] = tanh(a * xIn.data[i] + w.data[i % w.count]) + c }
    return out
}

private func seededTensor(_ seed: UInt64, _ shape: [Int], scale: Float = 1) -> Tensor {
    var rng = TestRNG(seed: seed)
    return rng.tensor(shape, scale: scale)
}

private struct ScheduleFixture: Decodable {
    struct SigmaT: Decodable { let sigma: Double; let t: Double }
    struct Entry: Decodable { let t: Int; let alphas_cumprod: Double; let sigma: Double }
    struct Linear: Decodable { let sigma_min: Double; let sigma_max: Double }
    let sigmas: [String: [Double]]
    let sigma_to_t: [SigmaT]
    let t_to_sigma: [SigmaT]
    let table: [Entry]
    let linear: Linear
}

final class SamplingTests: XCTestCase {
    let scheduleTol = 1e-6   // relative (plus 1e-9 absolute for values at 0)
    let trajAtol: Float = 1e-5, trajRtol: Float = 1e-5

    private func loadSchedule() throws -> ScheduleFixture {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("sampling/schedule.json")))
        return try JSONDecoder().decode(ScheduleFixture.self, from: data)
    }

    private func close(_ a: Double, _ g: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssert(abs(a - g) <= 1e-9 + scheduleTol * abs(g), "\(what): \(a) vs \(g) (rel err \(abs(a - g) / max(abs(g), 1e-300)))",
                  file: file, line: line)
    }

    // MARK: schedule

    func testSigmasMatchKDiffusionGetSigmas() throws {
        let fx = try loadSchedule()
        let schedule = try NoiseSchedule()
        XCTAssertEqual(fx.sigmas.count, 6)
        for (key, golden) in fx.sigmas {
            let n = try XCTUnwrap(Int(key))
            let s = try schedule.sigmas(steps: n)
            XCTAssertEqual(s.count, golden.count, "get_sigmas(\(n)) length")
            for (i, (a, g)) in zip(s, golden).enumerated() { close(Double(a), g, "get_sigmas(\(n))[\(i)]") }
            XCTAssertEqual(s.last, 0)
        }
        XCTAssertEqual(Double(schedule.sigmaMax), fx.sigmas["1"]?[0] ?? 0, accuracy: 1e-5)
    }

    func testSigmaToTAndTToSigmaMatchKDiffusion() throws {
        let fx = try loadSchedule()
        let schedule = try NoiseSchedule()
        for c in fx.sigma_to_t {
            let t = schedule.sigmaToT(c.sigma)
            XCTAssert(abs(t - c.t) <= 1e-6 + 1e-6 * abs(c.t), "sigma_to_t(\(c.sigma)) = \(t) vs \(c.t)")
            XCTAssertEqual(Double(schedule.sigmaToT(Float(c.sigma))), c.t, accuracy: 1e-4 * max(1, c.t))
        }
        for c in fx.t_to_sigma { close(schedule.tToSigma(c.t), c.sigma, "t_to_sigma(\(c.t))") }
        for e in fx.table {
            close(schedule.alphasCumprod[e.t], e.alphas_cumprod, "alphas_cumprod[\(e.t)]")
            close(schedule.sigmaTable[e.t], e.sigma, "sigma[\(e.t)]")
        }
        XCTAssertEqual(schedule.sigmaToT(0.0), 0)
        XCTAssertEqual(schedule.sigmaToT(1e9), 999)
        XCTAssertEqual(schedule.tToSigma(-5), schedule.sigmaTable[0])
    }

    func testSchedulerConfigLoadingAndErrors() throws {
        let fx = try loadSchedule()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sampling-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // A Stable Diffusion scheduler_config.json, extra keys and all.
        let sd = #"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#
        let path = dir.appendingPathComponent("scheduler_config.json").path
        try sd.write(toFile: path, atomically: true, encoding: .utf8)
        let loaded = try NoiseSchedule(path: path)
        XCTAssertEqual(loaded.config, SchedulerConfig())
        XCTAssertEqual(loaded.sigmaTable, try NoiseSchedule().sigmaTable)

        var linear = SchedulerConfig()
        linear.betaSchedule = "linear"
        let lin = try NoiseSchedule(config: linear)
        close(lin.sigmaTable[0], fx.linear.sigma_min, "linear σ_min")
        close(lin.sigmaTable[999], fx.linear.sigma_max, "linear σ_max")

        var bad = SchedulerConfig()
        bad.betaSchedule = "squaredcos_cap_v2"
        XCTAssertThrowsError(try NoiseSchedule(config: bad)) { XCTAssert("\($0)".contains("squaredcos_cap_v2")) }
        bad = SchedulerConfig(); bad.numTrainTimesteps = 1
        XCTAssertThrowsError(try NoiseSchedule(config: bad))
        bad = SchedulerConfig(); bad.betaEnd = 1.5
        XCTAssertThrowsError(try NoiseSchedule(config: bad))
        try "{\"beta_start\": \"x\"}".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try NoiseSchedule(path: path))
        XCTAssertThrowsError(try NoiseSchedule(path: dir.appendingPathComponent("missing.json").path))
        XCTAssertThrowsError(try NoiseSchedule().sigmas(steps: 0))
    }

    // MARK: trajectories

    private struct Case {
        let sigmas: [Float], x0: Tensor, noise: [Tensor], xs: Tensor, denoised: Tensor, final: Tensor
    }

    private func loadCase(_ io: SafeTensors, _ name: String) throws -> Case {
        let xs = try io.tensor("\(name).xs"), x0 = try io.tensor("\(name).x0")
        var noise: [Tensor] = []
        if io.entry("\(name).noise") != nil {
            let n = try io.tensor("\(name).noise")
            noise = (0..<n.shape[0]).map { k in
                let t = Tensor(uninitialized: x0.shape)
                t.data.update(from: n.data + k * x0.count, count: x0.count)
                return t
            }
        }
        return Case(sigmas: try io.tensor("\(name).sigmas").array, x0: x0, noise: noise, xs: xs,
                    denoised: try io.tensor("\(name).denoised"), final: try io.tensor("\(name).final"))
    }

    /// Runs `kind` on a fixture case with the analytic model, checking each step's x and denoised and the end.
    private func checkTrajectory(_ name: String, _ kind: SamplerKind, sigmas: [Float]? = nil) throws {
        let io = try SafeTensors(path: Fixtures.path("sampling/trajectories.safetensors"))
        let c = try loadCase(io, name)
        let w = try io.tensor("w")
        let compVis = CompVisDenoiser(schedule: try NoiseSchedule())
        let denoiser = compVis.wrap { xIn, t in analyticEps(xIn, t, w: w) }
        var noise = ReplayNoise(c.noise)
        var x = c.x0
        if kind == .eulerAncestral {  // x = noise[0]·σ0, as the pipeline starts
            x = try Samplers.initialLatent(shape: c.x0.shape, sigmas: c.sigmas, noise: &noise)
            assertClose(x, c.x0, atol: 0, rtol: 1e-7, "\(name) initial latent")
        }
        let steps = c.sigmas.count - 1
        let xs = Tensor(zeros: c.xs.shape), dens = Tensor(zeros: c.denoised.shape)
        var traced = 0
        let out = try Samplers.sample(kind, denoiser: denoiser, x: x, sigmas: sigmas ?? c.sigmas, noise: &noise,
                                      trace: { i, xi, di in
                                          (xs.data + i * xi.count).update(from: xi.data, count: xi.count)
                                          (dens.data + i * di.count).update(from: di.data, count: di.count)
                                          traced += 1
                                      })
        XCTAssertEqual(traced, steps, "\(name): trace calls")
        XCTAssertEqual(noise.remaining, 0, "\(name): unused noise")
        assertClose(xs, c.xs, atol: trajAtol, rtol: trajRtol, "\(name) x per step")
        assertClose(dens, c.denoised, atol: trajAtol, rtol: trajRtol, "\(name) denoised per step")
        assertClose(out, c.final, atol: trajAtol, rtol: trajRtol, "\(name) final")
    }

    func testEulerAncestralMatchesKDiffusion() throws {
        try checkTrajectory("euler_ancestral_20", .eulerAncestral)
        try checkTrajectory("euler_ancestral_3", .eulerAncestral)
        try checkTrajectory("euler_ancestral_1", .eulerAncestral)
    }

    func testEulerMatchesKDiffusion() throws { try checkTrajectory("euler_20", .euler) }

    func testDPMpp2MMatchesKDiffusion() throws { try checkTrajectory("dpmpp_2m_20", .dpmpp2m) }

    func testDDIMSigmaForm() throws { try checkTrajectory("ddim_20", .ddim) }

    /// σ-form DDIM on diffusers' DDIM timesteps equals DDIMScheduler.step (eta 0) divided by √ᾱ.
    func testDDIMMatchesDiffusersDDIMScheduler() throws {
        let schedule = try NoiseSchedule()
        let io = try SafeTensors(path: Fixtures.path("sampling/trajectories.safetensors"))
        for alphaOne in [true, false] {
            let name = "ddim_diffusers_10_\(alphaOne ? "alpha1" : "alpha0")"
            let ts = try schedule.ddimTimesteps(steps: 10, stepsOffset: 1)
            XCTAssertEqual(ts.map(Float.init), try io.tensor("\(name).timesteps").array)
            let sigmas = try schedule.ddimSigmas(steps: 10, stepsOffset: 1, setAlphaToOne: alphaOne)
            XCTAssertEqual(sigmas, try io.tensor("\(name).sigmas").array)
            try checkTrajectory(name, .ddim, sigmas: sigmas)
        }
    }

    // MARK: guidance

    func testGuidanceShortcutEvaluatesOnlyTheCondBranch() throws {
        let schedule = try NoiseSchedule()
        let w = seededTensor(7, [1, 4, 3, 2], scale: 0.5)
        var calls = 0, rows = 0, seen: [[GuidanceBranch]] = []
        let model: BranchedEpsilonModel = { xIn, t, branches in
            calls += 1; rows += xIn.shape[0]; seen.append(branches)
            let eps = analyticEps(xIn, t, w: w)
            for (b, br) in branches.enumerated() where br != .cond {  // other branches would change the result
                for i in 0..<w.count { eps.data[b * w.count + i] += 10 }
            }
            return eps
        }
        let sigmas = try schedule.sigmas(steps: 5)
        let x = seededTensor(8, [1, 4, 3, 2], scale: sigmas[0])
        let guided = ClassifierFreeGuidance().denoiser(CompVisDenoiser(schedule: schedule), model: model)
        let out = try Samplers.sampleEuler(denoiser: guided, x: x, sigmas: sigmas)
        XCTAssertEqual(calls, 5, "one model evaluation per step")
        XCTAssertEqual(rows, 5, "batch 1 per evaluation")
        XCTAssert(seen.allSatisfy { $0 == [.cond] })
        // Same as running the plain cond model.
        let plain = CompVisDenoiser(schedule: schedule).wrap { xIn, t in analyticEps(xIn, t, w: w) }
        assertClose(out, try Samplers.sampleEuler(denoiser: plain, x: x, sigmas: sigmas), atol: 0, rtol: 0, "shortcut = cond")

        // Scales ≠ 1: still one call per step, now a batch of 3 in (cond, imageCond, uncond) order.
        calls = 0; rows = 0; seen = []
        let three = ClassifierFreeGuidance(textScale: 1.5, imageScale: 1.2).denoiser(CompVisDenoiser(schedule: schedule), model: model)
        _ = try Samplers.sampleEuler(denoiser: three, x: x, sigmas: sigmas)
        XCTAssertEqual(calls, 5)
        XCTAssertEqual(rows, 15)
        XCTAssert(seen.allSatisfy { $0 == [.cond, .imageCond, .uncond] })
    }

    func testGuidanceCombinationFormula() throws {
        let shape = [2, 3, 4, 5]
        var rng = TestRNG(seed: 11)
        let x = rng.tensor(shape)
        let offsets: [GuidanceBranch: Tensor] = [.cond: rng.tensor(shape), .imageCond: rng.tensor(shape), .uncond: rng.tensor(shape)]
        // Branch b's denoiser output: x·(1 + σ) + offset_b (distinct per branch, depends on x and σ).
        func branchOut(_ b: GuidanceBranch, _ x: Tensor, _ sigma: Float) -> Tensor {
            let o = offsets[b]!
            let t = Tensor(uninitialized: x.shape)
            for i in 0..<x.count { t.data[i] = x.data[i] * (1 + sigma) + o.data[i] }
            return t
        }
        let branched: BranchedDenoiser = { xb, sigma, branches in
            let n = xb.count / branches.count
            let out = Tensor(uninitialized: xb.shape)
            for (k, b) in branches.enumerated() {
                let xk = Tensor(uninitialized: shape)
                xk.data.update(from: xb.data + k * n, count: n)
                let o = branchOut(b, xk, sigma)
                withExtendedLifetime(o) { (out.data + k * n).update(from: o.data, count: n) }
            }
            return out
        }
        let sigma: Float = 2.5
        for (st, si) in [(Float(7.5), Float(1.5)), (1, 2), (3, 1), (0, 0)] {
            let g = ClassifierFreeGuidance(textScale: st, imageScale: si)
            let out = try g.guided(branched)(x, sigma)
            let c = branchOut(.cond, x, sigma), ic = branchOut(.imageCond, x, sigma), u = branchOut(.uncond, x, sigma)
            let expected = Tensor(uninitialized: shape)
            for i in 0..<x.count {
                let e = Double(u.data[i]) + Double(st) * Double(c.data[i] - ic.data[i]) + Double(si) * Double(ic.data[i] - u.data[i])
                expected.data[i] = Float(e)
            }
            assertClose(out, expected, atol: 1e-5, rtol: 1e-6, "CFG s_text \(st) s_img \(si)")
        }
        let one = try ClassifierFreeGuidance().guided(branched)(x, sigma)
        assertClose(one, branchOut(.cond, x, sigma), atol: 0, rtol: 0, "CFG (1, 1) = cond")
        // A branched denoiser returning the wrong batch is an error, not a crash.
        XCTAssertThrowsError(try ClassifierFreeGuidance(textScale: 2).guided({ x, _, _ in x.reshaped([x.count]) })(x, sigma))
    }

    // MARK: noise, reproducibility, cancellation, errors

    func testSeededNoiseIsReproducible() throws {
        var a = GaussianNoise(seed: 42), b = GaussianNoise(seed: 42), c = GaussianNoise(seed: 43)
        let ta = try a.randn([3, 7]), tb = try b.randn([3, 7]), tc = try c.randn([3, 7])
        XCTAssertEqual(ta.array, tb.array)
        XCTAssertNotEqual(ta.array, tc.array)
        // Leftover Box–Muller samples carry over: 3×7 then 5 equals one draw of 26.
        var d = GaussianNoise(seed: 42)
        let whole = try d.randn([26]).array
        XCTAssertEqual(Array(whole[0..<21]), ta.array)
        XCTAssertEqual(Array(whole[21...]), try a.randn([5]).array)
        // Moments of 200k samples.
        var e = GaussianNoise(seed: 1)
        let big = try e.randn([200_000]).array.map(Double.init)
        let mean = big.reduce(0, +) / Double(big.count)
        let variance = big.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(big.count)
        XCTAssertEqual(mean, 0, accuracy: 0.01)
        XCTAssertEqual(variance, 1, accuracy: 0.01)

        // A whole ancestral run with the same seed is bit-identical; another seed differs.
        let schedule = try NoiseSchedule()
        let w = seededTensor(3, [1, 4, 4, 4], scale: 0.5)
        let den = CompVisDenoiser(schedule: schedule).wrap { xIn, t in analyticEps(xIn, t, w: w) }
        let sigmas = try schedule.sigmas(steps: 8)
        func run(_ seed: UInt64) throws -> [Float] {
            var noise = GaussianNoise(seed: seed)
            let x = try Samplers.initialLatent(shape: [1, 4, 4, 4], sigmas: sigmas, noise: &noise)
            return try Samplers.sampleEulerAncestral(denoiser: den, x: x, sigmas: sigmas, noise: &noise).array
        }
        XCTAssertEqual(try run(5), try run(5))
        XCTAssertNotEqual(try run(5), try run(6))
    }

    /// TorchRandomSource equals torch.manual_seed(s) + torch.randn(shape) calls bit for bit, for sizes
    /// below 16 (cached double Box–Muller, carried across calls) and from 16 up (normal_fill, tails).
    func testTorchRandomSourceIsBitIdenticalToTorchRandn() throws {
        let file = try SafeTensors(path: Fixtures.path("sampling/randn.safetensors"))
        let seeds = try JSONDecoder().decode([UInt64].self, from: Data((file.metadata["seeds"] ?? "[]").utf8))
        let shapes = try JSONDecoder().decode([[Int]].self, from: Data((file.metadata["shapes"] ?? "[]").utf8))
        XCTAssertEqual(seeds.count, 4)
        XCTAssertGreaterThan(shapes.count, 5)
        for seed in seeds {
            var source = TorchRandomSource(seed: seed)
            for (k, shape) in shapes.enumerated() {
                let golden = try file.tensor("seed\(seed).\(k)")
                let mine = try source.randn(shape)
                XCTAssertEqual(mine.shape, shape)
                let differing = (0..<golden.count).filter { mine.data[$0].bitPattern != golden.data[$0].bitPattern }
                XCTAssert(differing.isEmpty, "seed \(seed) call \(k) shape \(shape): \(differing.count) of \(golden.count) differ, first at \(differing.first ?? -1): \(differing.first.map { mine.data[$0] } ?? 0) vs \(differing.first.map { golden.data[$0] } ?? 0)")
            }
        }
    }

    func testProgressAndCancellation() throws {
        let schedule = try NoiseSchedule()
        let sigmas = try schedule.sigmas(steps: 6)
        let x = seededTensor(2, [1, 2, 3, 3], scale: sigmas[0])
        var evaluations = 0
        let den: Denoiser = { x, _ in evaluations += 1; return Tensor(zeros: x.shape) }
        for kind in SamplerKind.allCases {
            var reports: [[Int]] = []
            var noise = GaussianNoise(seed: 0)
            evaluations = 0
            _ = try Samplers.sample(kind, denoiser: den, x: x, sigmas: sigmas, noise: &noise,
                                    progress: { reports.append([$0, $1]); return true })
            XCTAssertEqual(reports, (1...6).map { [$0, 6] }, "\(kind) progress")
            XCTAssertEqual(evaluations, 6)

            evaluations = 0
            XCTAssertThrowsError(try Samplers.sample(kind, denoiser: den, x: x, sigmas: sigmas, noise: &noise,
                                                     progress: { step, _ in step < 3 })) {
                XCTAssertEqual($0 as? EngineError, .cancelled, "\(kind)")
            }
            XCTAssertEqual(evaluations, 3, "\(kind) stops after the cancelling step")
        }
    }

    func testBadInputsThrow() throws {
        let schedule = try NoiseSchedule()
        let x = Tensor(zeros: [1, 2, 2, 2])
        let den: Denoiser = { x, _ in x }
        XCTAssertThrowsError(try Samplers.sampleEuler(denoiser: den, x: x, sigmas: [1]))
        XCTAssertThrowsError(try Samplers.sampleEuler(denoiser: den, x: x, sigmas: [1, 0, 0]))
        XCTAssertThrowsError(try Samplers.sampleEuler(denoiser: den, x: x, sigmas: [.nan, 0]))
        XCTAssertThrowsError(try Samplers.sampleEuler(denoiser: { _, _ in Tensor(zeros: [3]) }, x: x, sigmas: [1, 0]))
        let compVis = CompVisDenoiser(schedule: schedule)
        XCTAssertThrowsError(try compVis.denoise(x, sigma: 1, model: { _, _ in Tensor(zeros: [1]) }))
        var replay = ReplayNoise([Tensor(zeros: [8])])
        XCTAssertThrowsError(try replay.randn([9]))
        XCTAssertEqual(try replay.randn([1, 2, 2, 2]).shape, [1, 2, 2, 2])
        XCTAssertThrowsError(try replay.randn([8])) { XCTAssert("\($0)".contains("exhausted")) }
        var noise = GaussianNoise(seed: 0)
        XCTAssertThrowsError(try Samplers.sampleEulerAncestral(denoiser: den, x: x, sigmas: [2, 1, 0], noise: &replay))
        XCTAssertThrowsError(try Samplers.initialLatent(shape: [1], sigmas: [], noise: &noise))
        XCTAssertEqual(SamplerKind(rawValue: "euler_ancestral"), .eulerAncestral)
        XCTAssertEqual(SamplerKind(rawValue: "dpmpp_2m"), .dpmpp2m)
    }

    /// get_ancestral_step: σ_up² + σ_down² = σ_next², and eta 0 gives no noise.
    func testAncestralStep() {
        let (down, up) = Samplers.getAncestralStep(sigmaFrom: 3, sigmaTo: 2)
        XCTAssertEqual(down * down + up * up, 4, accuracy: 1e-12)
        XCTAssertEqual(up, (4.0 * (9 - 4) / 9).squareRoot(), accuracy: 1e-12)
        let (d0, u0) = Samplers.getAncestralStep(sigmaFrom: 3, sigmaTo: 0)
        XCTAssertEqual(d0, 0); XCTAssertEqual(u0, 0)
        let (de, ue) = Samplers.getAncestralStep(sigmaFrom: 3, sigmaTo: 2, eta: 0)
        XCTAssertEqual(de, 2); XCTAssertEqual(ue, 0)
    }
}
