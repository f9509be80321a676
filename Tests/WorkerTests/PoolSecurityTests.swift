// The pool under hostile input, with real processes on 127.0.0.1: CURVE allow-lists, over-size messages,
// and 10,000 random multipart messages at the broker and at a worker.
import CZmq
import XCTest
@testable import Worker

final class PoolSecurityTests: XCTestCase {
    var processes: [Process] = []
    var temp = ""

    override func setUp() {
        temp = NSTemporaryDirectory() + "autodir-pool-\(getpid())-\(UUID().uuidString)"
    }

    override func tearDown() {
        Pool.stop(processes)
        processes = []
        try? FileManager.default.removeItem(atPath: temp)
    }

    @discardableResult
    func start(_ p: @autoclosure () throws -> Process) rethrows -> Process {
        let process = try p()
        processes.append(process)
        return process
    }

    func testCurveRefusesUnknownClientAndWorkerKeys() throws {
        guard ZMQ.hasCurve else { throw XCTSkip("libzmq without CURVE") }
        let keys = temp + "/keys", other = temp + "/other"
        XCTAssertEqual(try Pool.runTool(["keygen", "--out", keys]).0, 0)
        XCTAssertEqual(try Pool.runTool(["keygen", "--out", other, "--name", "stranger"]).0, 0)
        let (cp, wp) = (Pool.port(), Pool.port())
        try start(Pool.broker(cp, wp, ["--curve-keys", keys]))
        try start(Pool.worker(wp, name: "trusted", ["--curve-key", keys + "/workers/worker.key", "--server-key", keys + "/broker.pub"]))
        let clientKeys = try CurveClientKeys.load(keyFile: keys + "/clients/client.key", serverKey: keys + "/broker.pub")
        Pool.waitStatus(cp, curve: clientKeys) { Pool.workers($0) == 1 }

        // The allowed client gets answers, encrypted.
        let client = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 2000, retries: 0, curve: clientKeys)
        let (payload, data) = Pool.tensor(tag: 9)
        XCTAssertEqual(try client.call(op: "echo", payload: payload, data: data).data, data)

        // Refused: a stranger's key, a worker's key used as a client, and no CURVE at all.
        let stranger = try CurveClientKeys.load(keyFile: other + "/stranger.key", serverKey: keys + "/broker.pub")
        let workerAsClient = try CurveClientKeys.load(keyFile: keys + "/workers/worker.key", serverKey: keys + "/broker.pub")
        for (name, curve) in [("stranger", Optional(stranger)), ("worker key as client", workerAsClient), ("plain", nil)] {
            let c = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 300, retries: 0, curve: curve)
            XCTAssertThrowsError(try c.status(), name) { XCTAssertEqual(($0 as? PoolError)?.code, "timeout", name) }
        }
        // Workers with a stranger's key or a client's key never register.
        try start(Pool.worker(wp, name: "stranger", ["--curve-key", other + "/stranger.key", "--server-key", keys + "/broker.pub"]))
        try start(Pool.worker(wp, name: "client-key", ["--curve-key", keys + "/clients/client.key", "--server-key", keys + "/broker.pub"]))
        usleep(700_000)
        let s = Pool.waitStatus(cp, curve: clientKeys) { _ in true }
        XCTAssertEqual((s?["workers"] as? [[String: Any]])?.compactMap { $0["name"] as? String }, ["trusted"])
    }

    func testOversizeMessageRefusedOthersServed() throws {
        let (cp, wp) = (Pool.port(), Pool.port())
        try start(Pool.broker(cp, wp, ["--max-message-bytes", "65536"]))
        try start(Pool.worker(wp, name: "w"))
        Pool.waitStatus(cp) { Pool.workers($0) == 1 }
        let big = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 400, retries: 0)
        let (payload, data) = Pool.tensor(tag: 1, count: 20_000)          // 80,000 bytes > 65,536
        XCTAssertThrowsError(try big.call(op: "echo", payload: payload, data: data)) {
            XCTAssertEqual(($0 as? PoolError)?.code, "timeout")                // the broker dropped the connection
        }
        let small = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 2000, retries: 0)
        let (p2, d2) = Pool.tensor(tag: 2, count: 1000)
        XCTAssertEqual(try small.call(op: "echo", payload: p2, data: d2).data, d2)
    }

    /// Random multipart messages: random bytes, broken JSON headers, valid headers with wrong sizes or fields.
    static func randomMessage(_ rng: inout FuzzRNG) -> [[UInt8]] {
        let headers = [#"{"v":1,"type":"request","id":"f","op":"echo","dtype":"float32","shape":[4]}"#,
                       #"{"v":1,"type":"job","id":"f","op":"echo","dtype":"float32","shape":[4]}"#,
                       #"{"v":1,"type":"request","id":"f","op":"sleep","dtype":"png"}"#,
                       #"{"v":2,"type":"status"}"#, #"{"v":1,"type":"cancel"}"#, #"{"v":1,"type":"ready","ops":[]}"#,
                       #"{"v":1,"type":"result","id":"f","dtype":"float32","shape":[1]}"#, #"{"v":1,"type":"job","id":"g","op":"echo","dtype":"float32","shape":[99999999]}"#,
                       #"{"v":1}"#, "{", "[]", "null", #"{"v":1,"type":"request","id":"f","op":"echo","dtype":"float32","shape":"x"}"#]
        let n = Int.random(in: 1...6, using: &rng)
        return (0..<n).map { i in
            if i == 0 && Bool.random(using: &rng), let h = headers.randomElement(using: &rng) { return Array(h.utf8) }
            return (0..<Int.random(in: 0...48, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        }
    }

    func testTenThousandRandomMessagesAtBrokerEverythingStaysUp() throws {
        let (cp, wp) = (Pool.port(), Pool.port())
        let broker = try start(Pool.broker(cp, wp))
        let worker = try start(Pool.worker(wp, name: "w"))
        Pool.waitStatus(cp) { Pool.workers($0) == 1 }
        let context = try ZMQContext()
        let fuzzClient = try ZMQSocket(context, .dealer), fuzzWorker = try ZMQSocket(context, .dealer)
        for s in [fuzzClient, fuzzWorker] { try s.set(ZMQ_LINGER, 0) }
        try fuzzClient.connect(Pool.endpoint(cp))
        try fuzzWorker.connect(Pool.endpoint(wp))
        var rng = FuzzRNG(seed: 2024)
        var replies = 0
        for i in 0..<10_000 {
            let target = i % 4 == 3 ? fuzzWorker : fuzzClient
            try target.send(Self.randomMessage(&rng))
            while (try fuzzClient.receive(timeoutMs: 0)) != nil { replies += 1 }
            while (try fuzzWorker.receive(timeoutMs: 0)) != nil {}
        }
        while (try fuzzClient.receive(timeoutMs: 300)) != nil { replies += 1 }   // until 300 ms of quiet
        fuzzClient.close(); fuzzWorker.close()
        // One reply per client message (an error, or a result for the few valid ones), less retries of an in-flight id.
        XCTAssertGreaterThan(replies, 7_000)
        XCTAssertTrue(broker.isRunning && worker.isRunning)
        // Still serving valid requests (a fuzz "worker" may have registered and vanished: its jobs are re-queued).
        let client = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 3000, retries: 1)
        for tag in 0..<5 {
            let (payload, data) = Pool.tensor(tag: tag)
            XCTAssertEqual(try client.call(op: "echo", payload: payload, data: data).data, data)
        }
        let s = try client.status()
        XCTAssertGreaterThan(s["malformed"] as? Int ?? 0, 5_000)
    }

    func testTenThousandRandomMessagesAtWorkerItKeepsServing() throws {
        // This test plays the broker: a ROUTER the worker connects to.
        let context = try ZMQContext()
        let router = try ZMQSocket(context, .router)
        try router.set(ZMQ_LINGER, 0)
        try router.set(ZMQ_ROUTER_MANDATORY, 1)
        let wp = Pool.port()
        try router.bind(Pool.endpoint(wp))
        let worker = try start(Pool.spawn(["worker", "--connect", Pool.endpoint(wp), "--name", "target", "--heartbeat-ms", "200", "--liveness", "10"]))
        var identity: [UInt8] = []
        var lastType = ""
        func pump(_ timeoutMs: Int) throws -> [[UInt8]]? {
            guard let m = try router.receive(timeoutMs: timeoutMs), m.count >= 2 else { return nil }
            identity = m[0]
            lastType = Wire.decode(m[1])?["type"] as? String ?? ""
            return Array(m.dropFirst())
        }
        let ready = try pump(5000)
        XCTAssertEqual(lastType, "ready")
        XCTAssertNotNil(ready)
        var rng = FuzzRNG(seed: 77)
        for _ in 0..<10_000 {
            let m = Self.randomMessage(&rng)
            while try !router.send([identity] + m, dontWait: true) { _ = try pump(1) }
            _ = try pump(0)
        }
        // A valid job afterwards gets its result (skip any error replies the fuzz's well-formed jobs earned).
        let (payload, data) = Pool.tensor(tag: 42)
        var job = payload.headerFields
        job["v"] = 1; job["type"] = "job"; job["id"] = "valid"; job["op"] = "echo"
        try router.send([identity, Wire.encode(job)] + data)
        var result: [[UInt8]]?
        let until = Date().addingTimeInterval(5)
        while Date() < until, result == nil {
            if let m = try pump(100), let h = Wire.decode(m[0]), h["id"] as? String == "valid" { result = m }
        }
        XCTAssertEqual(result.flatMap { Wire.decode($0[0])?["type"] as? String }, "result")
        XCTAssertEqual(result.map { Array($0.dropFirst()) }, data)
        XCTAssertTrue(worker.isRunning)
        // And it still heartbeats.
        var beat = false
        let until2 = Date().addingTimeInterval(2)
        while Date() < until2, !beat { if try pump(100) != nil, lastType == "heartbeat" { beat = true } }
        XCTAssertTrue(beat)
        router.close()
    }
}
