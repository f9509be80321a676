// `autodir bench COMPONENT`: times one full-size AutoDIR component on random weights, named as in torch_reference.py.
import ArgumentParser
import Engine
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Time a full-size AutoDIR component with random weights (compare with shared/bench/torch_reference.py).",
        discussion: "Components: scm (NAFNet width 64, enc [2,2,4,8], middle 12, dec [2,2,2,2], 6 → 3 channels). "
            + "unet, vae_encode, vae_decode (SD KL-f8), clip_vision, clip_text (CLIP ViT-L/14) at the AutoDIR sizes. "
            + "pipeline_pass: one AutoDIR pass at --res with --steps (default 20) on the full-size models. "
            + "detect: one BIQA detection on a loaded full-size BIQA. vae_encode_tiled / vae_decode_tiled: the "
            + "large-image path (512-pixel tiles). sgemm: one res×res×res matrix product.")

    @Argument(help: "Component to time.") var component: String
    @Option(help: "Image side in pixels.") var res: Int = 512
    @Option(help: "Timed runs after one warm-up.") var runs: Int = 3
    @Flag(help: "Print one JSON object instead of a line of text.") var json = false
    @Option(help: "Sampling steps (pipeline_pass).") var steps: Int = 20
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard res > 0, res <= 8192, runs > 0, runs <= 1000 else {
            throw ValidationError("--res must be in 1…8192 and --runs in 1…1000")
        }
        let precision = try compute.weightPrecision()
        let (body, gflop): (() throws -> Void, Double)
        switch component {
        case "scm":
            let scm = try NAFNet(config: NAFNetConfig(), weights: WeightLoader.random(seed: 0, precision: precision))
            let x = Tensor(uninitialized: [1, 6, res, res])
            var rng = SplitMix64(seed: 1)
            for i in 0..<x.count { x.data[i] = rng.nextFloat() * 2 - 1 }
            body = { _ = try scm(x) }
            gflop = scm.flops(height: res, width: res) / 1e9
        case "sgemm":
            // One square product res×res×res on the selected GEMM backend: the machine's matrix-multiply ceiling.
            let a = Tensor(shape: [res, res], repeating: 0.5), b = Tensor(shape: [res, res], repeating: 0.25)
            let c = Tensor(zeros: [res, res])
            body = { BLAS.gemm(m: res, n: res, k: res, a: a.data, b: b.data, c: c.data) }
            gflop = 2 * pow(Double(res), 3) / 1e9
        case "clip_vision":  // ViT-L/14 at its fixed 224×224 (--res is ignored): image → image features
            let config = CLIPVisionConfig()
            let w = WeightLoader.random(seed: 0, precision: precision)
            let vision = try CLIPVisionModel(config: config, weights: w.scoped("vision_model"))
            let projection = try Linear(w.scoped("visual_projection"), inFeatures: config.hiddenSize, outFeatures: 768, bias: false)
            let x = Tensor(uninitialized: [1, 3, config.imageSize, config.imageSize])
            var rng = SplitMix64(seed: 1)
            for i in 0..<x.count { x.data[i] = rng.nextFloat() * 2 - 1 }
            body = { _ = projection(try vision(x).pooledOutput) }
            gflop = (vision.flops(batch: 1) + 2 * Double(config.hiddenSize) * 768) / 1e9
        case "clip_text":  // ViT-L/14's text tower, 8 prompts of 77 tokens (--res is ignored) → last_hidden_state
            let text = try CLIPTextModel(config: CLIPTextConfig(), weights: WeightLoader.random(seed: 0, precision: precision).scoped("text_model"))
            var rng = SplitMix64(seed: 1)
            let ids = (0..<8).map { _ in (0..<77).map { _ in Int32(rng.nextFloat() * 49407) } }
            body = { _ = try text(inputIds: ids).lastHiddenState }
            gflop = text.flops(batch: 8, tokens: 77) / 1e9
        case "vae_encode", "vae_decode", "vae_encode_tiled", "vae_decode_tiled":
            // SD KL-f8 AutoencoderKL: image [1,3,res,res] → mode, or latent [1,4,res/8,res/8] → image; the _tiled
            // forms take the pipeline's large-image path (512-pixel tiles, 128 overlap; GFLOP stays the untiled count)
            guard res % 8 == 0 else { throw ValidationError("\(component): --res must be a multiple of 8") }
            let vae = try AutoencoderKL(config: AutoencoderKLConfig(), weights: WeightLoader.random(seed: 0, precision: precision))
            let encode = component.hasPrefix("vae_encode"), tiled = component.hasSuffix("_tiled")
            let x = Tensor(uninitialized: encode ? [1, 3, res, res] : [1, 4, res / 8, res / 8])
            var rng = SplitMix64(seed: 1)
            for i in 0..<x.count { x.data[i] = rng.nextFloat() * 2 - 1 }
            switch (encode, tiled) {
            case (true, false): body = { _ = try vae.encode(x) }
            case (true, true): body = { _ = try vae.encodeTiled(x) }
            case (false, false): body = { _ = try vae.decode(x) }
            case (false, true): body = { _ = try vae.decodeTiled(x) }
            }
            gflop = (encode ? vae.encodeFlops(height: res, width: res) : vae.decodeFlops(height: res / 8, width: res / 8)) / 1e9
        case "unet":  // AutoDIR's UNet (SD 1.x, 8 input channels): one denoiser call on a res/8 latent, t = 500
            let config = UNet2DConditionModelConfig()
            let multiple = 8 << (config.levels - 1)
            guard res % multiple == 0 else { throw ValidationError("unet needs --res a multiple of \(multiple)") }
            let unet = try UNet2DConditionModel(config: config, weights: WeightLoader.random(seed: 0, precision: precision))
            let lat = res / 8
            var rng = SplitMix64(seed: 1)
            let sample = Tensor(uninitialized: [1, 8, lat, lat]), context = Tensor(uninitialized: [1, 77, 768])
            for t in [sample, context] { for i in 0..<t.count { t.data[i] = rng.nextFloat() * 2 - 1 } }
            body = { _ = try unet(sample, timestep: 500, context: context) }
            gflop = unet.flops(height: lat, width: lat) / 1e9
        case "detect":  // one BIQA detection on a loaded full-size BIQA (--res: the image side): BenchPipeline.swift
            (body, gflop) = try detectBench(res: res, precision: precision)
        case "pipeline_pass":  // one full-size AutoDIR pass (BIQA, encode, --steps UNet steps, decode, SCM): BenchPipeline.swift
            guard (1...1000).contains(steps) else { throw ValidationError("--steps must be in 1…1000") }
            (body, gflop) = try pipelinePassBench(res: res, steps: steps, precision: precision)
        default:
            throw ValidationError("unknown component '\(component)' (scm, unet, vae_encode, vae_decode, vae_encode_tiled, "
                                  + "vae_decode_tiled, clip_vision, clip_text, detect, pipeline_pass, sgemm)")
        }
        try body()  // warm-up
        var times: [Double] = []
        for _ in 0..<runs {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try body()
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        times.sort()
        let median = times[times.count / 2]
        let result: [String: Any] = [
            "component": component, "res": res, "runs": runs, "median_s": median, "min_s": times[0],
            "gflop": gflop, "gflop_per_s": gflop / median, "peak_rss_mb": peakRSSMegabytes(),
            "threads": Parallel.threads, "blas_threads": BLAS.threads, "gemm_backend": BLAS.backend.rawValue,
            "weights": precision.rawValue,
        ]
        if json {
            let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(String(format: "%-12@ median %8.3f s   %8.1f GFLOP   %6.1f GFLOP/s   peak RSS %.0f MB   gemm %@   weights %@",
                         component as NSString, median, gflop, gflop / median, peakRSSMegabytes(),
                         BLAS.backend.rawValue as NSString, precision.rawValue as NSString))
        }
    }
}

/// Peak resident set size of this process (getrusage; Linux reports kilobytes).
func peakRSSMegabytes() -> Double {
    var usage = rusage()
    getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_maxrss) / 1024
}
