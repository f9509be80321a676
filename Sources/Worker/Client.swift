// PoolClient: a Swift client of the broker (Lazy Pirate: retry on silence with the same request id).
import CZmq
import Foundation

/// An error reply from the pool, or a timeout.
public struct PoolError: Error, CustomStringConvertible {
    /// A `Wire.Code` raw value, or "timeout".
    public let code: String
    public let message: String
    public var description: String { "\(code): \(message)" }
}

/// A reply: its header and data frames.
public struct PoolReply: @unchecked Sendable {
    public let header: [String: Any]
    public let data: [[UInt8]]
}

/// A client of one broker. Not thread-safe: one per thread.
public final class PoolClient {
    public let endpoint: String
    /// Silence (no reply, progress or heartbeat) after which the request is sent again, same id.
    public var timeoutMs: Int
    /// Re-sends after a silence before giving up with "timeout".
    public var retries: Int
    let curve: CurveClientKeys?
    let context: ZMQContext
    var socket: ZMQSocket?

    public init(endpoint: String, timeoutMs: Int = 5000, retries: Int = 3, curve: CurveClientKeys? = nil, context: ZMQContext? = nil) throws {
        self.endpoint = endpoint
        self.timeoutMs = timeoutMs
        self.retries = retries
        self.curve = curve
        self.context = try context ?? ZMQContext()
    }

    deinit { socket?.close() }

    func connected() throws -> ZMQSocket {
        if let s = socket { return s }
        let s = try ZMQSocket(context, .dealer)
        try s.set(ZMQ_LINGER, 0)            // a request to a dead broker must not block close or exit
        if let curve { try curve.apply(to: s) }
        try s.connect(endpoint)
        socket = s
        return s
    }

    /// Drops the socket (Lazy Pirate): a reconnect gets a fresh identity and no stale queued messages.
    public func reset() { socket?.close(); socket = nil }

    /// Sends a request and waits for its final reply; `progress` sees (done, total) from PARTIAL messages.
    /// Throws `PoolError` for an error reply or after `retries` silent timeouts.
    public func call(op: String, payload: Payload = Payload(dtype: .none), data: [[UInt8]] = [], options: [String: Any] = [:],
                     deadlineMs: Int? = nil, id: String = UUID().uuidString,
                     progress: ((Int, Int) -> Void)? = nil) throws -> PoolReply {
        var h = payload.headerFields
        h["v"] = Wire.version; h["type"] = "request"; h["id"] = id; h["op"] = op; h["options"] = options
        if let deadlineMs { h["deadline_ms"] = deadlineMs }
        return try exchange([Wire.encode(h)] + data, id: id, progress: progress)
    }

    /// Sends raw frames and waits for the final reply to `id` (result, error, status, cancel_ack, pong).
    public func exchange(_ frames: [[UInt8]], id: String?, progress: ((Int, Int) -> Void)? = nil) throws -> PoolReply {
        for attempt in 0...max(0, retries) {
            if attempt > 0 { reset() }
            let s = try connected()
            guard try s.send(frames, dontWait: true) || s.send(frames) else { continue }
            while let m = try s.receive(timeoutMs: timeoutMs) {
                guard let h = m.first.flatMap(Wire.decode) else { continue }
                if let rid = h["id"] as? String, rid != id { continue }   // a stale reply to another request
                switch h["type"] as? String ?? "" {
                case "heartbeat":
                    continue
                case "progress":
                    progress?(Wire.int(h["done"]) ?? 0, Wire.int(h["total"]) ?? 0)
                    continue
                case "error":
                    throw PoolError(code: h["code"] as? String ?? "internal", message: h["message"] as? String ?? "")
                default:
                    if id != nil && h["id"] == nil { continue }
                    return PoolReply(header: h, data: Array(m.dropFirst()))
                }
            }
        }
        reset()
        throw PoolError(code: "timeout", message: "no reply from \(endpoint) after \(retries + 1) tries of \(timeoutMs) ms")
    }

    /// The broker's status object.
    public func status() throws -> [String: Any] {
        try exchange([Wire.encode(["v": Wire.version, "type": "status"])], id: nil).header
    }

    /// Asks the broker to cancel request `id`; returns whether it was still pending. The request itself
    /// is answered with a `cancelled` error on the socket that sent it.
    @discardableResult
    public func cancel(id: String) throws -> Bool {
        let s = try connected()
        try s.send([Wire.encode(["v": Wire.version, "type": "cancel", "id": id])])
        while let m = try s.receive(timeoutMs: timeoutMs) {
            guard let h = m.first.flatMap(Wire.decode) else { continue }
            if h["type"] as? String == "cancel_ack" { return h["found"] as? Bool ?? false }
        }
        throw PoolError(code: "timeout", message: "no cancel_ack from \(endpoint)")
    }

    /// Sends a request without waiting (for cancel tests and pipelining); read replies with `next`.
    public func send(op: String, payload: Payload = Payload(dtype: .none), data: [[UInt8]] = [], options: [String: Any] = [:],
                     deadlineMs: Int? = nil, id: String) throws {
        var h = payload.headerFields
        h["v"] = Wire.version; h["type"] = "request"; h["id"] = id; h["op"] = op; h["options"] = options
        if let deadlineMs { h["deadline_ms"] = deadlineMs }
        try connected().send([Wire.encode(h)] + data)
    }

    /// The next message on the socket (any type), or nil after `timeoutMs`.
    public func next(timeoutMs: Int) throws -> PoolReply? {
        guard let m = try connected().receive(timeoutMs: timeoutMs), let h = m.first.flatMap(Wire.decode) else { return nil }
        return PoolReply(header: h, data: Array(m.dropFirst()))
    }
}
