// The pool with real processes on 127.0.0.1: exactly-once delivery, worker kill -9, broker restart, busy, deadlines, cancel.
import Engine
import XCTest
@testable import Worker

final class PoolProcessTests: XCTestCase {
    var processes: [Process] = []

    override func tearDown() {
        Pool.stop(processes)
        processes = []
    }

    @discardableResult
    func start(_ p: @autoclosure () throws -> Process) rethrows -> Process {
        let process = try p()
        processes.append(process)
        return process
    }

    /// 200 echo requests with distinct payloads from 8 concurrent clients over 2 workers: 200 correct results, once each.
    func testConcurrentClientsOverTwoWorkersExactlyOnce() throws {
        let (cp, wp) = (Pool.port(), Pool.port())
        try start(Pool.broker(cp, wp))
        try start(Pool.worker(wp, name: "a"))
        try start(Pool.worker(wp, name: "b"))
        Pool.waitStatus(cp) { Pool.workers($0) == 2 }
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var ok = 0
            var bad: [String] = []
            func add(_ good: Bool, _ what: String) { lock.lock(); if good { ok += 1 } else { bad.append(what) }; lock.unlock() }
        }
        let results = Results()
        let group = DispatchGroup()
        for c in 0..<8 {
            group.enter()
            Thread {
                defer { group.leave() }
                guard let client = try? PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 5000, retries: 1) else { return results.add(false, "client") }
                for r in 0..<25 {
                    let tag = c * 100 + r
                    let (payload, data) = Pool.tensor(tag: tag, count: 32 + r)
                    do {
                        let reply = try client.call(op: "echo", payload: payload, data: data, id: "req-\(tag)")
                        results.add(reply.data == data && reply.header["id"] as? String == "req-\(tag)", "wrong result for \(tag)")
                    } catch {
                        results.add(false, "\(tag): \(error)")
                    }
                }
            }.start()
        }
        XCTAssertEqual(group.wait(timeout: .now() + 30), .success)
        XCTAssertEqual(results.ok, 200, "\(results.bad.prefix(5))")
        let s = Pool.waitStatus(cp) { _ in true }
        XCTAssertEqual(s?["completed"] as? Int, 200)
        XCTAssertEqual(s?["deduplicated"] as? Int, 0)
        XCTAssertEqual(s?["requeued"] as? Int, 0)
        let perWorker = (s?["workers"] as? [[String: Any]])?.compactMap { $0["completed"] as? Int } ?? []
        XCTAssertEqual(perWorker.reduce(0, +), 200, "each job ran on exactly one worker")
        XCTAssertEqual(perWorker.count, 2)
        XCTAssertTrue(perWorker.allSatisfy { $0 > 0 }, "both workers got work: \(perWorker)")
    }

    /// kill -9 of the worker running a job: the job is re-queued and completes on the other worker.
    func testKillWorkerMidJobCompletesElsewhere() throws {
        let (cp, wp) = (Pool.port(), Pool.port())
        try start(Pool.broker(cp, wp))
        let doomed = try start(Pool.worker(wp, name: "doomed"))
        Pool.waitStatus(cp) { Pool.workers($0) == 1 }
        let client = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 3000, retries: 2)
        let (payload, data) = Pool.tensor(tag: 7)
        // 3 s: long enough that starting the survivor process and killing "doomed" happen while the job still
        // runs, even on a loaded machine (with 0.8 s the job sometimes finished on "doomed" first)
        try client.send(op: "sleep", payload: payload, data: data, options: ["ms": 3000, "step_ms": 50], id: "long")
        // Wait for progress: the job is running on "doomed".
        var sawProgress = false
        while let m = try client.next(timeoutMs: 2000) {
            if m.header["type"] as? String == "progress" { sawProgress = true; break }
        }
        XCTAssertTrue(sawProgress)
        try start(Pool.worker(wp, name: "survivor"))
        Pool.waitStatus(cp) { Pool.workers($0) == 2 }
        Pool.kill9(doomed)
        var final: PoolReply?
        while let m = try client.next(timeoutMs: 5000) {
            let t = m.header["type"] as? String
            if t == "result" || t == "error" { final = m; break }
        }
        XCTAssertEqual(final?.header["type"] as? String, "result", "\(String(describing: final?.header))")
        XCTAssertEqual(final?.header["worker"] as? String, "survivor")
        XCTAssertEqual(final?.header["attempts"] as? Int, 2)
        XCTAssertEqual(final?.data, data)
        let s = Pool.waitStatus(cp) { _ in true }
        XCTAssertEqual(s?["requeued"] as? Int, 1)
        XCTAssertEqual(s?["workers_lost"] as? Int, 1)
    }

    /// A job longer than the dead-worker limit, with no progress messages: heartbeats from the worker's I/O
    /// thread keep it registered, so the job runs once and nothing is re-queued.
    func testLongJobWorkerStaysAliveThroughHeartbeats() throws {
        let (cp, wp) = (Pool.port(), Pool.port())
        try start(Pool.broker(cp, wp))
        try start(Pool.worker(wp, name: "busy"))
        Pool.waitStatus(cp) { Pool.workers($0) == 1 }
        let client = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 2000, retries: 0)
        var progress = 0
        let reply = try client.call(op: "sleep", options: ["ms": 1200, "step_ms": 1200]) { _, _ in progress += 1 }
        XCTAssertEqual(progress, 1, "only the final step reports progress")
        XCTAssertEqual(reply.header["attempts"] as? Int, 1)
        let s = try client.status()
        XCTAssertEqual(s["requeued"] as? Int, 0)
        XCTAssertEqual(s["workers_lost"] as? Int, 0)
        XCTAssertEqual(Pool.workers(s), 1)
    }

    /// The broker dies and comes back on the same ports: the worker registers again and a client's retry succeeds.
    func testBrokerRestartWorkersReregisterClientsRetry() throws {
        let (cp, wp) = (Pool.port(), Pool.port())
        let broker = try start(Pool.broker(cp, wp))
        try start(Pool.worker(wp, name: "w"))
        Pool.waitStatus(cp) { Pool.workers($0) == 1 }
        let client = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 400, retries: 20)
        let (payload, data) = Pool.tensor(tag: 1)
        XCTAssertEqual(try client.call(op: "echo", payload: payload, data: data).data, data)
        Pool.kill9(broker)
        final class Box: @unchecked Sendable { var reply: PoolReply?; var error: Error? }
        let box = Box()
        let (p2, d2) = Pool.tensor(tag: 2)
        let done = DispatchGroup()
        done.enter()
        Thread {
            defer { done.leave() }
            do { box.reply = try client.call(op: "echo", payload: p2, data: d2, id: "across-restart") } catch { box.error = error }
        }.start()
        usleep(600_000)
        try start(Pool.broker(cp, wp))
        XCTAssertEqual(done.wait(timeout: .now() + 15), .success)
        XCTAssertNil(box.error)
        XCTAssertEqual(box.reply?.data, d2)
        let s = Pool.waitStatus(cp) { Pool.workers($0) == 1 }
        XCTAssertEqual(s?["completed"] as? Int, 1)
    }

    /// A full queue answers busy at once (< 100 ms); deadlines expire; cancel stops a running job.
    func testBusyDeadlineAndCancel() throws {
        let (cp, wp) = (Pool.port(), Pool.port())
        try start(Pool.broker(cp, wp, ["--queue", "2"]))
        let client = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 3000, retries: 0)
        XCTAssertNotNil(try client.status())
        // No workers yet: two requests wait, the third is refused at once.
        try client.send(op: "sleep", options: ["ms": 1], id: "q1")
        try client.send(op: "sleep", options: ["ms": 1], id: "q2")
        Pool.waitStatus(cp) { $0["queue_depth"] as? Int == 2 }
        let t0 = Date()
        XCTAssertThrowsError(try client.call(op: "echo", payload: Pool.tensor(tag: 3).0, data: Pool.tensor(tag: 3).1)) {
            XCTAssertEqual(($0 as? PoolError)?.code, "busy")
        }
        let busyMs = Date().timeIntervalSince(t0) * 1000
        XCTAssertLessThan(busyMs, 100, "busy took \(busyMs) ms")

        try start(Pool.worker(wp, name: "w"))
        Pool.waitStatus(cp) { $0["completed"] as? Int == 2 }

        // Deadline: a 5 s job with a 300 ms deadline fails in time, and the worker is free again soon after.
        let t1 = Date()
        XCTAssertThrowsError(try client.call(op: "sleep", options: ["ms": 5000], deadlineMs: 300)) {
            XCTAssertEqual(($0 as? PoolError)?.code, "deadline_exceeded")
        }
        XCTAssertLessThan(Date().timeIntervalSince(t1), 2)
        let t2 = Date()
        XCTAssertEqual(try client.call(op: "echo", payload: Pool.tensor(tag: 4).0, data: Pool.tensor(tag: 4).1).data, Pool.tensor(tag: 4).1)
        XCTAssertLessThan(Date().timeIntervalSince(t2), 1, "the worker stopped the expired job")

        // Cancel by id from another client while the job runs.
        try client.send(op: "sleep", options: ["ms": 5000, "step_ms": 20], id: "to-cancel")
        while let m = try client.next(timeoutMs: 2000), m.header["type"] as? String != "progress" {}
        let other = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 2000, retries: 0)
        XCTAssertTrue(try other.cancel(id: "to-cancel"))
        var code: String?
        while let m = try client.next(timeoutMs: 2000) {
            if m.header["type"] as? String == "error" { code = m.header["code"] as? String; break }
        }
        XCTAssertEqual(code, "cancelled")
        XCTAssertFalse(try other.cancel(id: "to-cancel"))
        let t3 = Date()
        XCTAssertEqual(try client.call(op: "echo", payload: Pool.tensor(tag: 5).0, data: Pool.tensor(tag: 5).1).data, Pool.tensor(tag: 5).1)
        XCTAssertLessThan(Date().timeIntervalSince(t3), 1, "the worker stopped the cancelled job")
    }

    /// `scm` through `autodir serve` (random-weight NAFNet, width 4) matches the same model run in-process;
    /// a PNG goes in and a PNG of the same size comes out.
    func testSCMThroughServeMatchesInProcess() throws {
        let (cp, wp) = (Pool.port(), Pool.port())
        try start(Pool.spawn(["serve", "--clients", Pool.endpoint(cp), "--workers", Pool.endpoint(wp), "--local-workers", "1",
                              "--random-scm-width", "4", "--threads", "1"] + Pool.fast))
        Pool.waitStatus(cp) { (($0["workers"] as? [[String: Any]])?.first?["ops"] as? [String])?.contains("scm") == true }
        var config = NAFNetConfig()
        config.width = 4
        let model = try NAFNet(config: config, weights: WeightLoader.random(seed: 0))
        let x = Tensor(uninitialized: [1, 6, 12, 20])
        var rng = SplitMix64(seed: 3)
        for i in 0..<x.count { x.data[i] = rng.nextFloat() }
        let expected = try model(x)
        let client = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 10_000, retries: 0)
        let reply = try client.call(op: "scm", payload: Payload(dtype: .float32, shape: x.shape),
                                    data: [FloatBytes.bytes(UnsafeBufferPointer(start: x.data, count: x.count))])
        XCTAssertEqual(reply.header["shape"] as? [Int], [1, 3, 12, 20])
        let got = FloatBytes.floats(reply.data[0])
        XCTAssertEqual(got.count, expected.count)
        let maxErr = zip(got, expected.array).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThanOrEqual(maxErr, 1e-5, "same weights, same kernels: only thread scheduling may differ")

        let png = try PNGImage.encode(Tensor(shape: [1, 3, 9, 7], repeating: 0.5))
        let out = try client.call(op: "scm", payload: Payload(dtype: .png), data: [png])
        XCTAssertEqual(out.header["dtype"] as? String, "png")
        XCTAssertEqual(try PNGImage.read(data: out.data[0]).shape, [1, 3, 9, 7])
        // Bad input for the handler is an error reply, not a dead worker.
        XCTAssertThrowsError(try client.call(op: "scm", payload: Payload(dtype: .float32, shape: [1, 5, 4, 4]),
                                             data: [[UInt8](repeating: 0, count: 5 * 16 * 4)])) {
            XCTAssertEqual(($0 as? PoolError)?.code, "invalid_input")
        }
        XCTAssertThrowsError(try client.call(op: "scm", payload: Payload(dtype: .png), data: [[UInt8](repeating: 7, count: 64)])) {
            XCTAssertEqual(($0 as? PoolError)?.code, "invalid_input")
        }
        XCTAssertEqual(try client.call(op: "echo", payload: Pool.tensor(tag: 1).0, data: Pool.tensor(tag: 1).1).data, Pool.tensor(tag: 1).1)
    }
}
