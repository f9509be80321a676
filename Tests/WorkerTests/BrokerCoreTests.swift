// BrokerCore without sockets: a manual clock, messages in, messages out (like swift-nio's EmbeddedChannel).
import XCTest
@testable import Worker

final class ManualClock: @unchecked Sendable {
    var ms: UInt64 = 1_000
    func advance(_ d: UInt64) { ms += d }
}

final class BrokerCoreTests: XCTestCase {
    let clock = ManualClock()
    let c1: [UInt8] = [0, 1], c2: [UInt8] = [0, 2], w1: [UInt8] = [9, 1], w2: [UInt8] = [9, 2]

    func core(_ tweak: (inout BrokerConfig) -> Void = { _ in }) -> BrokerCore {
        var config = BrokerConfig()
        config.heartbeatMs = 100
        config.liveness = 3
        tweak(&config)
        return BrokerCore(config: config, clock: { [clock] in clock.ms })
    }

    func header(_ out: Outgoing) -> [String: Any] { Wire.decode(out.frames[0]) ?? [:] }
    func types(_ out: [Outgoing]) -> [String] { out.map { header($0)["type"] as? String ?? "?" } }

    func ready(_ b: BrokerCore, _ w: [UInt8], ops: [String] = ["echo", "sleep"], capacity: Int = 1) -> [Outgoing] {
        b.handleWorker(identity: w, frames: [Wire.encode(["v": 1, "type": "ready", "ops": ops, "capacity": capacity, "name": "w\(w[1])"])])
    }

    func request(_ b: BrokerCore, _ c: [UInt8], id: String, op: String = "echo", deadline: Int? = nil, values: [Float] = [1, 2, 3]) -> [Outgoing] {
        var h: [String: Any] = ["v": 1, "type": "request", "id": id, "op": op, "dtype": "float32", "shape": [values.count]]
        if let deadline { h["deadline_ms"] = deadline }
        return b.handleClient(identity: c, frames: [Wire.encode(h), FloatBytes.bytes(values)])
    }

    func result(_ b: BrokerCore, _ w: [UInt8], id: String, values: [Float] = [1, 2, 3]) -> [Outgoing] {
        b.handleWorker(identity: w, frames: [Wire.encode(["v": 1, "type": "result", "id": id, "dtype": "float32", "shape": [values.count]]),
                                             FloatBytes.bytes(values)])
    }

    func testDispatchResultAndDedupe() {
        let b = core()
        XCTAssertTrue(ready(b, w1).isEmpty)
        let out = request(b, c1, id: "a")
        XCTAssertEqual(out.count, 1)
        XCTAssertEqual(out[0].to, .worker(w1))
        XCTAssertEqual(header(out[0])["type"] as? String, "job")
        XCTAssertEqual(header(out[0])["attempt"] as? Int, 1)
        XCTAssertEqual(out[0].frames[1], FloatBytes.bytes([1, 2, 3]))
        // A retry while in flight never runs twice; the reply goes to the newest sender.
        XCTAssertTrue(request(b, c2, id: "a").isEmpty)
        let done = result(b, w1, id: "a")
        XCTAssertEqual(done.count, 1)
        XCTAssertEqual(done[0].to, .client(c2))
        XCTAssertEqual(header(done[0])["type"] as? String, "result")
        XCTAssertEqual(done[0].frames[1], FloatBytes.bytes([1, 2, 3]))
        // A retry after completion is answered from the cache, without a worker.
        let again = request(b, c1, id: "a")
        XCTAssertEqual(again.count, 1)
        XCTAssertEqual(again[0].to, .client(c1))
        XCTAssertEqual(again[0].frames, done[0].frames)
        XCTAssertEqual(b.counters["completed"], 1)
        XCTAssertEqual(b.counters["deduplicated"], 1)
        XCTAssertEqual(b.counters["cache_hits"], 1)
        // The cache expires.
        clock.advance(UInt64(b.config.resultTTLms) + 1)
        _ = b.tick()                           // w1 went silent meanwhile and is gone; it registers again
        _ = ready(b, w1)
        XCTAssertEqual(request(b, c1, id: "a").first?.to, .worker(w1))
    }

    func testDeadWorkerRequeuesThenBoundedAttempts() {
        let b = core { $0.maxAttempts = 2 }
        _ = ready(b, w1)
        _ = request(b, c1, id: "a")
        _ = ready(b, w2)                       // w2 joins while w1 runs "a"
        // w2 keeps heartbeating; w1 goes silent past 3 × 100 ms.
        for _ in 0..<4 {
            clock.advance(100)
            _ = b.handleWorker(identity: w2, frames: [Wire.encode(["v": 1, "type": "heartbeat"])])
            let out = b.tick()
            if let job = out.first(where: { types([$0]) == ["job"] }) {
                XCTAssertEqual(job.to, .worker(w2))
                XCTAssertEqual(header(job)["attempt"] as? Int, 2)
            }
        }
        XCTAssertEqual(b.workerCount, 1)
        XCTAssertEqual(b.counters["requeued"], 1)
        XCTAssertEqual(b.inFlight, 1)
        // w2 dies too: attempts (2) are used up → worker_lost to the client.
        clock.advance(400)
        let out = b.tick()
        let err = out.first { $0.to == .client(c1) && types([$0]) == ["error"] }
        XCTAssertEqual(err.map { header($0)["code"] as? String }, "worker_lost")
        XCTAssertEqual(b.inFlight, 0)
        XCTAssertEqual(b.queueDepth, 0)
    }

    func testBusyWhenQueueFull() {
        let b = core { $0.queueCapacity = 2 }
        XCTAssertTrue(request(b, c1, id: "1").isEmpty)   // no worker yet: queued
        XCTAssertTrue(request(b, c1, id: "2").isEmpty)
        let out = request(b, c1, id: "3")
        XCTAssertEqual(types(out), ["error"])
        XCTAssertEqual(header(out[0])["code"] as? String, "busy")
        // A worker joining drains the queue in order.
        let jobs = ready(b, w1, capacity: 2)
        XCTAssertEqual(jobs.map { header($0)["id"] as? String }, ["1", "2"])
        // busy replies are not cached: the retry gets in once there is room.
        XCTAssertTrue(request(b, c1, id: "3").isEmpty)
        XCTAssertEqual(b.queueDepth, 1)
    }

    func testDeadlinesAndCancel() {
        let b = core()
        _ = request(b, c1, id: "queued", deadline: 50)
        clock.advance(60)
        let expired = b.tick()
        XCTAssertEqual(expired.first.map { header($0)["code"] as? String }, "deadline_exceeded")
        _ = ready(b, w1)
        _ = request(b, c1, id: "running", op: "sleep", deadline: 1000)
        // Cancel of a running request: the worker is told to stop, the client gets "cancelled" and an ack.
        let out = b.handleClient(identity: c2, frames: [Wire.encode(["v": 1, "type": "cancel", "id": "running"])])
        XCTAssertEqual(Set(types(out)), ["error", "cancel", "cancel_ack"])
        XCTAssertEqual(out.first { $0.to == .client(c1) }.map { header($0)["code"] as? String }, "cancelled")
        XCTAssertEqual(out.first { $0.to == .worker(w1) }.map { header($0)["type"] as? String }, "cancel")
        // The worker's late "cancelled" error frees its slot without another reply.
        let late = b.handleWorker(identity: w1, frames: [Wire.encode(["v": 1, "type": "error", "id": "running", "code": "cancelled", "message": "x"])])
        XCTAssertTrue(late.isEmpty)
        XCTAssertEqual(request(b, c1, id: "next").first?.to, .worker(w1))
    }

    func testUnservedOpFailsAfterGraceButBusyWorkersDoNot() {
        let b = core { $0.unservedTimeoutMs = 500 }
        _ = ready(b, w1, ops: ["echo"])
        _ = request(b, c1, id: "e1")                       // runs on w1
        _ = request(b, c1, id: "e2")                       // waits for the busy w1: fine
        _ = request(b, c1, id: "s1", op: "scm")            // nobody serves scm
        for _ in 0..<6 {
            clock.advance(100)
            _ = b.handleWorker(identity: w1, frames: [Wire.encode(["v": 1, "type": "heartbeat"])])
            let out = b.tick()
            if let e = out.first(where: { types([$0]) == ["error"] }) {
                XCTAssertEqual(header(e)["id"] as? String, "s1")
                XCTAssertEqual(header(e)["code"] as? String, "unavailable")
            }
        }
        XCTAssertEqual(b.counters["unavailable"], 1)
        XCTAssertEqual(b.queueDepth, 1, "e2 still waits for w1")
    }

    func testProgressAndHeartbeats() {
        let b = core()
        _ = ready(b, w1)
        _ = request(b, c1, id: "a", op: "sleep")
        let p = b.handleWorker(identity: w1, frames: [Wire.encode(["v": 1, "type": "progress", "id": "a", "done": 2, "total": 5])])
        XCTAssertEqual(p.first?.to, .client(c1))
        XCTAssertEqual(p.first.map { header($0)["done"] as? Int }, 2)
        clock.advance(100)
        _ = b.handleWorker(identity: w1, frames: [Wire.encode(["v": 1, "type": "heartbeat"])])
        let beats = b.tick()
        XCTAssertTrue(beats.contains { $0.to == .worker(w1) && types([$0]) == ["heartbeat"] })
        XCTAssertTrue(beats.contains { $0.to == .client(c1) && types([$0]) == ["heartbeat"] })
        // An unknown worker's heartbeat (e.g. after a broker restart) is asked to register again.
        let r = b.handleWorker(identity: w2, frames: [Wire.encode(["v": 1, "type": "heartbeat"])])
        XCTAssertEqual(types(r), ["reconnect"])
    }

    func testMalformedClientMessagesGetErrors() {
        let b = core()
        func code(_ frames: [[UInt8]]) -> String? {
            let out = b.handleClient(identity: c1, frames: frames)
            XCTAssertEqual(out.count, 1)
            return out.first.flatMap { header($0)["code"] as? String }
        }
        let good: [String: Any] = ["v": 1, "id": "x", "op": "echo", "dtype": "float32", "shape": [2, 2]]
        func with(_ k: String, _ v: Any?) -> [UInt8] { var h = good; h[k] = v; return Wire.encode(h) }
        XCTAssertEqual(code([]), "bad_request")
        XCTAssertEqual(code([Array("not json".utf8)]), "bad_request")
        XCTAssertEqual(code([Array("[1,2]".utf8)]), "bad_request")
        XCTAssertEqual(code([with("v", 2), [UInt8](repeating: 0, count: 16)]), "unsupported_version")
        XCTAssertEqual(code([with("v", nil), [UInt8](repeating: 0, count: 16)]), "bad_request")
        XCTAssertEqual(code([with("op", "nope"), [UInt8](repeating: 0, count: 16)]), "unknown_op")
        XCTAssertEqual(code([Wire.encode(good), [UInt8](repeating: 0, count: 15)]), "bad_request")      // wrong byte count
        XCTAssertEqual(code([Wire.encode(good)]), "bad_request")                                        // missing data frame
        XCTAssertEqual(code([Wire.encode(good), [], []]), "bad_request")                                // extra frame
        XCTAssertEqual(code([with("shape", [-1, 4]), []]), "bad_request")
        XCTAssertEqual(code([with("shape", [1 << 20, 1 << 20]), []]), "bad_request")                    // overflow
        XCTAssertEqual(code([with("dtype", "int8"), []]), "bad_request")
        XCTAssertEqual(code([with("deadline_ms", "soon"), [UInt8](repeating: 0, count: 16)]), "bad_request")
        XCTAssertEqual(code([with("type", "launch")]), "bad_request")
        XCTAssertEqual(code([Wire.encode(good), [UInt8](repeating: 0, count: 16)] + [[UInt8]](repeating: [], count: 3)), "bad_request")
        XCTAssertEqual(code([Wire.encode(good), ZMQSocket.overflowMarker]), "bad_request")
        XCTAssertEqual(b.queueDepth, 0)
    }

    func testRandomMessagesNeverBreakTheCore() {
        let b = core()
        var rng = FuzzRNG(seed: 42)
        let pieces: [[UInt8]] = [Array(#"{"v":1,"type":"request","id":"z","op":"echo","dtype":"float32","shape":[2]}"#.utf8),
                                 Array(#"{"v":1,"type":"result","id":"z"}"#.utf8), Array(#"{"v":1,"type":"ready","ops":["echo"]}"#.utf8),
                                 Array(#"{"v":1,"type":"status"}"#.utf8), Array(#"{"v":1,"type":"cancel","id":"z"}"#.utf8), [], [0]]
        for i in 0..<10_000 {
            let n = Int.random(in: 0...4, using: &rng)
            var frames: [[UInt8]] = (0..<n).map { _ in
                Bool.random(using: &rng) ? pieces.randomElement(using: &rng) ?? [] :
                    (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            }
            if !frames.isEmpty && Int.random(in: 0..<4, using: &rng) == 0, var s = Wire.decode(frames[0]) {
                s["shape"] = [Int.random(in: -2...3, using: &rng)]
                frames[0] = Wire.encode(s)
            }
            let id: [UInt8] = [UInt8(i % 7)]
            _ = i % 2 == 0 ? b.handleClient(identity: id, frames: frames) : b.handleWorker(identity: id, frames: frames)
            if i % 100 == 0 { clock.advance(50); _ = b.tick() }
        }
        // Still serves: a fresh worker and a valid request.
        clock.advance(10_000)
        _ = b.tick()
        _ = ready(b, w1, ops: ["echo"], capacity: 64)
        let out = request(b, c1, id: "valid-after-fuzz")
        let job = out.first { $0.to == .worker(w1) && header($0)["id"] as? String == "valid-after-fuzz" }
        XCTAssertNotNil(job)
        XCTAssertEqual(result(b, w1, id: "valid-after-fuzz").first?.to, .client(c1))
    }
}
