// `restore` and `detect` through `autodir serve --model` (the tiny random pipeline fixture of EngineTests)
// agree with the same AutoDIRPipeline run in this process; cancel, deadlines and bad input are error replies.
import Engine
import XCTest
@testable import Worker

final class PoolPipelineTests: XCTestCase {
    /// The fixture lives in the EngineTests bundle; the source tree path works from any build folder.
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("EngineTests/Fixtures/pipeline").path
    static let modelDir = fixtures + "/tiny-model"

    var processes: [Process] = []

    override func tearDown() {
        Pool.stop(processes)
        processes = []
    }

    /// `autodir serve` with the tiny model; returns the client port once restore and detect are announced.
    func serve() throws -> Int {
        let (cp, wp) = (Pool.port(), Pool.port())
        processes.append(try Pool.spawn(["serve", "--clients", Pool.endpoint(cp), "--workers", Pool.endpoint(wp),
                                         "--local-workers", "1", "--model", Self.modelDir] + Pool.fast))
        Pool.waitStatus(cp, seconds: 20) {
            let ops = (($0["workers"] as? [[String: Any]])?.first?["ops"] as? [String]) ?? []
            return ops.contains("restore") && ops.contains("detect")
        }
        return cp
    }

    func sample() throws -> Tensor { try PNGImage.read(path: Self.fixtures + "/sample.png") }   // [1, 3, 38, 53]

    static func bytes(_ t: Tensor) -> [[UInt8]] { [FloatBytes.bytes(UnsafeBufferPointer(start: t.data, count: t.count))] }

    static func maxDiff(_ a: [Float], _ b: [Float]) -> Float {
        a.count == b.count ? zip(a, b).map { abs($0 - $1) }.max() ?? 0 : .infinity
    }

    /// A restore and a detect of the sample agree with the in-process pipeline (same seed → within 1e-5), the
    /// per-pass artifacts are in the reply header and progress carries pass/step/stage; [H, W, 3] and PNG
    /// inputs come back in their own layout.
    func testRestoreAndDetectMatchInProcess() throws {
        let cp = try serve()
        let pipeline = try AutoDIRPipeline(directory: Self.modelDir)
        let x = try sample()
        var options = RestoreOptions()
        options.seed = 11
        options.steps = 3
        options.maxPasses = 2
        let expected = try pipeline.restore(x, options: options)

        let client = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 20_000, retries: 0)
        try client.send(op: "restore", payload: Payload(dtype: .float32, shape: x.shape), data: Self.bytes(x),
                        options: ["seed": 11, "steps": 3, "max_passes": 2], id: "r1")
        var progress: [[String: Any]] = []
        var reply: PoolReply?
        while let m = try client.next(timeoutMs: 20_000) {
            let type = m.header["type"] as? String
            if type == "progress" { progress.append(m.header) } else if type == "result" || type == "error" { reply = m; break }
        }
        let r = try XCTUnwrap(reply)
        XCTAssertEqual(r.header["type"] as? String, "result", "\(r.header)")
        XCTAssertEqual(r.header["shape"] as? [Int], [1, 3, 38, 53])
        let got = FloatBytes.floats(try XCTUnwrap(r.data.first))
        XCTAssertLessThanOrEqual(Self.maxDiff(got, expected.image.array), 1e-5)
        let passes = try XCTUnwrap(r.header["passes"] as? [[String: Any]])
        XCTAssertEqual(passes.map { $0["artifact"] as? String }, expected.passes.map(\.artifact))
        XCTAssertEqual(r.header["artifacts"] as? [String], expected.passes.map(\.artifact))
        for (p, e) in zip(passes, expected.passes) {
            let probs = try XCTUnwrap(p["probabilities"] as? [String: Double])
            XCTAssertEqual(Set(probs.keys), Set(e.probabilities.keys))
            for (k, v) in e.probabilities { XCTAssertEqual(probs[k] ?? -1, Double(v), accuracy: 1e-5, k) }
        }
        XCTAssertFalse(expected.passes.isEmpty, "the fixture restores at least one pass")
        let denoise = progress.filter { $0["stage"] as? String == "denoise" }
        XCTAssertTrue(denoise.contains { Wire.int($0["step"]) == 3 && Wire.int($0["pass"]) == 1 && Wire.int($0["steps"]) == 3 },
                      "\(progress.prefix(8))")
        XCTAssertTrue(progress.contains { $0["stage"] as? String == "detect" })

        // detect: the header holds artifact and probabilities, no data.
        let d = try client.call(op: "detect", payload: Payload(dtype: .float32, shape: x.shape), data: Self.bytes(x))
        let det = try pipeline.detect(x)
        XCTAssertEqual(d.header["dtype"] as? String, "none")
        XCTAssertTrue(d.data.isEmpty)
        XCTAssertEqual(d.header["artifact"] as? String, det.artifact)
        let probs = try XCTUnwrap(d.header["probabilities"] as? [String: Double])
        XCTAssertEqual(probs.count, det.probabilities.count)
        for (k, v) in det.probabilities { XCTAssertEqual(probs[k] ?? -1, Double(v), accuracy: 1e-5, k) }

        // [H, W, 3] in → [H, W, 3] out, the same values (one short pass with a prompt).
        var one = RestoreOptions()
        one.prompt = "remove the noise"
        one.steps = 1
        one.seed = 2
        let e1 = try pipeline.restore(x, options: one).image                           // [1, 3, H, W]
        let (h, w) = (x.shape[2], x.shape[3])
        let hwc = Tensor(uninitialized: [h, w, 3])
        for c in 0..<3 { for i in 0..<(h * w) { hwc.data[i * 3 + c] = x.data[c * h * w + i] } }
        let r2 = try client.call(op: "restore", payload: Payload(dtype: .float32, shape: hwc.shape), data: Self.bytes(hwc),
                                 options: ["prompt": "remove the noise", "steps": 1, "seed": 2])
        XCTAssertEqual(r2.header["shape"] as? [Int], [h, w, 3])
        XCTAssertEqual(r2.header["artifacts"] as? [String], ["remove the noise"])
        let g2 = FloatBytes.floats(try XCTUnwrap(r2.data.first))
        var e2 = [Float](repeating: 0, count: h * w * 3)
        for c in 0..<3 { for i in 0..<(h * w) { e2[i * 3 + c] = e1.data[c * h * w + i] } }
        XCTAssertLessThanOrEqual(Self.maxDiff(g2, e2), 1e-5)

        // PNG in → PNG out of the same size.
        let png = try PNGImage.encode(x)
        let r3 = try client.call(op: "restore", payload: Payload(dtype: .png), data: [png],
                                 options: ["prompt": "remove the noise", "steps": 1, "seed": 2, "bit_depth": 16])
        XCTAssertEqual(r3.header["dtype"] as? String, "png")
        XCTAssertEqual(try PNGImage.read(data: try XCTUnwrap(r3.data.first)).shape, [1, 3, h, w])
    }

    /// Cancel mid-restore and a deadline stop the job with their error codes; bad input is invalid_input; the
    /// worker serves on afterwards.
    func testRestoreCancelDeadlineAndBadInput() throws {
        let cp = try serve()
        let x = try sample()
        let client = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 10_000, retries: 0)
        let long: [String: Any] = ["prompt": "remove the rain", "steps": 1000, "seed": 1]

        // Cancel from another client once the sampler is running.
        try client.send(op: "restore", payload: Payload(dtype: .float32, shape: x.shape), data: Self.bytes(x), options: long, id: "to-cancel")
        var sawDenoise = false
        while let m = try client.next(timeoutMs: 10_000) {
            if m.header["type"] as? String == "progress", m.header["stage"] as? String == "denoise", Wire.int(m.header["step"]) ?? 0 >= 1 {
                sawDenoise = true
                break
            }
            if let t = m.header["type"] as? String, t == "result" || t == "error" { XCTFail("finished before cancel: \(m.header)"); break }
        }
        XCTAssertTrue(sawDenoise)
        let other = try PoolClient(endpoint: Pool.endpoint(cp), timeoutMs: 5000, retries: 0)
        let t0 = Date()
        XCTAssertTrue(try other.cancel(id: "to-cancel"))
        var code: String?
        while let m = try client.next(timeoutMs: 5000) {
            if m.header["type"] as? String == "error" { code = m.header["code"] as? String; break }
        }
        XCTAssertEqual(code, "cancelled")
        // The worker is free again within about one sampler step.
        XCTAssertEqual(try client.call(op: "echo", payload: Pool.tensor(tag: 1).0, data: Pool.tensor(tag: 1).1).data, Pool.tensor(tag: 1).1)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 3)

        // A deadline stops a long restore.
        let t1 = Date()
        XCTAssertThrowsError(try client.call(op: "restore", payload: Payload(dtype: .float32, shape: x.shape), data: Self.bytes(x),
                                             options: long, deadlineMs: 400)) {
            XCTAssertEqual(($0 as? PoolError)?.code, "deadline_exceeded", "\($0)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(t1), 3)

        // Bad input: wrong shape, not a PNG, no image, non-finite values, bad options.
        func refused(_ op: String, _ payload: Payload, _ data: [[UInt8]], _ options: [String: Any] = [:], line: UInt = #line) {
            XCTAssertThrowsError(try client.call(op: op, payload: payload, data: data, options: options), line: line) {
                XCTAssertEqual(($0 as? PoolError)?.code, "invalid_input", "\($0)", line: line)
            }
        }
        let nan = Tensor(shape: [1, 3, 4, 4], repeating: .nan)
        for op in ["restore", "detect"] {
            refused(op, Payload(dtype: .float32, shape: [1, 5, 4, 4]), [[UInt8](repeating: 0, count: 5 * 16 * 4)])
            refused(op, Payload(dtype: .float32, shape: [2, 3, 4, 4]), [[UInt8](repeating: 0, count: 2 * 3 * 16 * 4)])
            refused(op, Payload(dtype: .float32, shape: [48]), [[UInt8](repeating: 0, count: 48 * 4)])
            refused(op, Payload(dtype: .png), [[UInt8](repeating: 7, count: 64)])
            refused(op, Payload(dtype: .none), [])
            refused(op, Payload(dtype: .float32, shape: nan.shape), Self.bytes(nan))
        }
        let small = Tensor(shape: [1, 3, 8, 8], repeating: 0.5)
        refused("restore", Payload(dtype: .float32, shape: small.shape), Self.bytes(small), ["steps": "many"])
        refused("restore", Payload(dtype: .float32, shape: small.shape), Self.bytes(small), ["steps": 0])
        refused("restore", Payload(dtype: .float32, shape: small.shape), Self.bytes(small), ["sampler": "nope"])
        refused("restore", Payload(dtype: .float32, shape: small.shape), Self.bytes(small), ["seed": -1])
        refused("restore", Payload(dtype: .float32, shape: small.shape), Self.bytes(small), ["colour_fix": true])
        refused("detect", Payload(dtype: .float32, shape: small.shape), Self.bytes(small), ["seed": 1])
        XCTAssertEqual(try client.call(op: "echo", payload: Pool.tensor(tag: 2).0, data: Pool.tensor(tag: 2).1).data, Pool.tensor(tag: 2).1)
    }

    /// A worker whose model folder does not load serves echo/sleep only (and says why on stderr, not tested here).
    func testWorkerWithoutModelDoesNotAnnounceRestore() throws {
        let (cp, wp) = (Pool.port(), Pool.port())
        processes.append(try Pool.broker(cp, wp))
        processes.append(try Pool.worker(wp, name: "bare", ["--model", NSTemporaryDirectory() + "no-such-model-\(getpid())"]))
        let s = Pool.waitStatus(cp) { Pool.workers($0) == 1 }
        let ops = ((s?["workers"] as? [[String: Any]])?.first?["ops"] as? [String]) ?? []
        XCTAssertEqual(ops, ["echo", "sleep"])
    }
}
