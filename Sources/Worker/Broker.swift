// Broker: drives BrokerCore from two ROUTER sockets (clients, workers), plus the ZAP thread when CURVE is on.
import CZmq
import Foundation

/// Where and how a broker listens.
public struct BrokerOptions: Sendable {
    public var clientEndpoints: [String]
    public var workerEndpoints: [String]
    public var core = BrokerConfig()
    public var curve: CurveServerKeys?
    /// Per-socket high-water marks: beyond this many queued messages to one peer, sends fail at once (never block).
    public var highWaterMark: Int32 = 1000
    public var log: (@Sendable (String) -> Void)?

    public init(clients: [String], workers: [String]) {
        clientEndpoints = clients
        workerEndpoints = workers
    }
}

/// The ZeroMQ broker: clients and workers connect to it; it never blocks on a peer and never dies on input.
public final class Broker: @unchecked Sendable {
    public let options: BrokerOptions
    let context: ZMQContext
    let clients: ZMQSocket
    let workers: ZMQSocket
    let zap: ZAPHandler?
    public let core: BrokerCore

    /// Binds every endpoint (throws on a taken port or bad endpoint).
    public init(options: BrokerOptions, context: ZMQContext? = nil) throws {
        self.options = options
        let ctx = try context ?? ZMQContext()
        self.context = ctx
        core = BrokerCore(config: options.core)
        // The ZAP handler must be bound before any CURVE socket accepts a handshake.
        zap = try options.curve.map { try ZAPHandler(context: ctx, keys: $0) }
        clients = try ZMQSocket(ctx, .router)
        workers = try ZMQSocket(ctx, .router)
        for (s, domain) in [(clients, "clients"), (workers, "workers")] {
            // LINGER 0: on shutdown, replies to peers that are gone must not hold the process for ever.
            try s.set(ZMQ_LINGER, 0)
            // ROUTER_MANDATORY: a send to a vanished peer fails with EHOSTUNREACH instead of being dropped
            // silently, so a job handed to a dead worker is re-queued at once rather than lost.
            try s.set(ZMQ_ROUTER_MANDATORY, 1)
            // MAXMSGSIZE: a peer sending a larger frame is disconnected before the broker buffers it, so one
            // client cannot exhaust the broker's memory; the limit covers a 4K float32 image with room to spare.
            try s.set(ZMQ_MAXMSGSIZE, int64: Int64(options.core.maxMessageBytes))
            try s.set(ZMQ_SNDHWM, options.highWaterMark)
            try s.set(ZMQ_RCVHWM, options.highWaterMark)
            if let curve = options.curve { try curve.apply(to: s, domain: domain) }
        }
        for e in options.clientEndpoints { try clients.bind(e) }
        for e in options.workerEndpoints { try workers.bind(e) }
    }

    /// Serves until `stop` is set; closes the sockets on return.
    public func run(stop: StopFlag) {
        var zapThread: Thread?
        let zapStop = StopFlag()
        if let zap {
            let t = Thread { zap.run(stop: zapStop) }
            t.name = "autodir-zap"
            t.start()
            zapThread = t
        }
        var lastTick: UInt64 = 0
        while !stop.isSet {
            let ready: [Bool]
            do { ready = try ZMQ.poll([clients, workers], timeoutMs: 10) } catch {
                options.log?("broker: poll failed: \(error)")
                break
            }
            // Drain a bounded batch per socket so neither side starves the other.
            if ready[0] {
                for _ in 0..<256 {
                    guard let m = try? clients.receive(timeoutMs: 0), let id = m.first else { break }
                    deliver(core.handleClient(identity: id, frames: Array(m.dropFirst())))
                }
            }
            if ready[1] {
                for _ in 0..<256 {
                    guard let m = try? workers.receive(timeoutMs: 0), let id = m.first else { break }
                    deliver(core.handleWorker(identity: id, frames: Array(m.dropFirst())))
                }
            }
            let now = MonotonicClock.now()
            if now >= lastTick + 10 {
                lastTick = now
                deliver(core.tick())
            }
        }
        clients.close()
        workers.close()
        zapStop.set()
        while zapThread != nil && !(zapThread?.isFinished ?? true) { usleep(1000) }
    }

    /// Sends without ever blocking; a worker that cannot be reached is reported back to the core.
    func deliver(_ out: [Outgoing]) {
        var pending = out[...]
        while let o = pending.popFirst() {
            switch o.to {
            case .client(let id):
                // A gone or slow client loses this copy only; the reply stays in the result cache for its retry.
                _ = try? clients.send([id] + o.frames, dontWait: true)
            case .worker(let id):
                let ok = (try? workers.send([id] + o.frames, dontWait: true)) ?? false
                if !ok { pending.append(contentsOf: core.workerUnreachable(identity: id)) }
            }
        }
    }
}
