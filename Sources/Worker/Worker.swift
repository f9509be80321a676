// Worker: a DEALER that connects to a broker, announces READY, and runs jobs on its own threads while an
// I/O thread keeps heartbeating, so a long job never makes the worker look dead.
import CZmq
import Engine
import Foundation

/// How a worker connects and behaves.
public struct WorkerOptions: Sendable {
    public var endpoint: String
    /// Name shown in the broker's status.
    public var name: String
    /// Jobs run at once (job threads); announced to the broker as `capacity`.
    public var capacity = 1
    public var heartbeatMs = 1000
    /// Missed broker heartbeats after which the worker reconnects and registers again.
    public var liveness = 3
    /// Wait before reconnecting after the broker went silent.
    public var reconnectMs = 500
    public var maxMessageBytes = 256 << 20
    public var curve: CurveClientKeys?
    public var log: (@Sendable (String) -> Void)?

    public init(endpoint: String, name: String? = nil) {
        self.endpoint = endpoint
        self.name = name ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())"
    }
}

/// A thread-safe FIFO for jobs waiting for a job thread.
final class JobQueue: @unchecked Sendable {
    private let cond = NSCondition()
    private var items: [(Job, JobContext)] = []
    private var closed = false

    func push(_ item: (Job, JobContext)) { cond.lock(); items.append(item); cond.signal(); cond.unlock() }

    func pop() -> (Job, JobContext)? {
        cond.lock(); defer { cond.unlock() }
        while items.isEmpty && !closed { cond.wait() }
        return items.isEmpty ? nil : items.removeFirst()
    }

    func close() { cond.lock(); closed = true; cond.broadcast(); cond.unlock() }
}

/// The pool worker. `run` blocks until `stop` is set.
public final class PoolWorker: @unchecked Sendable {
    public let options: WorkerOptions
    let handlers: [String: JobHandler]
    let context: ZMQContext
    let inbox: String
    private(set) public var malformed = 0

    public init(options: WorkerOptions, handlers: [JobHandler], context: ZMQContext? = nil) throws {
        self.options = options
        self.handlers = Dictionary(handlers.map { ($0.op, $0) }, uniquingKeysWith: { a, _ in a })
        self.context = try context ?? ZMQContext()
        inbox = "inproc://autodir-worker-\(UUID().uuidString)"
    }

    func makeDealer() throws -> ZMQSocket {
        let s = try ZMQSocket(context, .dealer)
        try s.set(ZMQ_LINGER, 0)                 // a dead broker must not keep the worker from exiting
        try s.set(ZMQ_MAXMSGSIZE, int64: Int64(options.maxMessageBytes))
        try s.set(ZMQ_RECONNECT_IVL, 100)
        try s.set(ZMQ_RECONNECT_IVL_MAX, 2000)
        if let curve = options.curve { try curve.apply(to: s) }
        try s.connect(options.endpoint)
        return s
    }

    var readyMessage: [[UInt8]] {
        [Wire.encode(["v": Wire.version, "type": "ready", "ops": handlers.keys.sorted(), "capacity": options.capacity,
                      "name": options.name])]
    }

    public func run(stop: StopFlag) throws {
        let results = try ZMQSocket(context, .pull)
        try results.set(ZMQ_LINGER, 0)
        try results.bind(inbox)
        let queue = JobQueue()
        var threads: [Thread] = []
        let done = DispatchGroup()
        for i in 0..<max(1, options.capacity) {
            let push = try ZMQSocket(context, .push)
            try push.set(ZMQ_LINGER, 0)
            try push.connect(inbox)
            done.enter()
            let t = Thread { [self] in
                while let (job, ctx) = queue.pop() { runJob(job, ctx, push) }
                push.close()
                done.leave()
            }
            t.name = "autodir-job-\(i)"
            t.stackSize = 16 << 20
            threads.append(t)
        }
        threads.forEach { $0.start() }

        var active: [String: JobContext] = [:]
        var dealer = try makeDealer()
        try dealer.send(readyMessage, dontWait: true)
        var lastHeard = MonotonicClock.now(), lastSent = lastHeard
        let hb = UInt64(options.heartbeatMs)
        options.log?("worker \(options.name): connected to \(options.endpoint), serving \(handlers.keys.sorted())")
        while !stop.isSet {
            let ready = try ZMQ.poll([dealer, results], timeoutMs: 10)
            if ready[0] {
                while let m = try dealer.receive(timeoutMs: 0) {
                    lastHeard = MonotonicClock.now()
                    handleBroker(m, dealer: dealer, active: &active, queue: queue)
                }
            }
            if ready[1] {
                while let m = try results.receive(timeoutMs: 0) {
                    if let h = m.first.flatMap(Wire.decode), let type = h["type"] as? String, type != "progress", let id = h["id"] as? String {
                        active.removeValue(forKey: id)
                    }
                    if (try? dealer.send(m, dontWait: true)) == true { lastSent = MonotonicClock.now() }
                }
            }
            let now = MonotonicClock.now()
            if now >= lastSent + hb {
                _ = try? dealer.send([Wire.encode(["v": Wire.version, "type": "heartbeat", "active": active.count])], dontWait: true)
                lastSent = now
            }
            if now > lastHeard + hb * UInt64(options.liveness) {
                // The broker went silent (dead or restarted): a fresh socket and READY again. Running jobs go on;
                // their results go out on the new socket and the broker accepts them by request id.
                options.log?("worker \(options.name): broker silent for \(now - lastHeard) ms, reconnecting")
                dealer.close()
                usleep(UInt32(options.reconnectMs) * 1000)
                dealer = try makeDealer()
                try dealer.send(readyMessage, dontWait: true)
                lastHeard = MonotonicClock.now()
                lastSent = lastHeard
            }
        }
        _ = try? dealer.send([Wire.encode(["v": Wire.version, "type": "disconnect"])], dontWait: true)
        active.values.forEach { $0.cancel() }
        queue.close()
        done.wait()
        dealer.close()
        results.close()
    }

    /// One message from the broker; malformed ones are counted and dropped (the broker never sends them).
    func handleBroker(_ m: [[UInt8]], dealer: ZMQSocket, active: inout [String: JobContext], queue: JobQueue) {
        guard let first = m.first, m.last != ZMQSocket.overflowMarker, let h = Wire.decode(first),
              Wire.int(h["v"]) == Wire.version, let type = h["type"] as? String else {
            malformed += 1
            return
        }
        switch type {
        case "heartbeat":
            break
        case "reconnect":
            _ = try? dealer.send(readyMessage, dontWait: true)
        case "cancel":
            if let id = h["id"] as? String { active[id]?.cancel() }
        case "job":
            guard let id = h["id"] as? String, !id.isEmpty else { malformed += 1; return }
            func refuse(_ code: Wire.Code, _ message: String) {
                malformed += 1
                var e = Wire.error(code, message, id: id)
                e[0] = Wire.encode(["v": Wire.version, "type": "error", "id": id, "code": code.rawValue, "message": message])
                _ = try? dealer.send(e, dontWait: true)
            }
            guard active[id] == nil else { return }   // the same job twice (a broker retry racing its answer)
            guard let op = h["op"] as? String, handlers[op] != nil else { return refuse(.unknownOp, "worker does not serve \(h["op"] ?? "nil")") }
            let payload: Payload
            switch Payload.parse(h, frames: m.dropFirst()) {
            case .success(let p): payload = p
            case .failure(let e): return refuse(.badRequest, e.description)
            }
            let deadline = Wire.int(h["deadline_ms"]).map { MonotonicClock.now() + UInt64(max(0, $0)) }
            let job = Job(id: id, op: op, header: h, options: h["options"] as? [String: Any] ?? [:], payload: payload, data: Array(m.dropFirst()))
            let ctx = JobContext(deadline: deadline)
            active[id] = ctx
            queue.push((job, ctx))
        default:
            malformed += 1
        }
    }

    /// Runs on a job thread: the handler, then a result or error message to the I/O thread.
    func runJob(_ job: Job, _ ctx: JobContext, _ push: ZMQSocket) {
        var lastProgress: UInt64 = 0
        var lastStage: String?
        // The handler's context: cancelled with `ctx` (which the I/O thread holds), reports through this thread's socket.
        let handlerCtx = JobContext(deadline: ctx.deadline, parent: ctx) { done, total, message, fields in
            let now = MonotonicClock.now()
            let stage = fields["stage"] as? String
            // At most ~100 progress messages a second; the last step and a change of stage always go out.
            guard now >= lastProgress + 10 || done >= total || stage != lastStage else { return }
            lastProgress = now
            lastStage = stage
            var p: [String: Any] = fields
            p["v"] = Wire.version; p["type"] = "progress"; p["id"] = job.id; p["done"] = done; p["total"] = total
            if let message { p["message"] = message }
            _ = try? push.send([Wire.encode(p)])
        }
        let start = MonotonicClock.now()
        var frames: [[UInt8]]
        do {
            guard let handler = handlers[job.op] else { throw JobError(.unknownOp, job.op) }
            let r = try handler.run(job, context: handlerCtx)
            var h: [String: Any] = r.payload.headerFields
            for (k, v) in r.extra { h[k] = v }
            h["v"] = Wire.version; h["type"] = "result"; h["id"] = job.id
            h["compute_ms"] = Int(MonotonicClock.now() - start)
            frames = [Wire.encode(h)] + r.data
        } catch {
            let (code, message): (Wire.Code, String)
            switch error {
            case let e as JobError: (code, message) = (e.code, e.message)
            case EngineError.cancelled: (code, message) = ctx.deadlineExpired ? (.deadlineExceeded, "deadline passed") : (.cancelled, "cancelled")
            case let e as EngineError: (code, message) = (.invalidInput, e.description)
            default: (code, message) = (.internalError, "\(error)")
            }
            frames = [Wire.encode(["v": Wire.version, "type": "error", "id": job.id, "code": code.rawValue, "message": message])]
        }
        _ = try? push.send(frames)
    }
}
