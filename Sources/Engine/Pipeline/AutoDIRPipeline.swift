// AutoDIRPipeline: AutoDIR's inference (AUTODIR.md §1–5; the authors' `eval_w_SCM.py`): BIQA → AIR (latent
// diffusion with three-branch CFG) → SCM, repeated over the detected artifacts, or one pass for a user prompt.
//
// Choices where the reference leaves details open (the PyTorch twin, tools/reference/autodir_pipeline.py,
// makes the same ones, and the fixture test holds the two together):
// - Value ranges: images are [0, 1] at the API and [-1, 1] inside (`2x − 1`, as the reference's
//   `2 * img / 255 - 1`). The SCM sees [-1, 1]: `NAFNet(cat[input, x_air])` with both in [-1, 1], as the
//   reference's `recon_stack`. Between passes the image is NOT clamped (the reference passes `result` /
//   `x` on unclamped); only the images handed out are mapped to [0, 1] and clamped.
// - Noise: the reference calls `torch.manual_seed(seed)` at the start of EVERY pass, then
//   `z = randn_like(z_img) · σ₀` and the sampler's per-step `randn_like` from the same generator; so each
//   pass here starts a fresh `TorchRandomSource(seed)`, and a seed means what it means in PyTorch (CPU).
// - Image latent: `z_img = encode(x).mode()` unscaled; the UNet sees `cat[z_t · c_in, z_img]` (ldm's
//   "hybrid" conditioning: c_in scales only the noisy latent, the concat channels come from `cond`).
// - The low-resolution rule: after a "low resolution" pass the next input is x_air (the SCM is skipped for
//   super-resolution, as the reference does); otherwise x_scm. A pass's result (`PassResult.image`) is
//   that next input; the final image is the last pass's result.
// - Any size: each pass pads its input on the right/bottom by EDGE REPLICATION to a multiple of
//   f·2^(UNet levels − 1) (64 for SD: f = 8, 4 levels), runs AIR and SCM on the padded image and crops
//   back. Replication works for any size (reflection cannot pad a 1-pixel image by 63) and continues the
//   border instead of inventing black edges (zeros would be read as dark content). BIQA scores the
//   unpadded image, as the reference scores its native image.
// - Large images: the VAE runs tiled (`encodeTiled`/`decodeTiled`, 512-pixel tiles, 128 overlap) when
//   the padded image has more than `VAETiling.thresholdPixels` pixels; the UNet always sees the whole latent.
// - Colour fix (optional): AdaIN of the final image against the original input, in [-1, 1] (the
//   reference computes `adaptive_instance_normalization(result, input_image)` per pass as a side output).
// - User prompt: its last_hidden_state from input_ids only is the context; exactly one pass; the pass's
//   `artifact` is the prompt text and `probabilities` is empty.
import Foundation

/// Options of one restore call; nil fields take the model folder's defaults (model_index.json "defaults").
public struct RestoreOptions: Sendable {
    /// User-customised restoration: replaces BIQA, exactly one pass.
    public var prompt: String? = nil
    public var steps: Int? = nil
    /// Seed of the noise; the same seed gives the same noise as `torch.manual_seed(seed)` on the CPU.
    public var seed: UInt64 = 0
    public var cfgText: Float? = nil, cfgImage: Float? = nil
    public var maxPasses: Int? = nil
    /// AdaIN colour correction (`Ops.adainColorFix`) of the final image against the input.
    public var colorFix = false
    /// "euler_ancestral" (default), "euler", "ddim", "dpmpp_2m".
    public var sampler: String? = nil
    public init() {}
}

/// Where a restore call is. `pass` counts from 1; `step` is the number of sampler steps done in the pass.
public struct RestoreProgress: Sendable {
    public let pass: Int, maxPasses: Int, step: Int, totalSteps: Int
    /// "detect", "encode", "denoise", "decode", "correct" (SCM, and the colour fix at the end).
    public let stage: String
    /// The artifact being removed (the prompt in prompt mode); nil while detecting.
    public let artifact: String?
}

/// One restoration pass.
public struct PassResult: Sendable {
    /// The category removed in this pass (the prompt text in prompt mode).
    public let artifact: String
    /// BIQA's probabilities over the categories still in play at this pass (empty in prompt mode).
    public let probabilities: [String: Float]
    /// [1, 3, H, W] in [0, 1] after this pass (the next pass's input).
    public let image: Tensor
    /// The AIR output (VAE decode) and the SCM output of this pass, [1, 3, H, W] in [-1, 1], unclamped.
    let air: Tensor, scm: Tensor

    /// The AIR output before structure correction, [1, 3, H, W] in [0, 1].
    public var airImage: Tensor { AutoDIRPipeline.toUnit(air) }
    /// The SCM output, [1, 3, H, W] in [0, 1] (what a "low resolution" pass does not pass on).
    public var scmImage: Tensor { AutoDIRPipeline.toUnit(scm) }
}

/// The result of `restore`.
public struct RestoreResult: Sendable {
    /// [1, 3, H, W], values in [0, 1].
    public let image: Tensor
    /// The passes run, in order (none when BIQA finds nothing to restore).
    public let passes: [PassResult]
}

/// Thread-safe cancellation flag; pass one to restore() and call cancel() from any thread.
public final class CancellationToken: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false
    public init() {}
    public func cancel() { lock.lock(); cancelled = true; lock.unlock() }
    public var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return cancelled }
}

/// When and how the VAE runs over tiles.
public struct VAETiling: Sendable, Equatable {
    /// Tiled encode/decode when the padded image has more pixels than this (default 1024×1024).
    public var thresholdPixels = 1024 * 1024
    /// Tile side and overlap in image pixels (rounded down to multiples of the VAE factor).
    public var tileSize = 512
    public var overlap = 128
    public init(thresholdPixels: Int = 1024 * 1024, tileSize: Int = 512, overlap: Int = 128) {
        self.thresholdPixels = thresholdPixels
        self.tileSize = tileSize
        self.overlap = overlap
    }
}

/// The AutoDIR pipeline over a model folder. Immutable after init: one instance serves concurrent calls
/// (the models' weights are read-only; every call owns its activations and its noise generator).
public final class AutoDIRPipeline: @unchecked Sendable {
    public let index: ModelIndex
    public let unet: UNet2DConditionModel
    public let vae: AutoencoderKL
    public let biqa: BIQA
    /// The SCM, with `residualWeight` = model_index.json's scm_weight.
    public let scm: NAFNet
    public let schedule: NoiseSchedule
    public let tiling: VAETiling

    /// The files a model folder must hold (ARCHITECTURE.md §3).
    public static let requiredFiles = [
        "model_index.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "clip/config.json", "clip/model.safetensors",
        "tokenizer/vocab.json", "tokenizer/merges.txt",
        "scm/config.json", "scm/model.safetensors",
        "scheduler/scheduler_config.json",
    ]

    /// The category that means "nothing left to restore", and the one whose pass skips the SCM.
    public static let noArtifact = "no"
    public static let lowResolution = "low resolution"

    /// Loads a model folder; a missing folder or file is an `EngineError.io` naming it. `precision` is how the
    /// convolution and linear weights stay in memory (16-bit halves the resident size; see `WeightPrecision`).
    public convenience init(directory: String, tiling: VAETiling = VAETiling(), precision: WeightPrecision = .float32) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw EngineError.io("model folder \(directory) does not exist (set --model / AUTODIR_MODEL to an AutoDIR model folder)")
        }
        let missing = Self.requiredFiles.filter { !FileManager.default.fileExists(atPath: directory + "/" + $0) }
        if !missing.isEmpty {
            throw EngineError.io("model folder \(directory) is missing \(missing.joined(separator: ", "))")
        }
        let index = try ModelIndex.load(directory: directory)
        let unet = try UNet2DConditionModel(directory: directory + "/unet", precision: precision)
        let vae = try AutoencoderKL(directory: directory + "/vae", precision: precision)
        let clip = try CLIPModel(directory: directory + "/clip", precision: precision)
        let tokenizer = try CLIPTokenizer(directory: directory + "/tokenizer")
        let biqa = try BIQA(clip: clip, tokenizer: tokenizer, categories: index.autodir.categories,
                            template: index.autodir.promptTemplate)
        let scm = try NAFNet(directory: directory + "/scm", precision: precision)
        let schedule = try NoiseSchedule(path: directory + "/scheduler/scheduler_config.json")
        try self.init(index: index, unet: unet, vae: vae, biqa: biqa, scm: scm, schedule: schedule, tiling: tiling)
    }

    /// Assembles a pipeline from loaded components (benchmarks build them from random weights); checks that
    /// they fit together.
    public init(index: ModelIndex, unet: UNet2DConditionModel, vae: AutoencoderKL, biqa: BIQA, scm: NAFNet,
                schedule: NoiseSchedule, tiling: VAETiling = VAETiling()) throws {
        let lat = vae.config.latentChannels
        guard unet.config.inChannels == 2 * lat, unet.config.outChannels == lat else {
            throw EngineError.format("UNet in/out channels \(unet.config.inChannels)/\(unet.config.outChannels) do not fit the VAE's \(lat) latent channels (need \(2 * lat)/\(lat))")
        }
        guard vae.config.inChannels == 3, vae.config.outChannels == 3 else {
            throw EngineError.format("the VAE must map RGB images (in/out channels 3), got \(vae.config.inChannels)/\(vae.config.outChannels)")
        }
        guard unet.config.crossAttentionDim == biqa.clip.config.textConfig.hiddenSize else {
            throw EngineError.format("UNet cross_attention_dim \(unet.config.crossAttentionDim) differs from the CLIP text hidden size \(biqa.clip.config.textConfig.hiddenSize)")
        }
        guard scm.config.imgChannel == 6, scm.config.outChannel == 3 else {
            throw EngineError.format("the SCM must map 6 channels to 3, got \(scm.config.imgChannel) → \(scm.config.outChannel)")
        }
        guard biqa.categories.contains(Self.noArtifact) else {
            throw EngineError.format("the categories must include \"\(Self.noArtifact)\"")
        }
        guard tiling.tileSize > 0, tiling.overlap >= 0, tiling.overlap < tiling.tileSize, tiling.thresholdPixels >= 0 else {
            throw EngineError.invalidArgument("VAE tiling: need 0 ≤ overlap < tile size, threshold ≥ 0 (got \(tiling))")
        }
        self.index = index
        self.unet = unet
        self.vae = vae
        self.biqa = biqa
        var scm = scm
        scm.residualWeight = index.autodir.scmWeight
        self.scm = scm
        self.schedule = schedule
        self.tiling = tiling
    }

    /// Image sides are padded to a multiple of this: f · 2^(UNet levels − 1).
    public var sizeMultiple: Int { vae.downsampleFactor * unet.sizeMultiple }

    /// Largest accepted image side.
    public static let maxSide = 16384

    // MARK: - Detection

    /// BIQA over all categories: image [1, 3 (or 1), H, W] in [0, 1].
    public func detect(_ image: Tensor) throws -> BIQA.Detection {
        let x = try Self.checkedInput(image)
        return try biqa.detect(Self.toSigned(x))
    }

    // MARK: - Restoration

    /// Restores `image` ([1, 3 (or 1, grayscale), H, W] in [0, 1], any size): automatic multi-pass
    /// restoration, or one pass guided by `options.prompt`. `progress` is called at each stage and after
    /// every sampler step; returning false cancels, as does `cancel` (checked before every UNet call).
    /// Cancellation throws `EngineError.cancelled`.
    public func restore(_ image: Tensor, options: RestoreOptions = RestoreOptions(), cancel: CancellationToken? = nil,
                        progress: ((RestoreProgress) -> Bool)? = nil) throws -> RestoreResult {
        let defaults = index.autodir.defaults
        let steps = options.steps ?? defaults.steps
        let cfgText = options.cfgText ?? defaults.cfgText, cfgImage = options.cfgImage ?? defaults.cfgImage
        let maxPasses = options.prompt != nil ? 1 : (options.maxPasses ?? defaults.maxPasses)
        let samplerName = options.sampler ?? defaults.sampler
        guard (1...1000).contains(steps) else { throw EngineError.invalidArgument("steps \(steps) out of range 1…1000") }
        guard (1...16).contains(maxPasses) else { throw EngineError.invalidArgument("max passes \(maxPasses) out of range 1…16") }
        guard cfgText.isFinite, cfgImage.isFinite else {
            throw EngineError.invalidArgument("guidance scales must be finite (text \(cfgText), image \(cfgImage))")
        }
        guard let sampler = SamplerKind(rawValue: samplerName) else {
            throw EngineError.invalidArgument("unknown sampler \"\(samplerName)\" (\(SamplerKind.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        let original = Self.toSigned(try Self.checkedInput(image))                   // [1, 3, H, W] in [-1, 1]
        let run = Run(cancel: cancel, progress: progress, maxPasses: maxPasses, steps: steps)

        var current = original
        var remaining = biqa.categories
        var passes: [PassResult] = []
        for pass in 1...maxPasses {
            run.pass = pass
            let artifact: String, probabilities: [String: Float], context: Tensor
            if let prompt = options.prompt {
                try run.checkCancelled()
                context = try biqa.promptContext(prompt)                               // [1, L, D]
                (artifact, probabilities) = (prompt, [:])
            } else {
                try run.report(0, "detect", nil)
                let detection = try biqa.detect(current, among: remaining)
                if detection.artifact == Self.noArtifact { break }                     // nothing left to restore
                remaining.removeAll { $0 == detection.artifact }
                (artifact, probabilities, context) = (detection.artifact, detection.probabilities, detection.context)
            }
            let (air, corrected) = try restorePass(current, context: context, artifact: artifact, steps: steps,
                                                   seed: options.seed, guidance: ClassifierFreeGuidance(textScale: cfgText, imageScale: cfgImage),
                                                   sampler: sampler, run: run)
            current = artifact == Self.lowResolution && options.prompt == nil ? air : corrected
            passes.append(PassResult(artifact: artifact, probabilities: probabilities, image: Self.toUnit(current),
                                     air: air, scm: corrected))
        }
        var output = current
        if options.colorFix {
            try run.report(steps, "correct", passes.last?.artifact)
            output = Ops.adainColorFix(current, reference: original)
        }
        return RestoreResult(image: Self.toUnit(output), passes: passes)
    }

    /// One AIR + SCM pass on x [1, 3, H, W] in [-1, 1] → (x_air, x_scm), both [1, 3, H, W] in [-1, 1], unclamped.
    func restorePass(_ x: Tensor, context: Tensor, artifact: String, steps: Int, seed: UInt64,
                     guidance: ClassifierFreeGuidance, sampler: SamplerKind, run: Run) throws -> (Tensor, Tensor) {
        let (h, w) = (x.shape[2], x.shape[3])
        let m = sizeMultiple
        let (hp, wp) = ((h + m - 1) / m * m, (w + m - 1) / m * m)
        let padded = Self.replicatePad(x, height: hp, width: wp)                        // [1, 3, hp, wp]
        let tiled = hp * wp > tiling.thresholdPixels
        let f = vae.downsampleFactor
        let tile = max(f, tiling.tileSize / f * f), overlap = min(tiling.overlap / f * f, tile - f)

        try run.report(0, "encode", artifact)
        let zImg = tiled ? try vae.encodeTiled(padded, tileSize: tile, overlap: overlap)
                         : try vae.encode(padded)                                       // [1, 4, hp/f, wp/f], unscaled
        let zeros = Tensor(zeros: zImg.shape)
        let null = biqa.nullContext                                                     // [1, L, D]
        let (lat, plane) = (zImg.shape[1], zImg.shape[2] * zImg.shape[3])
        let (lc, dc) = (context.shape[1], context.shape[2])
        guard null.shape == context.shape else {
            throw EngineError.invalidArgument("context \(context.shape) and null context \(null.shape) differ")
        }
        let unet = self.unet
        // ε-model over branch blocks: sample row b = [z_t·c_in ; z_img or 0], context row b = text or null.
        let model: BranchedEpsilonModel = { xIn, t, branches in
            try run.checkCancelled()
            let n = branches.count
            let sample = Tensor(uninitialized: [n, 2 * lat, zImg.shape[2], zImg.shape[3]])   // [n, 8, h, w]
            let ctx = Tensor(uninitialized: [n, lc, dc])                                     // [n, L, D]
            for (b, branch) in branches.enumerated() {
                let dst = sample.data + b * 2 * lat * plane
                dst.update(from: xIn.data + b * lat * plane, count: lat * plane)
                (dst + lat * plane).update(from: (branch == .uncond ? zeros : zImg).data, count: lat * plane)
                (ctx.data + b * lc * dc).update(from: (branch == .cond ? context : null).data, count: lc * dc)
            }
            return try unet(sample, timestep: t, context: ctx)                                // [n, 4, h, w]
        }
        let denoiser = guidance.denoiser(CompVisDenoiser(schedule: schedule), model: model)
        let sigmas = sampler == .ddim ? try schedule.ddimSigmas(steps: steps) : try schedule.sigmas(steps: steps)
        var noise = TorchRandomSource(seed: seed)
        let z = try Samplers.initialLatent(shape: zImg.shape, sigmas: sigmas, noise: &noise)   // randn · σ₀
        try run.report(0, "denoise", artifact)
        let z0 = try Samplers.sample(sampler, denoiser: denoiser, x: z, sigmas: sigmas, noise: &noise,
                                     progress: { step, total in run.reportStep(step, total, artifact) })

        try run.report(steps, "decode", artifact)
        let scaled = Tensor(uninitialized: z0.shape)
        let inv = 1 / index.autodir.scaleFactor
        for i in 0..<z0.count { scaled.data[i] = z0.data[i] * inv }                    // z₀ / scale_factor
        let air = tiled ? try vae.decodeTiled(scaled, tileSize: tile / f, overlap: overlap / f)
                        : try vae.decode(scaled)                                        // [1, 3, hp, wp]

        try run.report(steps, "correct", artifact)
        let corrected = try scm(Ops.concatChannels([padded, air]))                       // [1, 6, hp, wp] → [1, 3, hp, wp]
        if hp == h && wp == w { return (air, corrected) }
        return (Ops.crop(air, top: 0, left: 0, height: h, width: w),
                Ops.crop(corrected, top: 0, left: 0, height: h, width: w))
    }

    /// Progress and cancellation of one restore call.
    final class Run: @unchecked Sendable {
        let cancel: CancellationToken?
        let progress: ((RestoreProgress) -> Bool)?
        let maxPasses: Int, steps: Int
        var pass = 1

        init(cancel: CancellationToken?, progress: ((RestoreProgress) -> Bool)?,
             maxPasses: Int, steps: Int) {
            self.cancel = cancel
            self.progress = progress
            self.maxPasses = maxPasses
            self.steps = steps
        }

        func checkCancelled() throws {
            if cancel?.isCancelled == true { throw EngineError.cancelled }
        }

        func report(_ step: Int, _ stage: String, _ artifact: String?) throws {
            try checkCancelled()
            if let progress, !progress(RestoreProgress(pass: pass, maxPasses: maxPasses, step: step, totalSteps: steps,
                                                       stage: stage, artifact: artifact)) {
                throw EngineError.cancelled
            }
        }

        /// For the sampler's callback: false stops the sampler (which then throws `.cancelled`).
        func reportStep(_ step: Int, _ total: Int, _ artifact: String) -> Bool {
            if cancel?.isCancelled == true { return false }
            return progress?(RestoreProgress(pass: pass, maxPasses: maxPasses, step: step, totalSteps: total,
                                             stage: "denoise", artifact: artifact)) ?? true
        }
    }

    // MARK: - Helpers

    /// Validates an API image and returns it as [1, 3, H, W] (a grayscale [1, 1, H, W] is replicated).
    static func checkedInput(_ image: Tensor) throws -> Tensor {
        let dims = image.rank == 3 ? [1] + image.shape : image.shape
        guard dims.count == 4, dims[0] == 1, dims[1] == 1 || dims[1] == 3 else {
            throw EngineError.invalidArgument("expected one RGB image [1, 3, H, W] (or grayscale [1, 1, H, W]), got \(image.shape)")
        }
        let (c, h, w) = (dims[1], dims[2], dims[3])
        guard h > 0, w > 0, h <= maxSide, w <= maxSide else {
            throw EngineError.invalidArgument("image size \(w)×\(h) out of range 1…\(maxSide)")
        }
        for i in 0..<image.count where !image.data[i].isFinite {
            throw EngineError.invalidArgument("the image holds a non-finite value at element \(i)")
        }
        let out = Tensor(uninitialized: [1, 3, h, w])
        for ch in 0..<3 { (out.data + ch * h * w).update(from: image.data + (c == 1 ? 0 : ch) * h * w, count: h * w) }
        return out
    }

    /// [0, 1] → [-1, 1]: 2x − 1.
    static func toSigned(_ x: Tensor) -> Tensor {
        let y = Tensor(uninitialized: x.shape)
        for i in 0..<x.count { y.data[i] = 2 * x.data[i] - 1 }
        return y
    }

    /// [-1, 1] → [0, 1], clamped: clamp((x + 1)/2, 0, 1) (NaN becomes 0).
    static func toUnit(_ x: Tensor) -> Tensor {
        let y = Tensor(uninitialized: x.shape)
        for i in 0..<x.count {
            let v = (x.data[i] + 1) / 2
            y.data[i] = v >= 1 ? 1 : (v > 0 ? v : 0)
        }
        return y
    }

    /// Pads [N, C, h, w] on the right and bottom to [N, C, height, width] by repeating the last column and row
    /// (PyTorch's `F.pad(x, (0, W − w, 0, H − h), mode="replicate")`).
    static func replicatePad(_ x: Tensor, height: Int, width: Int) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        if height == h && width == w { return x }
        let y = Tensor(uninitialized: [n, c, height, width])
        for p in 0..<(n * c) {
            let src = x.data + p * h * w, dst = y.data + p * height * width
            for iy in 0..<height {
                let s = src + min(iy, h - 1) * w, d = dst + iy * width
                d.update(from: s, count: w)
                if width > w { (d + w).update(repeating: s[w - 1], count: width - w) }
            }
        }
        return y
    }
}
