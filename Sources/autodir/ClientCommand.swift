// `autodir client`: a command-line client of the pool (requests, status, latency and throughput benchmarks).
import ArgumentParser
import Engine
import Foundation
import Worker

struct ClientCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "Send a request to a pool broker: --op echo|sleep|scm|status|ping.",
        discussion: "Input: --input PNG (sent as png), or a random float32 tensor of --shape. scm with a PNG writes "
            + "the corrected PNG to --output. --runs N repeats the call and prints latency percentiles (with an "
            + "in-process baseline for echo); --concurrency C runs C clients at once and prints throughput.")

    @Option(help: "The broker's client endpoint.") var connect: String = "tcp://127.0.0.1:5555"
    @Option(help: "echo, sleep, scm, status or ping.") var op: String = "status"
    @Option(help: "Input PNG file.") var input: String?
    @Option(help: "Output file (PNG for png results, raw float32 little-endian otherwise).") var output: String?
    @Option(help: "Random float32 input shape, comma-separated.") var shape: String = "1,3,256,256"
    @Option(name: .customLong("option"), help: "Request option KEY=VALUE (numbers and true/false are typed); repeatable.")
    var options: [String] = []
    @Option(help: "Per-request deadline in ms (0: none).") var deadlineMs: Int = 0
    @Option(help: "Silence in ms before a retry with the same id.") var timeoutMs: Int = 10_000
    @Option(help: "Retries after silence.") var retries: Int = 3
    @Option(help: "Repeat the call N times and print latency percentiles.") var runs: Int = 1
    @Option(help: "Concurrent clients (threads) for --runs.") var concurrency: Int = 1
    @Option(help: "This client's CURVE key file.") var curveKey: String?
    @Option(help: "The broker's CURVE public key.") var serverKey: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        guard runs >= 1, runs <= 1_000_000, concurrency >= 1, concurrency <= 256, timeoutMs > 0, retries >= 0 else {
            throw ValidationError("--runs ≥ 1, --concurrency in 1…256, --timeout-ms > 0, --retries ≥ 0")
        }
        let curve = try curveClientKeys(curveKey: curveKey, serverKey: serverKey)
        if op == "status" || op == "ping" {
            let client = try PoolClient(endpoint: connect, timeoutMs: timeoutMs, retries: retries, curve: curve)
            let reply = try withReadableErrors {
                op == "status" ? try client.status() : try client.exchange([Wire.encode(["v": Wire.version, "type": "ping"])], id: nil).header
            }
            let data = try JSONSerialization.data(withJSONObject: reply, options: [.sortedKeys, .prettyPrinted])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        let (payload, data) = try makeInput()
        let opts = parseOptions()
        if runs == 1 && concurrency == 1 {
            let client = try PoolClient(endpoint: connect, timeoutMs: timeoutMs, retries: retries, curve: curve)
            let t0 = MonotonicClock.now()
            let reply = try withReadableErrors {
                try client.call(op: op, payload: payload, data: data, options: opts, deadlineMs: deadlineMs > 0 ? deadlineMs : nil) { done, total in
                    if !json { logLine("progress \(done)/\(total)") }
                }
            }
            let ms = MonotonicClock.now() - t0
            var h = reply.header
            h["client_ms"] = Int(ms)
            let text = try JSONSerialization.data(withJSONObject: h, options: [.sortedKeys])
            print(String(decoding: text, as: UTF8.self))
            if let output, let frame = reply.data.first {
                guard FileManager.default.createFile(atPath: output, contents: Data(frame)) else {
                    throw ValidationError("cannot write \(output)")
                }
            }
            return
        }
        try benchmark(payload: payload, data: data, options: opts, curve: curve)
    }

    func makeInput() throws -> (Payload, [[UInt8]]) {
        if let input {
            guard let bytes = FileManager.default.contents(atPath: input) else { throw ValidationError("cannot read \(input)") }
            return (Payload(dtype: .png), [Array(bytes)])
        }
        let dims = shape.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard let n = Payload.elements(dims) else { throw ValidationError("bad --shape \(shape)") }
        var rng = SplitMix64(seed: 7)
        let values = (0..<n).map { _ in rng.nextFloat() }
        return (Payload(dtype: .float32, shape: dims), [FloatBytes.bytes(values)])
    }

    func parseOptions() -> [String: Any] {
        var o: [String: Any] = [:]
        for kv in options {
            let parts = kv.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            if let i = Int(parts[1]) { o[parts[0]] = i } else if let d = Double(parts[1]) { o[parts[0]] = d }
            else if parts[1] == "true" || parts[1] == "false" { o[parts[0]] = parts[1] == "true" } else { o[parts[0]] = parts[1] }
        }
        return o
    }

    /// Latency percentiles over `runs` calls from `concurrency` clients; for echo also an in-process baseline.
    func benchmark(payload: Payload, data: [[UInt8]], options: [String: Any], curve: CurveClientKeys?) throws {
        final class Tally: @unchecked Sendable {
            let lock = NSLock()
            var latencies: [Double] = []
            var failures: [String] = []
            func add(_ ms: Double) { lock.lock(); latencies.append(ms); lock.unlock() }
            func fail(_ e: String) { lock.lock(); failures.append(e); lock.unlock() }
        }
        let tally = Tally()
        let group = DispatchGroup()
        let perThread = (runs + concurrency - 1) / concurrency
        let t0 = MonotonicClock.now()
        for _ in 0..<concurrency {
            group.enter()
            let t = Thread { [self] in
                defer { group.leave() }
                do {
                    let client = try PoolClient(endpoint: connect, timeoutMs: timeoutMs, retries: retries, curve: curve)
                    for _ in 0..<perThread {
                        let s = DispatchTime.now().uptimeNanoseconds
                        _ = try client.call(op: op, payload: payload, data: data, options: options, deadlineMs: deadlineMs > 0 ? deadlineMs : nil)
                        let ms = Double(DispatchTime.now().uptimeNanoseconds - s) / 1e6
                        tally.add(ms)
                    }
                } catch {
                    tally.fail("\(error)")
                }
            }
            t.start()
        }
        group.wait()
        let wall = Double(MonotonicClock.now() - t0) / 1000
        let latencies = tally.latencies.sorted(), failures = tally.failures
        func q(_ p: Double) -> Double { latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(p * Double(latencies.count)))] }
        var result: [String: Any] = [
            "op": op, "runs": latencies.count, "concurrency": concurrency, "failures": failures.count,
            "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "wall_s": wall,
            "requests_per_s": Double(latencies.count) / max(wall, 1e-9),
        ]
        if payload.dtype == .float32 { result["shape"] = payload.shape }
        if op == "echo" {
            // The same work without the pool: bytes → job → handler → result bytes, in this process.
            var inProcess: [Double] = []
            let handler = EchoHandler()
            for _ in 0..<max(10, min(runs, 1000)) {
                let s = DispatchTime.now().uptimeNanoseconds
                let job = Job(id: "x", op: "echo", header: [:], options: [:], payload: payload, data: data.map { Array($0) })
                let r = try handler.run(job, context: JobContext(deadline: nil))
                withExtendedLifetime(r) {}
                inProcess.append(Double(DispatchTime.now().uptimeNanoseconds - s) / 1e6)
            }
            inProcess.sort()
            result["inprocess_p50_ms"] = inProcess[inProcess.count / 2]
            result["added_p50_ms"] = q(0.5) - inProcess[inProcess.count / 2]
        }
        if let first = failures.first { result["first_failure"] = first }
        let text = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
        print(String(decoding: text, as: UTF8.self))
        if !failures.isEmpty { throw ExitCode(1) }
    }
}
