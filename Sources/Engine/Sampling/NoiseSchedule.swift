// NoiseSchedule: the CompVis discrete DDPM noise schedule in σ form, as k-diffusion's `DiscreteSchedule`
// (k_diffusion/external.py: `DiscreteEpsDDPMDenoiser`, `sigma_to_t`, `t_to_sigma`, `get_sigmas`; not quantised).
//
// Everything is computed in Double from the betas (as ldm's `make_beta_schedule` does, in float64) and
// handed out as Float; these are k-diffusion's numbers run in float64 (to ≤ 2e-7 relative, the float32
// rounding of torch.linspace's t grid). The AutoDIR reference keeps ᾱ in float32 (ldm's buffer), so its
// σ = √((1 − ᾱ)/ᾱ) carries float32 cancellation in 1 − ᾱ: up to 1.3e-5 relative at σ_min = 0.0292, below
// 2.5e-7 for σ > 1 (measured by tools/fixtures/make_sampler_fixture.py). We keep the exact values.
import Foundation

/// `scheduler/scheduler_config.json` (diffusers). Only the keys that define the betas are read; the
/// others (`_class_name`, `steps_offset`, `set_alpha_to_one`, `clip_sample`, …) are ignored.
/// Defaults are Stable Diffusion 1.x's, which AutoDIR uses.
public struct SchedulerConfig: Codable, Sendable, Equatable {
    public var numTrainTimesteps = 1000
    public var betaStart = 0.00085
    public var betaEnd = 0.012
    /// diffusers names: "scaled_linear" (linspace(√β₀, √β₁, N)²) or "linear" (linspace(β₀, β₁, N)).
    /// (ldm's own "linear" is diffusers' "scaled_linear".)
    public var betaSchedule = "scaled_linear"
    /// diffusers `trained_betas`: explicit betas; when present they replace the three keys above.
    public var trainedBetas: [Double]? = nil

    enum CodingKeys: String, CodingKey {
        case numTrainTimesteps = "num_train_timesteps", betaStart = "beta_start", betaEnd = "beta_end"
        case betaSchedule = "beta_schedule", trainedBetas = "trained_betas"
    }

    public init() {}

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = SchedulerConfig()
        numTrainTimesteps = try c.decodeIfPresent(Int.self, forKey: .numTrainTimesteps) ?? d.numTrainTimesteps
        betaStart = try c.decodeIfPresent(Double.self, forKey: .betaStart) ?? d.betaStart
        betaEnd = try c.decodeIfPresent(Double.self, forKey: .betaEnd) ?? d.betaEnd
        betaSchedule = try c.decodeIfPresent(String.self, forKey: .betaSchedule) ?? d.betaSchedule
        trainedBetas = try c.decodeIfPresent([Double].self, forKey: .trainedBetas)
    }

    /// Reads and validates a `scheduler_config.json`.
    public static func load(path: String) throws -> SchedulerConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EngineError.io("cannot read scheduler config \(path)")
        }
        let config: SchedulerConfig
        do { config = try JSONDecoder().decode(SchedulerConfig.self, from: data) } catch {
            throw EngineError.format("scheduler config \(path): \(error)")
        }
        _ = try config.betas()
        return config
    }

    /// The training betas β_0 … β_{N−1}, in Double.
    public func betas() throws -> [Double] {
        if let trained = trainedBetas {
            guard trained.count >= 2, trained.count <= 100_000, trained.allSatisfy({ $0 > 0 && $0 < 1 }) else {
                throw EngineError.format("scheduler config: trained_betas must hold 2…100000 values in (0, 1)")
            }
            return trained
        }
        let n = numTrainTimesteps
        guard n >= 2, n <= 100_000 else {
            throw EngineError.format("scheduler config: num_train_timesteps \(n) out of range 2…100000")
        }
        guard betaStart > 0, betaEnd > 0, betaStart < 1, betaEnd < 1 else {
            throw EngineError.format("scheduler config: beta_start \(betaStart), beta_end \(betaEnd) must lie in (0, 1)")
        }
        switch betaSchedule {
        case "scaled_linear":
            return linspace(betaStart.squareRoot(), betaEnd.squareRoot(), n).map { $0 * $0 }
        case "linear":
            return linspace(betaStart, betaEnd, n)
        default:
            throw EngineError.format("scheduler config: unsupported beta_schedule \"\(betaSchedule)\" (supported: scaled_linear, linear)")
        }
    }
}

/// `n` evenly spaced values from `a` to `b` inclusive (numpy's `linspace`; `[a]` when n == 1).
func linspace(_ a: Double, _ b: Double, _ n: Int) -> [Double] {
    if n <= 0 { return [] }
    if n == 1 { return [a] }
    let step = (b - a) / Double(n - 1)
    return (0..<n).map { i in i == n - 1 ? b : a + step * Double(i) }
}

/// The discrete σ schedule of an ε-predicting DDPM: σ_t = √((1 − ᾱ_t)/ᾱ_t) for t = 0 … N−1, with
/// k-diffusion's continuous maps between σ and a (fractional) timestep t.
public struct NoiseSchedule: Sendable {
    public let config: SchedulerConfig
    public let betas: [Double]
    /// ᾱ_t = Π_{s ≤ t} (1 − β_s).
    public let alphasCumprod: [Double]
    /// σ_t, increasing in t.
    public let sigmaTable: [Double]
    /// log σ_t.
    public let logSigmas: [Double]

    public init(config: SchedulerConfig = SchedulerConfig()) throws {
        self.config = config
        betas = try config.betas()
        var acc = 1.0
        alphasCumprod = betas.map { acc *= 1 - $0; return acc }
        sigmaTable = alphasCumprod.map { ((1 - $0) / $0).squareRoot() }
        logSigmas = sigmaTable.map { Foundation.log($0) }
        for i in 1..<logSigmas.count where !(logSigmas[i] > logSigmas[i - 1]) || !logSigmas[i].isFinite {
            throw EngineError.format("scheduler config: σ table is not strictly increasing at t = \(i)")
        }
    }

    /// Loads `scheduler_config.json`.
    public init(path: String) throws { try self.init(config: SchedulerConfig.load(path: path)) }

    /// Number of training timesteps N (the table has N entries, t ∈ [0, N−1]).
    public var count: Int { sigmaTable.count }
    public var sigmaMin: Float { Float(sigmaTable[0]) }
    public var sigmaMax: Float { Float(sigmaTable[count - 1]) }

    /// k-diffusion `sigma_to_t` (quantize=False): linear interpolation of log σ between the two
    /// tabulated σ's around it. `low` is the last index with log σ_low ≤ log σ, clamped to N−2; the
    /// weight is clamped to [0, 1], so σ below σ_min gives 0 and above σ_max gives N−1. σ ≤ 0 gives 0.
    public func sigmaToT(_ sigma: Double) -> Double {
        guard sigma > 0 else { return 0 }
        let logSigma = Foundation.log(sigma)
        // Last index with logSigmas[i] <= logSigma (0 when there is none, like torch's argmax of all zeros).
        var lo = 0, hi = count - 1
        if logSigmas[0] > logSigma {
            lo = 0
        } else {
            while lo < hi {  // invariant: logSigmas[lo] <= logSigma
                let mid = (lo + hi + 1) / 2
                if logSigmas[mid] <= logSigma { lo = mid } else { hi = mid - 1 }
            }
        }
        let lowIdx = min(lo, count - 2), highIdx = lowIdx + 1
        let low = logSigmas[lowIdx], high = logSigmas[highIdx]
        let w = min(max((low - logSigma) / (low - high), 0), 1)
        return (1 - w) * Double(lowIdx) + w * Double(highIdx)
    }

    /// `sigmaToT` for a Float σ, as the UNet's float timestep.
    public func sigmaToT(_ sigma: Float) -> Float { Float(sigmaToT(Double(sigma))) }

    /// k-diffusion `t_to_sigma`: exp of log σ interpolated linearly between ⌊t⌋ and ⌈t⌉.
    /// t is clamped to [0, N−1] (k-diffusion would index out of range there).
    public func tToSigma(_ t: Double) -> Double {
        let tc = t.isNaN ? 0 : min(max(t, 0), Double(count - 1))
        let lowIdx = Int(tc.rounded(.down)), highIdx = Int(tc.rounded(.up))
        let w = tc - Double(lowIdx)
        return Foundation.exp((1 - w) * logSigmas[lowIdx] + w * logSigmas[highIdx])
    }

    /// k-diffusion `get_sigmas(n)`: t = linspace(N−1, 0, n), σ = t_to_sigma(t), then a final 0
    /// appended (n + 1 values, decreasing).
    public func sigmas(steps: Int) throws -> [Float] {
        guard steps >= 1, steps <= 100_000 else {
            throw EngineError.invalidArgument("sampling steps \(steps) out of range 1…100000")
        }
        return linspace(Double(count - 1), 0, steps).map { Float(tToSigma($0)) } + [0]
    }

    /// σ's at the given (possibly fractional) timesteps, then a final `finalSigma` (σ at the end of
    /// the last step); for schedules built from discrete timesteps, such as diffusers' DDIM ones.
    public func sigmas(timesteps: [Double], finalSigma: Float = 0) -> [Float] {
        timesteps.map { Float(tToSigma($0)) } + [finalSigma]
    }

    /// diffusers `DDIMScheduler` timesteps ("leading" spacing): t_i = (n−1−i)·⌊N/n⌋ + stepsOffset.
    /// The step after the last one goes to ᾱ = 1 (σ = 0) when `setAlphaToOne`, else to ᾱ_0 (σ_min);
    /// `ddimSigmas` returns the matching σ list for `Samplers.sampleDDIM`.
    public func ddimTimesteps(steps: Int, stepsOffset: Int = 1) throws -> [Int] {
        guard steps >= 1, steps <= count else {
            throw EngineError.invalidArgument("DDIM steps \(steps) out of range 1…\(count)")
        }
        let ratio = count / steps
        return (0..<steps).reversed().map { min($0 * ratio + stepsOffset, count - 1) }
    }

    /// σ list for diffusers-equivalent DDIM: σ at `ddimTimesteps`, then 0 (`setAlphaToOne`) or σ_min.
    public func ddimSigmas(steps: Int, stepsOffset: Int = 1, setAlphaToOne: Bool = true) throws -> [Float] {
        let ts = try ddimTimesteps(steps: steps, stepsOffset: stepsOffset)
        return sigmas(timesteps: ts.map(Double.init), finalSigma: setAlphaToOne ? 0 : sigmaMin)
    }
}
