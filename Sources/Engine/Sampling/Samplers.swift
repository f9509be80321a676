// Samplers: k-diffusion's samplers over a σ schedule (k_diffusion/sampling.py: `sample_euler_ancestral`,
// `sample_euler`, `sample_dpmpp_2m`, `get_ancestral_step`, `to_d`) plus deterministic DDIM in σ form,
// and the `CompVisDenoiser` wrapper (k_diffusion/external.py) that turns an ε-model into a denoiser.
//
// Latents are float32 tensors of any shape (NCHW in practice); scalar coefficients are computed in Double
// from the Float σ's. Randomness comes only from the `NoiseSource` passed in.
import Foundation

/// A denoiser D(x; σ): the estimate of the clean sample x₀ from x = x₀ + σ·ε (k-diffusion's `model`).
public typealias Denoiser = (_ x: Tensor, _ sigma: Float) throws -> Tensor

/// An ε-predicting model in CompVis form: ε = model(x_in, t) with x_in = x·c_in and the float timestep t.
/// The batch is x_in's first dimension; the returned ε has x_in's shape.
public typealias EpsilonModel = (_ xIn: Tensor, _ t: Float) throws -> Tensor

/// Called after each sampler step with (steps done, total steps); returning false cancels the run,
/// which then throws `EngineError.cancelled`.
public typealias SamplerProgress = (_ step: Int, _ total: Int) -> Bool

/// Called before step i with the current x and the denoiser's output at σ_i (k-diffusion's `callback`
/// with keys 'i', 'x', 'denoised'); for tracing and tests. The tensors must not be modified.
public typealias SamplerTrace = (_ i: Int, _ x: Tensor, _ denoised: Tensor) -> Void

/// k-diffusion `CompVisDenoiser` (quantize=False) for an ε-predicting model:
/// `c_in = 1/√(σ² + 1)`, `ε = model(x·c_in, t(σ))`, `denoised = x − σ·ε`.
public struct CompVisDenoiser: Sendable {
    public let schedule: NoiseSchedule

    public init(schedule: NoiseSchedule) { self.schedule = schedule }

    /// The model's inputs at σ: x·c_in (a new tensor) and the continuous timestep t(σ).
    public func modelInput(_ x: Tensor, sigma: Float) -> (xIn: Tensor, t: Float) {
        let s = Double(sigma)
        let cIn = Float(1 / (s * s + 1).squareRoot())
        let xIn = Tensor(uninitialized: x.shape)
        for i in 0..<x.count { xIn.data[i] = x.data[i] * cIn }
        return (xIn, schedule.sigmaToT(sigma))
    }

    /// denoised = x − σ·ε (a new tensor); ε must have x's shape.
    public func denoised(_ x: Tensor, eps: Tensor, sigma: Float) throws -> Tensor {
        guard eps.shape == x.shape else {
            throw EngineError.invalidArgument("ε-model returned shape \(eps.shape) for input \(x.shape)")
        }
        let out = Tensor(uninitialized: x.shape)
        for i in 0..<x.count { out.data[i] = x.data[i] - sigma * eps.data[i] }
        return out
    }

    /// D(x; σ) for one call of the model.
    public func denoise(_ x: Tensor, sigma: Float, model: EpsilonModel) throws -> Tensor {
        let (xIn, t) = modelInput(x, sigma: sigma)
        let eps = try model(xIn, t)
        return try denoised(x, eps: eps, sigma: sigma)
    }

    /// The model as a `Denoiser`.
    public func wrap(_ model: @escaping EpsilonModel) -> Denoiser {
        { x, sigma in try denoise(x, sigma: sigma, model: model) }
    }
}

/// A source of standard normal noise. The samplers draw from it only where k-diffusion calls
/// `randn_like`/`noise_sampler`, in the same order.
public protocol NoiseSource {
    /// A tensor of independent N(0, 1) samples (throws only for sources that can run out, like `ReplayNoise`).
    mutating func randn(_ shape: [Int]) throws -> Tensor
}

/// Seeded Gaussian noise: SplitMix64 (`Engine.SplitMix64`) feeding the Box–Muller transform in Double.
/// Each pair of 64-bit draws a, b gives u₁ = ((a >> 11) + 1)·2⁻⁵³ ∈ (0, 1], u₂ = (b >> 11)·2⁻⁵³ ∈ [0, 1),
/// r = √(−2 ln u₁), and the two samples r·cos(2πu₂), r·sin(2πu₂) in that order (rounded to Float);
/// tensors are filled in row-major order and a leftover sample carries over to the next call.
/// The same seed gives the same values on every run (on one platform: it uses the C library's log/cos/sin).
/// This is not torch's generator: a seed here does not reproduce `torch.randn`.
public struct GaussianNoise: NoiseSource, Sendable {
    public private(set) var generator: SplitMix64
    private var spare: Float? = nil

    public init(seed: UInt64) { generator = SplitMix64(seed: seed) }

    public mutating func next() -> Float {
        if let s = spare { spare = nil; return s }
        let u1 = Double((generator.next() >> 11) + 1) * 0x1p-53
        let u2 = Double(generator.next() >> 11) * 0x1p-53
        let r = (-2 * Foundation.log(u1)).squareRoot()
        let theta = 2 * Double.pi * u2
        spare = Float(r * Foundation.sin(theta))
        return Float(r * Foundation.cos(theta))
    }

    public mutating func randn(_ shape: [Int]) throws -> Tensor {
        let t = Tensor(uninitialized: shape)
        for i in 0..<t.count { t.data[i] = next() }
        return t
    }
}

/// Replays given tensors in order (noise saved in a fixture or from another implementation).
/// Throws when it runs out or when the requested shape differs from the next tensor's.
public struct ReplayNoise: NoiseSource {
    public let tensors: [Tensor]
    public private(set) var position = 0

    public init(_ tensors: [Tensor]) { self.tensors = tensors }

    public var remaining: Int { tensors.count - position }

    public mutating func randn(_ shape: [Int]) throws -> Tensor {
        guard position < tensors.count else {
            throw EngineError.invalidArgument("replay noise exhausted after \(tensors.count) tensors")
        }
        let t = tensors[position]
        guard t.count == shape.reduce(1, *) else {
            throw EngineError.invalidArgument("replay noise #\(position) has shape \(t.shape), requested \(shape)")
        }
        position += 1
        return t.copy().reshaped(shape)
    }
}

/// The samplers by name (k-diffusion's names; `ddim` is deterministic DDIM, η = 0).
public enum SamplerKind: String, CaseIterable, Sendable {
    case eulerAncestral = "euler_ancestral"
    case euler = "euler"
    case ddim = "ddim"
    case dpmpp2m = "dpmpp_2m"
}

/// k-diffusion's samplers. Each takes the initial x (already scaled: `initialLatent`), the decreasing σ
/// list ending in 0 (`NoiseSchedule.sigmas(steps:)`), and returns the final x; one denoiser call per step.
public enum Samplers {
    /// The initial latent x = noise·σ₀ (k-diffusion: `x = torch.randn(shape) * sigmas[0]`).
    public static func initialLatent<N: NoiseSource>(shape: [Int], sigmas: [Float], noise: inout N) throws -> Tensor {
        guard let s0 = sigmas.first else { throw EngineError.invalidArgument("empty σ schedule") }
        let x = try noise.randn(shape)
        for i in 0..<x.count { x.data[i] *= s0 }
        return x
    }

    /// Runs a sampler by name; `noise` is used only by the ancestral sampler.
    public static func sample<N: NoiseSource>(_ kind: SamplerKind, denoiser: Denoiser, x: Tensor, sigmas: [Float],
                                              noise: inout N, progress: SamplerProgress? = nil,
                                              trace: SamplerTrace? = nil) throws -> Tensor {
        switch kind {
        case .eulerAncestral:
            return try sampleEulerAncestral(denoiser: denoiser, x: x, sigmas: sigmas, noise: &noise,
                                            progress: progress, trace: trace)
        case .euler: return try sampleEuler(denoiser: denoiser, x: x, sigmas: sigmas, progress: progress, trace: trace)
        case .ddim: return try sampleDDIM(denoiser: denoiser, x: x, sigmas: sigmas, progress: progress, trace: trace)
        case .dpmpp2m: return try sampleDPMpp2M(denoiser: denoiser, x: x, sigmas: sigmas, progress: progress, trace: trace)
        }
    }

    /// k-diffusion `get_ancestral_step`: σ_up = min(σ_to, η·√(σ_to²(σ_from² − σ_to²)/σ_from²)),
    /// σ_down = √(σ_to² − σ_up²); (σ_to, 0) when η = 0.
    public static func getAncestralStep(sigmaFrom: Double, sigmaTo: Double, eta: Double = 1) -> (sigmaDown: Double, sigmaUp: Double) {
        if eta == 0 { return (sigmaTo, 0) }
        let sigmaUp = min(sigmaTo, eta * (sigmaTo * sigmaTo * (sigmaFrom * sigmaFrom - sigmaTo * sigmaTo) / (sigmaFrom * sigmaFrom)).squareRoot())
        let sigmaDown = (sigmaTo * sigmaTo - sigmaUp * sigmaUp).squareRoot()
        return (sigmaDown, sigmaUp)
    }

    /// k-diffusion `sample_euler_ancestral` (s_noise 1): per step, denoised = D(x; σ),
    /// d = (x − denoised)/σ, x ← x + d·(σ_down − σ), then x ← x + noise·σ_up when σ_next > 0.
    public static func sampleEulerAncestral<N: NoiseSource>(denoiser: Denoiser, x: Tensor, sigmas: [Float],
                                                            noise: inout N, eta: Double = 1,
                                                            progress: SamplerProgress? = nil,
                                                            trace: SamplerTrace? = nil) throws -> Tensor {
        try validate(x: x, sigmas: sigmas)
        var x = x.copy()
        let total = sigmas.count - 1
        for i in 0..<total {
            let sigma = Double(sigmas[i]), sigmaNext = Double(sigmas[i + 1])
            let den = try checked(denoiser(x, sigmas[i]), like: x)
            trace?(i, x, den)
            let (sigmaDown, sigmaUp) = getAncestralStep(sigmaFrom: sigma, sigmaTo: sigmaNext, eta: eta)
            let next = Tensor(uninitialized: x.shape)
            let invSigma = Float(1 / sigma), dt = Float(sigmaDown - sigma)
            for j in 0..<x.count {
                let d = (x.data[j] - den.data[j]) * invSigma  // to_d
                next.data[j] = x.data[j] + d * dt
            }
            if sigmaNext > 0 {
                let n = try noise.randn(x.shape)
                let up = Float(sigmaUp)
                for j in 0..<x.count { next.data[j] += n.data[j] * up }
            }
            x = next
            try report(progress, i + 1, total)
        }
        return x
    }

    /// k-diffusion `sample_euler` with s_churn = 0: x ← x + (x − D(x; σ))/σ · (σ_next − σ).
    public static func sampleEuler(denoiser: Denoiser, x: Tensor, sigmas: [Float],
                                   progress: SamplerProgress? = nil, trace: SamplerTrace? = nil) throws -> Tensor {
        try validate(x: x, sigmas: sigmas)
        var x = x.copy()
        let total = sigmas.count - 1
        for i in 0..<total {
            let sigma = Double(sigmas[i]), sigmaNext = Double(sigmas[i + 1])
            let den = try checked(denoiser(x, sigmas[i]), like: x)
            trace?(i, x, den)
            let next = Tensor(uninitialized: x.shape)
            let invSigma = Float(1 / sigma), dt = Float(sigmaNext - sigma)
            for j in 0..<x.count {
                let d = (x.data[j] - den.data[j]) * invSigma
                next.data[j] = x.data[j] + d * dt
            }
            x = next
            try report(progress, i + 1, total)
        }
        return x
    }

    /// Deterministic DDIM (η = 0) in σ form. With x = x̂₀ + σ·ε̂ (k-diffusion's variance-exploding
    /// scaling of the latent, x = z/√ᾱ):
    ///
    ///     x̂₀ = D(x_i; σ_i),  ε̂ = (x_i − x̂₀)/σ_i,  x_{i+1} = x̂₀ + σ_{i+1}·ε̂.
    ///
    /// Multiplying by √ᾱ_{i+1} = 1/√(1 + σ_{i+1}²) gives diffusers' `DDIMScheduler.step` (eta 0,
    /// epsilon prediction): z_prev = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev)·ε̂ with x̂₀ = (z − √(1−ᾱ)·ε̂)/√ᾱ.
    /// On the same σ list it is algebraically the Euler step (Karras et al. 2022, §3); use
    /// `NoiseSchedule.ddimSigmas` for diffusers' DDIM timesteps (then the trajectory equals diffusers'
    /// latents divided by √ᾱ; when the last σ is not 0, the final x is at that σ in this scaling).
    public static func sampleDDIM(denoiser: Denoiser, x: Tensor, sigmas: [Float],
                                  progress: SamplerProgress? = nil, trace: SamplerTrace? = nil) throws -> Tensor {
        try validate(x: x, sigmas: sigmas)
        var x = x.copy()
        let total = sigmas.count - 1
        for i in 0..<total {
            let sigma = Double(sigmas[i]), sigmaNext = Double(sigmas[i + 1])
            let den = try checked(denoiser(x, sigmas[i]), like: x)
            trace?(i, x, den)
            let next = Tensor(uninitialized: x.shape)
            let invSigma = Float(1 / sigma), sNext = Float(sigmaNext)
            for j in 0..<x.count {
                let eps = (x.data[j] - den.data[j]) * invSigma
                next.data[j] = den.data[j] + sNext * eps
            }
            x = next
            try report(progress, i + 1, total)
        }
        return x
    }

    /// k-diffusion `sample_dpmpp_2m` (DPM-Solver++(2M)): with t = −log σ and h = t_next − t,
    /// x ← (σ_next/σ)·x − expm1(−h)·D', where D' = denoised on the first step and when σ_next = 0, else
    /// D' = (1 + 1/(2r))·denoised − 1/(2r)·old_denoised with r = h_last/h.
    public static func sampleDPMpp2M(denoiser: Denoiser, x: Tensor, sigmas: [Float],
                                     progress: SamplerProgress? = nil, trace: SamplerTrace? = nil) throws -> Tensor {
        try validate(x: x, sigmas: sigmas)
        var x = x.copy()
        var oldDenoised: Tensor? = nil
        let total = sigmas.count - 1
        for i in 0..<total {
            let sigma = Double(sigmas[i]), sigmaNext = Double(sigmas[i + 1])
            let den = try checked(denoiser(x, sigmas[i]), like: x)
            trace?(i, x, den)
            let next = Tensor(uninitialized: x.shape)
            if sigmaNext == 0 {
                // t_next = ∞: σ_next/σ = 0 and −expm1(−h) = 1, so x = denoised.
                next.data.update(from: den.data, count: x.count)
            } else {
                let t = -Foundation.log(sigma), tNext = -Foundation.log(sigmaNext)
                let h = tNext - t
                let ratio = Float(sigmaNext / sigma)
                let coef = Float(-Foundation.expm1(-h))
                if let old = oldDenoised {
                    let hLast = t - (-Foundation.log(Double(sigmas[i - 1])))
                    let r = hLast / h
                    let a = Float(1 + 1 / (2 * r)), b = Float(1 / (2 * r))
                    for j in 0..<x.count {
                        let denD = a * den.data[j] - b * old.data[j]
                        next.data[j] = ratio * x.data[j] + coef * denD
                    }
                } else {
                    for j in 0..<x.count { next.data[j] = ratio * x.data[j] + coef * den.data[j] }
                }
            }
            oldDenoised = den
            x = next
            try report(progress, i + 1, total)
        }
        return x
    }

    // MARK: helpers

    /// σ's must be positive and finite except the last, which may be 0 (the usual end) or positive.
    static func validate(x: Tensor, sigmas: [Float]) throws {
        guard sigmas.count >= 2 else {
            throw EngineError.invalidArgument("σ schedule needs at least 2 values (one step), got \(sigmas.count)")
        }
        for i in 0..<(sigmas.count - 1) where !(sigmas[i] > 0 && sigmas[i].isFinite) {
            throw EngineError.invalidArgument("σ[\(i)] = \(sigmas[i]) must be positive and finite")
        }
        guard let last = sigmas.last, last >= 0, last.isFinite else {
            throw EngineError.invalidArgument("last σ must be finite and ≥ 0")
        }
        guard x.count > 0 else { throw EngineError.invalidArgument("empty latent \(x.shape)") }
    }

    static func checked(_ den: Tensor, like x: Tensor) throws -> Tensor {
        guard den.shape == x.shape else {
            throw EngineError.invalidArgument("denoiser returned shape \(den.shape) for input \(x.shape)")
        }
        return den
    }

    static func report(_ progress: SamplerProgress?, _ step: Int, _ total: Int) throws {
        if let progress, !progress(step, total) { throw EngineError.cancelled }
    }
}
