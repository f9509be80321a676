// JobHandler: the pluggable job a worker runs (op + header + data frames in → result frames + progress out).
import Engine
import Foundation

/// One job as the worker received it.
public struct Job: @unchecked Sendable {
    public let id: String
    public let op: String
    /// The whole job header (see docs/PROTOCOL.md); `options` is the client's options object.
    public let header: [String: Any]
    public let options: [String: Any]
    public let payload: Payload
    public let data: [[UInt8]]

    public init(id: String, op: String, header: [String: Any], options: [String: Any], payload: Payload, data: [[UInt8]]) {
        self.id = id; self.op = op; self.header = header; self.options = options; self.payload = payload; self.data = data
    }

    /// The float32 input as a tensor (copies the data frame).
    public func tensor() throws -> Tensor {
        guard payload.dtype == .float32, let frame = data.first else {
            throw EngineError.invalidArgument("op \(op) needs a float32 tensor, got \(payload.dtype.rawValue)")
        }
        let t = Tensor(uninitialized: payload.shape)
        guard frame.count == t.count * 4 else { throw EngineError.invalidArgument("data frame size does not match shape \(payload.shape)") }
        frame.withUnsafeBytes { src in
            if let base = src.baseAddress { UnsafeMutableRawPointer(t.data).copyMemory(from: base, byteCount: t.count * 4) }
        }
        return t
    }
}

/// What a handler returns: the payload description, its data frames, and extra header fields.
public struct JobResult: @unchecked Sendable {
    public var payload: Payload
    public var data: [[UInt8]]
    public var extra: [String: Any]

    public init(payload: Payload, data: [[UInt8]], extra: [String: Any] = [:]) {
        self.payload = payload; self.data = data; self.extra = extra
    }

    /// A float32 tensor result.
    public init(tensor t: Tensor, extra: [String: Any] = [:]) {
        payload = Payload(dtype: .float32, shape: t.shape)
        data = [FloatBytes.bytes(UnsafeBufferPointer(start: t.data, count: t.count))]
        self.extra = extra
    }
}

/// A refusal with a protocol error code (the client sees `code` and `message`).
public struct JobError: Error, CustomStringConvertible {
    public let code: Wire.Code
    public let message: String
    public init(_ code: Wire.Code, _ message: String) { self.code = code; self.message = message }
    public var description: String { "\(code.rawValue): \(message)" }
}

/// Per-job context: cancellation (by the broker, or the deadline) and progress reports.
public final class JobContext: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false
    private var hooks: [() -> Void] = []
    /// Monotonic ms after which the job counts as cancelled (deadline), if any.
    public let deadline: UInt64?
    let report: (Int, Int, String?, [String: Any]) -> Void
    let parent: JobContext?

    public init(deadline: UInt64?, parent: JobContext? = nil,
                report: @escaping (Int, Int, String?, [String: Any]) -> Void = { _, _, _, _ in }) {
        self.deadline = deadline
        self.parent = parent
        self.report = report
    }

    public func cancel() {
        lock.lock()
        cancelled = true
        let run = hooks
        hooks = []
        lock.unlock()
        run.forEach { $0() }
    }

    /// Calls `hook` once when this context (or its parent) is cancelled by `cancel()`; at once if it already was.
    /// Deadlines are not events: poll `isCancelled`, or schedule on `deadline`.
    public func onCancel(_ hook: @escaping () -> Void) {
        lock.lock()
        if cancelled {
            lock.unlock()
            hook()
            return
        }
        hooks.append(hook)
        lock.unlock()
        parent?.onCancel(hook)
    }

    /// True once the broker cancelled the job or its deadline passed; handlers poll it between steps.
    public var isCancelled: Bool {
        lock.lock()
        let c = cancelled
        lock.unlock()
        return c || deadlineExpired || (parent?.isCancelled ?? false)
    }

    public var deadlineExpired: Bool { deadline.map { MonotonicClock.now() >= $0 } ?? false }

    /// Throws `EngineError.cancelled` when cancelled.
    public func check() throws { if isCancelled { throw EngineError.cancelled } }

    /// Reports progress (`done` of `total` steps), sent to the client as a PARTIAL-style message; `fields`
    /// (JSON values, e.g. pass/step/stage) go into that message's header.
    public func progress(_ done: Int, of total: Int, message: String? = nil, fields: [String: Any] = [:]) {
        report(done, total, message, fields)
    }
}

/// A job a worker can run. Handlers are shared by the worker's job threads, so they must be thread-safe
/// (models are immutable values over read-only weights).
public protocol JobHandler: Sendable {
    /// The op name clients put in `"op"`.
    var op: String { get }
    func run(_ job: Job, context: JobContext) throws -> JobResult
}

// MARK: - Handlers available today

/// `echo`: returns the input unchanged (tests, latency benchmarks).
public struct EchoHandler: JobHandler {
    public let op = "echo"
    public init() {}
    public func run(_ job: Job, context: JobContext) throws -> JobResult {
        JobResult(payload: job.payload, data: job.data)
    }
}

/// `sleep`: runs for `options.ms` milliseconds (default 100), sending progress every `options.step_ms`
/// (default 20), then echoes its input. For testing heartbeats while busy, kill -9 mid-job, cancel and deadlines.
public struct SleepHandler: JobHandler {
    public let op = "sleep"
    public init() {}
    public func run(_ job: Job, context: JobContext) throws -> JobResult {
        let ms = max(0, min(Wire.int(job.options["ms"]) ?? 100, 3_600_000))
        let step = max(1, min(Wire.int(job.options["step_ms"]) ?? 20, 60_000))
        let start = MonotonicClock.now()
        let total = (ms + step - 1) / step
        var done = 0
        while MonotonicClock.now() < start + UInt64(ms) {
            try context.check()
            let left = Int(start + UInt64(ms) - MonotonicClock.now())
            usleep(UInt32(max(0, min(left, step)) * 1000))
            done += 1
            context.progress(min(done, total), of: total)
        }
        try context.check()
        return JobResult(payload: job.payload, data: job.data, extra: ["slept_ms": ms])
    }
}

/// `scm`: NAFNet structure correction from a model folder's `scm/`. Input a float32 [1, 6, H, W] tensor
/// (degraded image and AIR output) → [1, 3, H, W]; or a PNG, run as [image, image] → a PNG.
public struct SCMHandler: JobHandler {
    public let op = "scm"
    public let model: NAFNet

    public init(modelDirectory: String, precision: WeightPrecision = .float32) throws {
        model = try NAFNet(directory: modelDirectory + "/scm", precision: precision)
    }

    /// An already loaded model (e.g. random weights for benchmarks).
    public init(model: NAFNet) { self.model = model }

    public func run(_ job: Job, context: JobContext) throws -> JobResult {
        try context.check()
        context.progress(0, of: 1)
        switch job.payload.dtype {
        case .float32:
            let x = try job.tensor()                                                  // [1, 6, H, W]
            let y = try model(x)                                                      // [1, 3, H, W]
            try context.check()
            context.progress(1, of: 1)
            return JobResult(tensor: y)
        case .png:
            let image = try PNGImage.read(data: job.data[0])                          // [1, 3, H, W] in [0, 1]
            let y = try model(Ops.concatChannels([image, image]))                     // [1, 6, H, W] → [1, 3, H, W]
            try context.check()
            context.progress(1, of: 1)
            let bitDepth = Wire.int(job.options["bit_depth"]) ?? 8
            return JobResult(payload: Payload(dtype: .png), data: [try PNGImage.encode(y, bitDepth: bitDepth == 16 ? 16 : 8)])
        case .none:
            throw JobError(.invalidInput, "scm needs a float32 [1, 6, H, W] tensor or a PNG")
        }
    }
}

/// The standard handler sets (the `restore`, `detect` handlers are in PipelineHandlers.swift).
public enum WorkerHandlers {
    /// The handlers a worker serves: echo and sleep always; with a model folder, restore, detect and scm from a
    /// full AutoDIR folder (one pipeline, shared by the job threads), or scm alone from a folder with `scm/`.
    /// What does not load is reported through `log` and not served.
    public static func standard(modelDirectory: String?, log: (String) -> Void = { _ in }) throws -> [JobHandler] {
        var handlers: [JobHandler] = [EchoHandler(), SleepHandler()]
        if let dir = modelDirectory { handlers += model(directory: dir, log: log) }
        return handlers
    }
}
