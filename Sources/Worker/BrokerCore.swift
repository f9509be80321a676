// BrokerCore: the broker's state machine (queue, worker table, in-flight map, dedupe cache, heartbeat clocks)
// as plain Swift, no sockets: messages in, messages out, time from an injected clock (like swift-nio's
// EmbeddedChannel). `Broker` drives it from two ROUTER sockets; tests drive it directly.
import Foundation

/// Tunables of the broker (docs/PROTOCOL.md, "Timing").
public struct BrokerConfig: Sendable {
    /// Requests waiting for a worker beyond which new ones get `busy` at once.
    public var queueCapacity = 64
    /// Broker ⇄ worker heartbeat interval.
    public var heartbeatMs = 1000
    /// Missed heartbeat intervals after which a worker is dead (its jobs are re-queued).
    public var liveness = 3
    /// Dispatches of one request before it fails with `worker_lost`.
    public var maxAttempts = 3
    /// How long a finished reply stays in the de-duplication cache.
    public var resultTTLms = 60_000
    /// Bytes of cached replies kept at most (oldest evicted first).
    public var resultCacheBytes = 256 << 20
    /// Ops accepted before any worker announced them (so requests can wait for workers to (re)join).
    public var knownOps: Set<String> = ["echo", "sleep", "scm", "restore", "detect"]
    /// A queued request whose op no registered worker serves fails with `unavailable` after this long
    /// (long enough for workers to re-register after a broker restart; busy workers never trigger it).
    public var unservedTimeoutMs = 10_000
    /// Reported in status; enforced by the sockets (ZMQ_MAXMSGSIZE).
    public var maxMessageBytes = 256 << 20

    public init() {}
}

/// Where a message goes: a client or a worker, by ROUTER identity.
public enum Peer: Hashable, Sendable {
    case client([UInt8])
    case worker([UInt8])
}

/// One message the broker wants sent.
public struct Outgoing {
    public let to: Peer
    public let frames: [[UInt8]]
}

/// A monotonic millisecond clock.
public typealias Clock = () -> UInt64

public enum MonotonicClock {
    public static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds / 1_000_000 }
}

final class PendingRequest {
    let id: String
    let op: String
    let jobHeader: [String: Any]      // what the worker gets, less id/attempt/deadline
    let data: [[UInt8]]
    var client: [UInt8]
    var attempts = 0
    let receivedAt: UInt64
    let receivedAtNs = DispatchTime.now().uptimeNanoseconds   // latency metrics only (µs resolution)
    let deadlineAt: UInt64?
    var worker: [UInt8]?
    var lastClientBeat: UInt64

    init(id: String, op: String, jobHeader: [String: Any], data: [[UInt8]], client: [UInt8], now: UInt64, deadlineAt: UInt64?) {
        self.id = id; self.op = op; self.jobHeader = jobHeader; self.data = data; self.client = client
        receivedAt = now; self.deadlineAt = deadlineAt; lastClientBeat = now
    }
}

final class WorkerEntry {
    let identity: [UInt8]
    var name: String
    var ops: Set<String>
    var capacity: Int
    var active: Set<String> = []
    var lastSeen: UInt64
    var lastSent: UInt64
    var lastAssigned: UInt64 = 0
    var completed = 0

    init(identity: [UInt8], name: String, ops: Set<String>, capacity: Int, now: UInt64) {
        self.identity = identity; self.name = name; self.ops = ops; self.capacity = capacity
        lastSeen = now; lastSent = now
    }
}

/// The broker's protocol logic. Not thread-safe: one thread drives it.
public final class BrokerCore {
    public let config: BrokerConfig
    let clock: Clock
    var workers: [[UInt8]: WorkerEntry] = [:]
    var queue: [String] = []                      // ids waiting for a worker, FIFO
    var requests: [String: PendingRequest] = [:]  // queued or running
    var cache: [String: (frames: [[UInt8]], expiresAt: UInt64, bytes: Int)] = [:]
    var cacheOrder: [String] = []
    var cacheBytes = 0
    var latenciesUs: [Double] = []               // ring of recent successful request latencies
    var latencyCursor = 0
    public private(set) var counters: [String: Int] = [
        "completed": 0, "failed": 0, "rejected_busy": 0, "malformed": 0, "requeued": 0, "deduplicated": 0,
        "cache_hits": 0, "cancelled": 0, "deadline_exceeded": 0, "workers_lost": 0, "unavailable": 0,
    ]

    public init(config: BrokerConfig = BrokerConfig(), clock: @escaping Clock = MonotonicClock.now) {
        self.config = config
        self.clock = clock
    }

    public var queueDepth: Int { queue.count }
    public var inFlight: Int { requests.count - queue.count }
    public var workerCount: Int { workers.count }

    // MARK: - Clients

    /// A message from a client (ROUTER identity + frames after it).
    public func handleClient(identity: [UInt8], frames: [[UInt8]]) -> [Outgoing] {
        let now = clock()
        func reply(_ f: [[UInt8]]) -> [Outgoing] { [Outgoing(to: .client(identity), frames: f)] }
        func bad(_ code: Wire.Code, _ m: String, id: String? = nil) -> [Outgoing] {
            counters["malformed", default: 0] += 1
            return reply(Wire.error(code, m, id: id))
        }
        guard let first = frames.first, frames.last != ZMQSocket.overflowMarker else {
            return bad(.badRequest, frames.isEmpty ? "empty message" : "more than \(ZMQSocket.maxFrames) frames")
        }
        guard let h = Wire.decode(first) else { return bad(.badRequest, "the first frame must be a JSON object header") }
        let id = h["id"] as? String
        guard let v = Wire.int(h["v"]) else { return bad(.badRequest, "header needs \"v\": \(Wire.version)", id: id) }
        guard v == Wire.version else {
            return bad(.unsupportedVersion, "protocol version \(v) is not supported (this broker speaks \(Wire.version))", id: id)
        }
        let type = h["type"] as? String ?? "request"
        switch type {
        case "status":
            return reply([Wire.encode(status(now: now))])
        case "ping":
            return reply([Wire.encode(["v": Wire.version, "type": "pong"])])
        case "cancel":
            guard let id, !id.isEmpty else { return bad(.badRequest, "cancel needs an \"id\"") }
            return cancel(id: id, from: identity)
        case "request":
            break
        default:
            return bad(.badRequest, "unknown message type \"\(type)\"", id: id)
        }
        guard let id, !id.isEmpty, id.utf8.count <= 128 else { return bad(.badRequest, "request needs an \"id\" string (1…128 bytes)") }
        guard let op = h["op"] as? String else { return bad(.badRequest, "request needs an \"op\"", id: id) }
        guard config.knownOps.contains(op) || workers.values.contains(where: { $0.ops.contains(op) }) else {
            return bad(.unknownOp, "unknown op \"\(op)\"", id: id)
        }
        let payload: Payload
        switch Payload.parse(h, frames: frames.dropFirst()) {
        case .success(let p): payload = p
        case .failure(let e): return bad(.badRequest, e.description, id: id)
        }
        if h["options"] != nil && !(h["options"] is [String: Any]) { return bad(.badRequest, "\"options\" must be an object", id: id) }
        var deadlineAt: UInt64?
        if let d = h["deadline_ms"] {
            guard let ms = Wire.double(d), ms >= 0, ms <= 86_400_000 else {
                return bad(.badRequest, "\"deadline_ms\" must be a number of milliseconds in 0…86400000", id: id)
            }
            if ms > 0 { deadlineAt = now + UInt64(ms) }
        }
        // De-duplication: a retry of a running request just re-routes its reply; a finished one is answered from cache.
        if let pending = requests[id] {
            pending.client = identity
            counters["deduplicated", default: 0] += 1
            return []
        }
        if let cached = cache[id], cached.expiresAt > now {
            counters["cache_hits", default: 0] += 1
            return reply(cached.frames)
        }
        guard queue.count < config.queueCapacity else {
            counters["rejected_busy", default: 0] += 1
            return reply(Wire.error(.busy, "queue full (\(config.queueCapacity) waiting); retry later", id: id))
        }
        var job: [String: Any] = payload.headerFields
        job["op"] = op
        job["options"] = h["options"] as? [String: Any] ?? [:]
        let r = PendingRequest(id: id, op: op, jobHeader: job, data: Array(frames.dropFirst()), client: identity, now: now, deadlineAt: deadlineAt)
        requests[id] = r
        queue.append(id)
        return dispatch(now: now)
    }

    func cancel(id: String, from identity: [UInt8]) -> [Outgoing] {
        var out: [Outgoing] = []
        let found = requests[id] != nil
        if found { out += finish(id: id, frames: Wire.error(.cancelled, "cancelled by client", id: id), success: false, counter: "cancelled") }
        out.append(Outgoing(to: .client(identity), frames: [Wire.encode(["v": Wire.version, "type": "cancel_ack", "id": id, "found": found])]))
        return out
    }

    // MARK: - Workers

    /// A message from a worker (ROUTER identity + frames after it).
    public func handleWorker(identity: [UInt8], frames: [[UInt8]]) -> [Outgoing] {
        let now = clock()
        let known = workers[identity]
        known?.lastSeen = now
        guard let first = frames.first, frames.last != ZMQSocket.overflowMarker, let h = Wire.decode(first),
              Wire.int(h["v"]) == Wire.version, let type = h["type"] as? String else {
            counters["malformed", default: 0] += 1
            return []
        }
        switch type {
        case "ready":
            let ops = (h["ops"] as? [Any])?.compactMap { $0 as? String } ?? []
            let capacity = min(max(Wire.int(h["capacity"]) ?? 1, 1), 256)
            let name = (h["name"] as? String).map { String($0.prefix(128)) } ?? "worker"
            guard !ops.isEmpty else { counters["malformed", default: 0] += 1; return [] }
            if let w = known {
                w.ops = Set(ops); w.capacity = capacity; w.name = name
            } else {
                workers[identity] = WorkerEntry(identity: identity, name: name, ops: Set(ops), capacity: capacity, now: now)
            }
            return dispatch(now: now)
        case "heartbeat":
            return known == nil ? [reconnect(identity)] : []
        case "disconnect":
            return known == nil ? [] : removeWorker(identity, now: now)
        case "progress":
            guard known != nil else { return [reconnect(identity)] }
            guard let id = h["id"] as? String, let r = requests[id], r.worker == identity else { return [] }
            var p: [String: Any] = ["v": Wire.version, "type": "progress", "id": id]
            if let d = Wire.int(h["done"]) { p["done"] = d }
            if let t = Wire.int(h["total"]) { p["total"] = t }
            if let m = h["message"] as? String { p["message"] = String(m.prefix(256)) }
            // restore's progress fields (docs/PROTOCOL.md); anything else a worker adds is dropped.
            for k in ["pass", "max_passes", "step", "steps"] { if let v = Wire.int(h[k]) { p[k] = v } }
            for k in ["stage", "artifact"] { if let v = h[k] as? String { p[k] = String(v.prefix(256)) } }
            r.lastClientBeat = now
            return [Outgoing(to: .client(r.client), frames: [Wire.encode(p)])]
        case "result", "error":
            guard let id = h["id"] as? String else { counters["malformed", default: 0] += 1; return [] }
            known?.active.remove(id)
            var out: [Outgoing] = known == nil ? [reconnect(identity)] : []
            // First answer wins, from whichever worker (even one that lost its registration in a broker restart).
            if let r = requests[id] {
                if let other = r.worker, other != identity, workers[other] != nil {
                    out.append(Outgoing(to: .worker(other), frames: [Wire.encode(["v": Wire.version, "type": "cancel", "id": id])]))
                }
                var reply = h
                reply["v"] = Wire.version
                reply["id"] = id
                reply["attempts"] = r.attempts
                reply["worker"] = known?.name
                var frames = [Wire.encode(reply)] + frames.dropFirst()
                var success = type == "result"
                if success, case .failure(let e) = Payload.parse(h, frames: frames.dropFirst()) {
                    frames = Wire.error(.internalError, "worker sent a malformed result: \(e)", id: id)
                    success = false
                } else if !success {
                    let code = Wire.Code(rawValue: h["code"] as? String ?? "") ?? .internalError
                    let message = h["message"] as? String ?? "worker error"
                    frames = [Wire.encode(["v": Wire.version, "type": "error", "id": id, "code": code.rawValue,
                                           "message": String(message.prefix(1024)), "worker": known?.name ?? "?"])]
                }
                if success { known?.completed += 1 }
                out += finish(id: id, frames: frames, success: success, counter: success ? "completed" : "failed")
            }
            return out + dispatch(now: now)
        default:
            counters["malformed", default: 0] += 1
            return []
        }
    }

    /// The socket layer could not deliver to this worker (ROUTER_MANDATORY: EHOSTUNREACH): treat it as dead.
    public func workerUnreachable(identity: [UInt8]) -> [Outgoing] {
        workers[identity] == nil ? [] : removeWorker(identity, now: clock())
    }

    func reconnect(_ identity: [UInt8]) -> Outgoing {
        Outgoing(to: .worker(identity), frames: [Wire.encode(["v": Wire.version, "type": "reconnect"])])
    }

    /// Forgets a worker; its running requests go back to the front of the queue, or fail after `maxAttempts`.
    func removeWorker(_ identity: [UInt8], now: UInt64) -> [Outgoing] {
        guard let w = workers.removeValue(forKey: identity) else { return [] }
        counters["workers_lost", default: 0] += 1
        var out: [Outgoing] = []
        for id in w.active.sorted() {
            guard let r = requests[id], r.worker == identity else { continue }
            r.worker = nil
            if r.attempts >= config.maxAttempts {
                out += finish(id: id, frames: Wire.error(.workerLost, "the workers running this request died \(r.attempts) times", id: id),
                              success: false, counter: "failed")
            } else {
                queue.insert(id, at: 0)
                counters["requeued", default: 0] += 1
            }
        }
        return out + dispatch(now: now)
    }

    // MARK: - Dispatch, completion, time

    /// Hands queued requests to idle workers that serve their op (least loaded, then least recently used).
    func dispatch(now: UInt64) -> [Outgoing] {
        var out: [Outgoing] = []
        var i = 0
        while i < queue.count {
            guard let r = requests[queue[i]] else { queue.remove(at: i); continue }
            let candidates = workers.values.filter { $0.ops.contains(r.op) && $0.active.count < $0.capacity }
            guard let w = candidates.min(by: { ($0.active.count, $0.lastAssigned) < ($1.active.count, $1.lastAssigned) }) else {
                i += 1
                continue
            }
            queue.remove(at: i)
            r.worker = w.identity
            r.attempts += 1
            w.active.insert(r.id)
            w.lastAssigned = now
            w.lastSent = now
            var job = r.jobHeader
            job["v"] = Wire.version
            job["type"] = "job"
            job["id"] = r.id
            job["attempt"] = r.attempts
            if let d = r.deadlineAt { job["deadline_ms"] = d > now ? Int(d - now) : 0 }
            out.append(Outgoing(to: .worker(w.identity), frames: [Wire.encode(job)] + r.data))
        }
        return out
    }

    /// Ends a request: reply to its client, cache the reply, tell its worker to stop if it still runs.
    func finish(id: String, frames: [[UInt8]], success: Bool, counter: String) -> [Outgoing] {
        guard let r = requests.removeValue(forKey: id) else { return [] }
        let now = clock()
        var out = [Outgoing(to: .client(r.client), frames: frames)]
        if let w = r.worker, let entry = workers[w], entry.active.contains(id), counter != "completed", counter != "failed" {
            out.append(Outgoing(to: .worker(w), frames: [Wire.encode(["v": Wire.version, "type": "cancel", "id": id])]))
            entry.lastSent = now
        }
        if let q = queue.firstIndex(of: id) { queue.remove(at: q) }
        counters[counter, default: 0] += 1
        if counter != "completed" && counter != "failed" { counters["failed", default: 0] += 1 }
        if success {
            let us = Double(DispatchTime.now().uptimeNanoseconds - r.receivedAtNs) / 1000
            if latenciesUs.count < 4096 { latenciesUs.append(us) } else { latenciesUs[latencyCursor] = us; latencyCursor = (latencyCursor + 1) % 4096 }
        }
        remember(id: id, frames: frames, now: now)
        return out
    }

    func remember(id: String, frames: [[UInt8]], now: UInt64) {
        let bytes = frames.reduce(0) { $0 + $1.count }
        guard bytes <= config.resultCacheBytes, config.resultTTLms > 0 else { return }
        if let old = cache[id] { cacheBytes -= old.bytes; cacheOrder.removeAll { $0 == id } }
        cache[id] = (frames, now + UInt64(config.resultTTLms), bytes)
        cacheOrder.append(id)
        cacheBytes += bytes
        evict(now: now)
    }

    func evict(now: UInt64) {
        while let first = cacheOrder.first, let e = cache[first], e.expiresAt <= now || cacheBytes > config.resultCacheBytes {
            cacheOrder.removeFirst()
            cache.removeValue(forKey: first)
            cacheBytes -= e.bytes
        }
    }

    /// Time passes: dead workers, heartbeats to workers and to waiting clients, deadlines, cache expiry.
    public func tick() -> [Outgoing] {
        let now = clock()
        var out: [Outgoing] = []
        let hb = UInt64(config.heartbeatMs)
        let dead = workers.values.filter { now > $0.lastSeen + hb * UInt64(config.liveness) }.map(\.identity)
        for id in dead { out += removeWorker(id, now: now) }
        for w in workers.values where now >= w.lastSent + hb {
            w.lastSent = now
            out.append(Outgoing(to: .worker(w.identity), frames: [Wire.encode(["v": Wire.version, "type": "heartbeat"])]))
        }
        for r in requests.values.sorted(by: { $0.receivedAt < $1.receivedAt }) {
            if let d = r.deadlineAt, now >= d {
                out += finish(id: r.id, frames: Wire.error(.deadlineExceeded, "deadline passed after \(now - r.receivedAt) ms", id: r.id),
                              success: false, counter: "deadline_exceeded")
            } else if r.worker == nil, now >= r.receivedAt + UInt64(config.unservedTimeoutMs),
                      !workers.values.contains(where: { $0.ops.contains(r.op) }) {
                out += finish(id: r.id, frames: Wire.error(.unavailable, "no worker serving op \"\(r.op)\" joined within \(config.unservedTimeoutMs) ms", id: r.id),
                              success: false, counter: "unavailable")
            } else if now >= r.lastClientBeat + hb {
                r.lastClientBeat = now
                let state = r.worker == nil ? "queued" : "running"
                out.append(Outgoing(to: .client(r.client), frames: [Wire.encode(["v": Wire.version, "type": "heartbeat", "id": r.id, "state": state])]))
            }
        }
        evict(now: now)
        return out + dispatch(now: now)
    }

    // MARK: - Status

    /// Metrics, named after Triton's where one exists (`nv_inference_*` → `autodir_inference_*`).
    public func status(now: UInt64) -> [String: Any] {
        let sorted = latenciesUs.sorted()
        func q(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(p * Double(sorted.count)))] }
        let ws: [[String: Any]] = workers.values.sorted { $0.name < $1.name }.map {
            ["name": $0.name, "ops": $0.ops.sorted(), "capacity": $0.capacity, "active": $0.active.count,
             "completed": $0.completed, "last_seen_ms": Int(now - $0.lastSeen)]
        }
        var s: [String: Any] = [
            "v": Wire.version, "type": "status",
            "workers": ws, "worker_count": workers.count,
            "queue_depth": queue.count, "queue_capacity": config.queueCapacity, "in_flight": inFlight,
            "latency_us": ["p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "count": sorted.count],
            "heartbeat_ms": config.heartbeatMs, "max_message_bytes": config.maxMessageBytes,
            "cached_results": cache.count,
            "autodir_inference_request_success": counters["completed"] ?? 0,
            "autodir_inference_request_failure": counters["failed"] ?? 0,
            "autodir_inference_pending_request_count": queue.count,
            "autodir_inference_exec_count": inFlight,
            "autodir_inference_request_summary_us": ["quantile_0.5": q(0.5), "quantile_0.9": q(0.9), "quantile_0.99": q(0.99)],
        ]
        for (k, v) in counters { s[k] = v }
        return s
    }
}
