// `autodir broker | worker | serve | keygen`: the ZeroMQ worker pool (docs/PROTOCOL.md).
import ArgumentParser
import Engine
import Foundation
import Worker

/// Heartbeat and size options shared by the pool commands.
struct PoolTimingOptions: ParsableArguments {
    @Option(help: "Broker ⇄ worker heartbeat interval in ms.") var heartbeatMs: Int = 1000
    @Option(help: "Missed heartbeats before a peer counts as dead.") var liveness: Int = 3
    @Option(help: "Largest accepted message frame in bytes (ZMQ_MAXMSGSIZE); larger ones drop the connection.")
    var maxMessageBytes: Int = 256 << 20

    func validate() throws {
        guard heartbeatMs >= 10, heartbeatMs <= 600_000, liveness >= 1, liveness <= 100 else {
            throw ValidationError("--heartbeat-ms must be in 10…600000 and --liveness in 1…100")
        }
        guard maxMessageBytes >= 1024 else { throw ValidationError("--max-message-bytes must be at least 1024") }
    }
}

/// Stops `flag` on SIGINT or SIGTERM (so sockets close cleanly and workers say goodbye).
func stopOnSignals(_ flag: StopFlag) -> [DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { sig in
        signal(sig, SIG_IGN)
        let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        s.setEventHandler { flag.set() }
        s.resume()
        return s
    }
}

func splitEndpoints(_ s: String) -> [String] { s.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }

func logLine(_ s: String) { FileHandle.standardError.write(Data("\(s)\n".utf8)) }

struct BrokerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract: "Run the pool broker: clients send requests to --clients, workers connect to --workers.",
        discussion: "With --curve-keys DIR (made by `autodir keygen --out DIR`), both sockets are CURVE servers with "
            + "DIR/broker.key; client keys must be in DIR/clients/*.pub and worker keys in DIR/workers/*.pub.")

    @Option(help: "Client endpoint(s), comma-separated, e.g. tcp://*:5555.") var clients: String = "tcp://127.0.0.1:5555"
    @Option(help: "Worker endpoint(s), comma-separated, e.g. tcp://*:5556.") var workers: String = "tcp://127.0.0.1:5556"
    @Option(help: "CURVE key folder (broker.key, clients/*.pub, workers/*.pub).") var curveKeys: String?
    @Option(help: "Requests waiting for a worker before new ones are answered busy.") var queue: Int = 64
    @Option(help: "Dispatches of one request (worker deaths) before it fails with worker_lost.") var maxAttempts: Int = 3
    @Option(help: "How long finished replies are kept for retries, in ms.") var resultTtlMs: Int = 60_000
    @OptionGroup var timing: PoolTimingOptions

    func run() throws {
        let options = try brokerOptions(clients: clients, workers: workers, curveKeys: curveKeys, queue: queue,
                                        maxAttempts: maxAttempts, resultTtlMs: resultTtlMs, timing: timing)
        let broker = try withReadableErrors { try Broker(options: options) }
        let stop = StopFlag()
        let signals = stopOnSignals(stop)
        logLine("broker: clients \(options.clientEndpoints.joined(separator: ",")), workers \(options.workerEndpoints.joined(separator: ","))"
            + (options.curve != nil ? " (CURVE: \(options.curve?.clients.count ?? 0) client keys, \(options.curve?.workers.count ?? 0) worker keys)" : ""))
        broker.run(stop: stop)
        withExtendedLifetime(signals) {}
    }
}

func brokerOptions(clients: String, workers: String, curveKeys: String?, queue: Int, maxAttempts: Int, resultTtlMs: Int,
                   timing: PoolTimingOptions) throws -> BrokerOptions {
    guard queue >= 0, queue <= 1_000_000, maxAttempts >= 1, maxAttempts <= 100, resultTtlMs >= 0 else {
        throw ValidationError("--queue must be in 0…1000000, --max-attempts in 1…100, --result-ttl-ms ≥ 0")
    }
    var o = BrokerOptions(clients: splitEndpoints(clients), workers: splitEndpoints(workers))
    o.core.queueCapacity = queue
    o.core.maxAttempts = maxAttempts
    o.core.resultTTLms = resultTtlMs
    o.core.heartbeatMs = timing.heartbeatMs
    o.core.liveness = timing.liveness
    o.core.maxMessageBytes = timing.maxMessageBytes
    if let dir = curveKeys {
        guard ZMQ.hasCurve else { throw ValidationError("this libzmq has no CURVE support") }
        o.curve = try withReadableErrors { try CurveServerKeys.load(directory: dir) }
    }
    o.log = { logLine($0) }
    return o
}

/// Turns library errors into one readable line and exit status 1.
func withReadableErrors<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as ValidationError { throw e } catch let e as ExitCode { throw e } catch {
        logLine("autodir: error: \(error)")
        throw ExitCode(1)
    }
}

/// What a worker serves: restore, detect and scm from an AutoDIR model folder (--model, else $AUTODIR_MODEL,
/// else models/autodir-tiny, as `autodir restore` finds it), loaded once per process; scm alone from a folder with
/// just scm/ (default models/scm-demo when no AutoDIR folder loads); or a random-weight NAFNet for benchmarks.
/// A folder that does not load is reported on stderr and its ops are not announced.
struct WorkerModelOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Model folder: a full AutoDIR folder serves restore, detect and scm; one with only scm/ serves scm.",
                               discussion: "Default: $AUTODIR_MODEL, else models/autodir-tiny (as for `autodir restore`); scm alone falls back to models/scm-demo."))
    var model: String?
    @Option(help: "Serve scm with a random-weight NAFNet of this width instead of a model folder (benchmarks).")
    var randomScmWidth: Int?

    func handlers(precision: WeightPrecision = .float32) throws -> [JobHandler] {
        var handlers: [JobHandler] = [EchoHandler(), SleepHandler()]
        if let width = randomScmWidth {
            guard width > 0, width <= 256 else { throw ValidationError("--random-scm-width must be in 1…256") }
            var config = NAFNetConfig()
            config.width = width
            handlers.append(SCMHandler(model: try withReadableErrors { try NAFNet(config: config, weights: WeightLoader.random(seed: 0, precision: precision)) }))
            return handlers
        }
        let env = ProcessInfo.processInfo.environment["AUTODIR_MODEL"].flatMap { $0.isEmpty ? nil : $0 }
        let dir = model ?? env ?? findRepositoryPath("models/autodir-tiny/model_index.json").map { ($0 as NSString).deletingLastPathComponent }
        var served: [JobHandler] = []
        if let dir {
            served = WorkerHandlers.model(directory: dir, precision: precision, log: logLine)
        } else {
            logLine("worker: not serving restore/detect: no AutoDIR model folder (pass --model DIR or set AUTODIR_MODEL; "
                + "the default models/autodir-tiny was not found)")
        }
        if !served.contains(where: { $0.op == "scm" }), model == nil,
           FileManager.default.fileExists(atPath: "models/scm-demo/scm/config.json") {
            served += WorkerHandlers.model(directory: "models/scm-demo", precision: precision, log: { _ in })
        }
        return handlers + served
    }
}

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a pool worker that connects to a broker's worker endpoint (from any machine).")

    @Option(help: "The broker's worker endpoint.") var connect: String = "tcp://127.0.0.1:5556"
    @Option(help: "Jobs run at once (each on its own thread).") var capacity: Int = 1
    @Option(help: "Name in the broker's status (default host-pid).") var name: String?
    @Option(help: "This worker's CURVE key file (NAME.key from keygen).") var curveKey: String?
    @Option(help: "The broker's CURVE public key (broker.pub, or the Z85 text).") var serverKey: String?
    @Option(help: "Wait before reconnecting to a silent broker, in ms.") var reconnectMs: Int = 500
    @OptionGroup var modelOptions: WorkerModelOptions
    @OptionGroup var timing: PoolTimingOptions
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard capacity >= 1, capacity <= 64, reconnectMs >= 0, reconnectMs <= 60_000 else {
            throw ValidationError("--capacity must be in 1…64 and --reconnect-ms in 0…60000")
        }
        var o = WorkerOptions(endpoint: connect, name: name)
        o.capacity = capacity
        o.heartbeatMs = timing.heartbeatMs
        o.liveness = timing.liveness
        o.reconnectMs = reconnectMs
        o.maxMessageBytes = timing.maxMessageBytes
        o.log = { logLine($0) }
        o.curve = try curveClientKeys(curveKey: curveKey, serverKey: serverKey)
        let worker = try withReadableErrors { try PoolWorker(options: o, handlers: try modelOptions.handlers(precision: try compute.weightPrecision())) }
        let stop = StopFlag()
        let signals = stopOnSignals(stop)
        try withReadableErrors { try worker.run(stop: stop) }
        withExtendedLifetime(signals) {}
    }
}

func curveClientKeys(curveKey: String?, serverKey: String?) throws -> CurveClientKeys? {
    switch (curveKey, serverKey) {
    case (nil, nil): return nil
    case let (key?, server?): return try withReadableErrors { try CurveClientKeys.load(keyFile: key, serverKey: server) }
    default: throw ValidationError("CURVE needs both --curve-key and --server-key")
    }
}

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run a broker and N local workers in one process (one machine); more workers may join from elsewhere.")

    @Option(help: "Client endpoint(s).") var clients: String = "tcp://127.0.0.1:5555"
    @Option(help: "Worker endpoint(s); the local workers connect to the first.") var workers: String = "tcp://127.0.0.1:5556"
    @Option(name: .customLong("local-workers"), help: "Local worker threads, each running one job at a time.") var localWorkers: Int = 1
    @Option(help: "CURVE key folder (as for broker); local workers get a fresh key added to the worker allow-list.") var curveKeys: String?
    @Option(help: "Requests waiting for a worker before new ones are answered busy.") var queue: Int = 64
    @Option(help: "Dispatches of one request before it fails with worker_lost.") var maxAttempts: Int = 3
    @Option(help: "How long finished replies are kept for retries, in ms.") var resultTtlMs: Int = 60_000
    @OptionGroup var modelOptions: WorkerModelOptions
    @OptionGroup var timing: PoolTimingOptions
    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try compute.apply()
        guard localWorkers >= 0, localWorkers <= 64 else { throw ValidationError("--local-workers must be in 0…64") }
        var options = try brokerOptions(clients: clients, workers: workers, curveKeys: curveKeys, queue: queue,
                                        maxAttempts: maxAttempts, resultTtlMs: resultTtlMs, timing: timing)
        var workerCurve: CurveClientKeys?
        if var curve = options.curve {
            let local = try CurveKeypair.generate()
            curve.workers.insert(local.publicKey)
            options.curve = curve
            workerCurve = CurveClientKeys(keypair: local, serverKey: curve.keypair.publicKey)
        }
        let broker = try withReadableErrors { try Broker(options: options) }
        let handlers = try modelOptions.handlers(precision: try compute.weightPrecision())
        let stop = StopFlag()
        let signals = stopOnSignals(stop)
        let endpoint = (options.workerEndpoints.first ?? "").replacingOccurrences(of: "tcp://*:", with: "tcp://127.0.0.1:")
            .replacingOccurrences(of: "tcp://0.0.0.0:", with: "tcp://127.0.0.1:")
        var threads: [Thread] = []
        for i in 0..<localWorkers {
            var o = WorkerOptions(endpoint: endpoint, name: "local-\(i)")
            o.heartbeatMs = timing.heartbeatMs
            o.liveness = timing.liveness
            o.maxMessageBytes = timing.maxMessageBytes
            o.curve = workerCurve
            let worker = try withReadableErrors { try PoolWorker(options: o, handlers: handlers) }
            let t = Thread {
                do { try worker.run(stop: stop) } catch { logLine("worker local-\(i): \(error)") }
            }
            t.stackSize = 16 << 20
            t.start()
            threads.append(t)
        }
        logLine("serve: clients \(options.clientEndpoints.joined(separator: ",")), workers \(options.workerEndpoints.joined(separator: ",")), "
            + "\(localWorkers) local worker(s) serving \(handlers.map(\.op))")
        broker.run(stop: stop)
        while threads.contains(where: { !$0.isFinished }) { usleep(10_000) }
        withExtendedLifetime(signals) {}
    }
}

struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Make CURVE keypairs as Z85 text files (NAME.pub: public key; NAME.key: public + secret, mode 0600).",
        discussion: "Without --name, makes a full setup in DIR: broker.{key,pub}, clients/client.{key,pub}, "
            + "workers/worker.{key,pub}; `autodir broker --curve-keys DIR` then admits exactly the keys in "
            + "DIR/clients/*.pub as clients and DIR/workers/*.pub as workers. With --name, one keypair "
            + "(e.g. `keygen --out DIR/clients --name alice` to admit one more client).")

    @Option(help: "Output folder.") var out: String
    @Option(help: "Make one keypair NAME.{key,pub} instead of a full setup.") var name: String?

    func run() throws {
        guard ZMQ.hasCurve else { throw ValidationError("this libzmq has no CURVE support") }
        if let name {
            guard !name.isEmpty, !name.contains("/") else { throw ValidationError("--name must be a plain file name") }
            try withReadableErrors { try CurveKeypair.generate().write(directory: out, name: name) }
            print("\(out)/\(name).pub \(out)/\(name).key")
        } else {
            try withReadableErrors {
                try CurveKeypair.generate().write(directory: out, name: "broker")
                try CurveKeypair.generate().write(directory: out + "/clients", name: "client")
                try CurveKeypair.generate().write(directory: out + "/workers", name: "worker")
            }
            print("\(out)/broker.key (broker), \(out)/clients/client.key (a client), \(out)/workers/worker.key (a worker); "
                + "give clients and workers \(out)/broker.pub")
        }
    }
}
