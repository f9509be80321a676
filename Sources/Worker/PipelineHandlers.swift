// PipelineHandlers: the `restore` and `detect` ops over Engine's AutoDIRPipeline (docs/PROTOCOL.md, "restore"
// and "detect"). One pipeline per worker process, shared by the job threads (it is immutable after loading).
import Engine
import Foundation

/// The image of a `restore`/`detect` job, and how the reply gives it back.
struct PipelineInput {
    enum Layout { case nchw, hwc, png }
    /// [1, 3 (or 1), H, W] in [0, 1].
    let image: Tensor
    let layout: Layout

    /// float32 [1, C, H, W] (the Python client's `_nchw`), float32 [H, W, C] (C = 3 or 1), or PNG bytes.
    init(_ job: Job) throws {
        switch job.payload.dtype {
        case .png:
            image = try PNGImage.read(data: job.data[0])                              // [1, 3, H, W]
            layout = .png
        case .float32:
            let s = job.payload.shape
            if s.count == 4 {
                guard s[0] == 1, s[1] == 3 || s[1] == 1 else {
                    throw JobError(.invalidInput, "\(job.op) needs one image [1, 3, H, W] (or [H, W, 3]), got shape \(s)")
                }
                image = try job.tensor()
                layout = .nchw
            } else if s.count == 3 {
                guard s[2] == 3 || s[2] == 1 else {
                    throw JobError(.invalidInput, "\(job.op): a rank-3 image is [H, W, 3] (channels last), got shape \(s)")
                }
                let hwc = try job.tensor()
                let (h, w, c) = (s[0], s[1], s[2])
                let t = Tensor(uninitialized: [1, c, h, w])
                for y in 0..<h {
                    for x in 0..<w {
                        for ch in 0..<c { t.data[(ch * h + y) * w + x] = hwc.data[(y * w + x) * c + ch] }
                    }
                }
                image = t
                layout = .hwc
            } else {
                throw JobError(.invalidInput, "\(job.op) needs one image [1, 3, H, W] or [H, W, 3], got shape \(s)")
            }
        case .none:
            throw JobError(.invalidInput, "\(job.op) needs an image: float32 [1, 3, H, W] / [H, W, 3] in [0, 1], or a PNG")
        }
    }

    /// The reply payload for a [1, 3, H, W] result in the input's layout (a PNG for a PNG).
    func result(_ y: Tensor, bitDepth: Int, extra: [String: Any]) throws -> JobResult {
        switch layout {
        case .nchw:
            return JobResult(tensor: y, extra: extra)
        case .hwc:
            let (c, h, w) = (y.shape[1], y.shape[2], y.shape[3])
            let t = Tensor(uninitialized: [h, w, c])
            for ch in 0..<c {
                for i in 0..<(h * w) { t.data[i * c + ch] = y.data[ch * h * w + i] }
            }
            return JobResult(tensor: t, extra: extra)
        case .png:
            return JobResult(payload: Payload(dtype: .png), data: [try PNGImage.encode(y, bitDepth: bitDepth)], extra: extra)
        }
    }
}

/// Reads the client's options object strictly: a wrong type or an unknown key is `invalid_input`.
struct OptionReader {
    let options: [String: Any]
    let op: String

    func check(known: Set<String>) throws {
        let unknown = options.keys.filter { !known.contains($0) }.sorted()
        if !unknown.isEmpty {
            throw JobError(.invalidInput, "\(op): unknown option(s) \(unknown.joined(separator: ", ")) (known: \(known.sorted().joined(separator: ", ")))")
        }
    }

    func int(_ key: String) throws -> Int? {
        guard let v = options[key], !(v is NSNull) else { return nil }
        guard let i = Wire.int(v) else { throw JobError(.invalidInput, "\(op): option \(key) must be an integer, got \(v)") }
        return i
    }

    func float(_ key: String) throws -> Float? {
        guard let v = options[key], !(v is NSNull) else { return nil }
        guard let d = Wire.double(v), abs(d) <= 1e6 else {
            throw JobError(.invalidInput, "\(op): option \(key) must be a finite number, got \(v)")
        }
        return Float(d)
    }

    func string(_ key: String) throws -> String? {
        guard let v = options[key], !(v is NSNull) else { return nil }
        guard let s = v as? String else { throw JobError(.invalidInput, "\(op): option \(key) must be a string, got \(v)") }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = options[key], !(v is NSNull) else { return nil }
        guard let b = v as? Bool else { throw JobError(.invalidInput, "\(op): option \(key) must be true or false, got \(v)") }
        return b
    }
}

/// `restore`: AutoDIR restoration of one image (docs/PROTOCOL.md). Progress per sampler step with
/// `pass`, `step`, `stage`; cancel and deadlines stop it before the next UNet call.
public struct RestoreHandler: JobHandler {
    public let op = "restore"
    public let pipeline: AutoDIRPipeline

    public init(pipeline: AutoDIRPipeline) { self.pipeline = pipeline }

    static let known: Set<String> = ["prompt", "steps", "seed", "cfg_text", "cfg_image", "max_passes", "color_fix",
                                     "sampler", "bit_depth"]

    /// The job's options as RestoreOptions (and the PNG bit depth).
    static func options(_ job: Job) throws -> (RestoreOptions, Int) {
        let r = OptionReader(options: job.options, op: job.op)
        try r.check(known: known)
        var o = RestoreOptions()
        o.prompt = try r.string("prompt")
        if let p = o.prompt, p.isEmpty { throw JobError(.invalidInput, "restore: option prompt must not be empty (leave it out for automatic mode)") }
        o.steps = try r.int("steps")
        if let seed = try r.int("seed") {
            guard seed >= 0 else { throw JobError(.invalidInput, "restore: option seed must be ≥ 0, got \(seed)") }
            o.seed = UInt64(seed)
        }
        o.cfgText = try r.float("cfg_text")
        o.cfgImage = try r.float("cfg_image")
        o.maxPasses = try r.int("max_passes")
        o.colorFix = try r.bool("color_fix") ?? false
        o.sampler = try r.string("sampler")
        let bitDepth = try r.int("bit_depth") ?? 8
        guard bitDepth == 8 || bitDepth == 16 else { throw JobError(.invalidInput, "restore: option bit_depth must be 8 or 16, got \(bitDepth)") }
        return (o, bitDepth)
    }

    public func run(_ job: Job, context: JobContext) throws -> JobResult {
        let (options, bitDepth) = try Self.options(job)
        let input = try PipelineInput(job)
        try context.check()
        // Broker cancel → the token at once; the deadline → the token when it passes (the pipeline checks the
        // token before every UNet call, and the progress callback stops the sampler between steps).
        let token = CancellationToken()
        context.onCancel { token.cancel() }
        if let deadline = context.deadline {
            let left = deadline > MonotonicClock.now() ? Int(deadline - MonotonicClock.now()) : 0
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(left)) { [weak token] in token?.cancel() }
        }
        let result = try pipeline.restore(input.image, options: options, cancel: token) { p in
            if context.isCancelled { token.cancel(); return false }
            var fields: [String: Any] = ["pass": p.pass, "max_passes": p.maxPasses, "step": p.step, "steps": p.totalSteps,
                                         "stage": p.stage]
            if let a = p.artifact { fields["artifact"] = a }
            context.progress((p.pass - 1) * p.totalSteps + p.step, of: p.maxPasses * p.totalSteps, fields: fields)
            return true
        }
        try context.check()
        let passes: [[String: Any]] = result.passes.map {
            ["artifact": $0.artifact, "probabilities": $0.probabilities.mapValues { Double($0) }]
        }
        return try input.result(result.image, bitDepth: bitDepth,
                                extra: ["passes": passes, "artifacts": result.passes.map(\.artifact)])
    }
}

/// `detect`: BIQA over all categories; the reply has no data, the header holds `artifact` and `probabilities`.
public struct DetectHandler: JobHandler {
    public let op = "detect"
    public let pipeline: AutoDIRPipeline

    public init(pipeline: AutoDIRPipeline) { self.pipeline = pipeline }

    public func run(_ job: Job, context: JobContext) throws -> JobResult {
        try OptionReader(options: job.options, op: job.op).check(known: [])
        let input = try PipelineInput(job)
        try context.check()
        let d = try pipeline.detect(input.image)
        try context.check()
        return JobResult(payload: Payload(dtype: .none), data: [],
                         extra: ["artifact": d.artifact, "probabilities": d.probabilities.mapValues { Double($0) }])
    }
}

extension WorkerHandlers {
    /// The handlers a model folder adds: restore, detect and scm from a full AutoDIR folder; only scm from a
    /// folder with just `scm/`. What could not be loaded is said through `log` (never thrown): the worker then
    /// simply does not announce those ops.
    public static func model(directory: String, precision: WeightPrecision = .float32, log: (String) -> Void) -> [JobHandler] {
        do {
            let pipeline = try AutoDIRPipeline(directory: directory, precision: precision)
            return [RestoreHandler(pipeline: pipeline), DetectHandler(pipeline: pipeline), SCMHandler(model: pipeline.scm)]
        } catch {
            log("worker: not serving restore/detect: \(error)")
        }
        guard FileManager.default.fileExists(atPath: directory + "/scm") else { return [] }
        do {
            return [try SCMHandler(modelDirectory: directory, precision: precision)]
        } catch {
            log("worker: not serving scm: \(error)")
            return []
        }
    }
}
