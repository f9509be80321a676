// Test support for the pool: spawning the built autodir-cli, ports, waits, a seeded RNG.
import Foundation
import XCTest
@testable import Worker

/// A small seeded generator for fuzz inputs (xorshift64*).
struct FuzzRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }
    mutating func next() -> UInt64 {
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
}

enum Pool {
    /// The autodir-cli binary next to the test bundle (or $AUTODIR_CLI).
    static func binary() throws -> String {
        if let env = ProcessInfo.processInfo.environment["AUTODIR_CLI"] { return env }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<3 {
            let candidate = dir.appendingPathComponent("autodir-cli").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        let bundle = Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("autodir-cli").path
        if FileManager.default.isExecutableFile(atPath: bundle) { return bundle }
        throw XCTSkip("autodir-cli not found next to the tests (build it, or set AUTODIR_CLI)")
    }

    private static let portLock = NSLock()
    nonisolated(unsafe) private static var nextPort = 20000 + Int(getpid() % 2000) * 10

    /// A loopback port that was free a moment ago.
    static func port() -> Int {
        portLock.lock(); defer { portLock.unlock() }
        while true {
            nextPort += 1
            if nextPort > 60000 { nextPort = 20000 }
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(nextPort).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let ok = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if ok == 0 { return nextPort }
        }
    }

    static func endpoint(_ port: Int) -> String { "tcp://127.0.0.1:\(port)" }

    /// Spawns autodir-cli with `args`; output goes to a log file under the temporary folder.
    static func spawn(_ args: [String]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try binary())
        p.arguments = args
        let log = NSTemporaryDirectory() + "autodir-pool-test-\(getpid()).log"
        if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
        let h = FileHandle(forWritingAtPath: log)
        h?.seekToEndOfFile()
        p.standardOutput = h ?? FileHandle.nullDevice
        p.standardError = h ?? FileHandle.nullDevice
        try p.run()
        return p
    }

    /// Runs autodir-cli to completion and returns its exit status and stdout.
    static func runTool(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try binary())
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// Short heartbeats for tests: a dead peer is noticed within 5 × 100 ms (5 leaves room for a loaded machine).
    static let fast = ["--heartbeat-ms", "100", "--liveness", "5"]

    static func broker(_ clients: Int, _ workers: Int, _ extra: [String] = []) throws -> Process {
        try spawn(["broker", "--clients", endpoint(clients), "--workers", endpoint(workers)] + fast + extra)
    }

    static func worker(_ workers: Int, name: String, _ extra: [String] = []) throws -> Process {
        try spawn(["worker", "--connect", endpoint(workers), "--name", name, "--reconnect-ms", "50"] + fast + extra)
    }

    static func kill9(_ p: Process) {
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }

    static func stop(_ ps: [Process]) {
        for p in ps where p.isRunning { p.terminate() }
        let until = Date().addingTimeInterval(2)
        for p in ps { while p.isRunning && Date() < until { usleep(10_000) } }
        for p in ps where p.isRunning { kill9(p) }
    }

    /// Polls the broker's status until `ready` holds (or fails the test after `seconds`).
    @discardableResult
    static func waitStatus(_ clients: Int, seconds: Double = 10, curve: CurveClientKeys? = nil,
                           file: StaticString = #filePath, line: UInt = #line,
                           _ ready: ([String: Any]) -> Bool) -> [String: Any]? {
        let until = Date().addingTimeInterval(seconds)
        var last: [String: Any]?
        while Date() < until {
            if let c = try? PoolClient(endpoint: endpoint(clients), timeoutMs: 300, retries: 0, curve: curve),
               let s = try? c.status() {
                last = s
                if ready(s) { return s }
            }
            usleep(50_000)
        }
        XCTFail("broker status never got ready: \(String(describing: last))", file: file, line: line)
        return nil
    }

    static func workers(_ s: [String: Any]) -> Int { s["worker_count"] as? Int ?? -1 }

    /// A float32 payload whose values encode `tag`.
    static func tensor(tag: Int, count: Int = 64) -> (Payload, [[UInt8]]) {
        let values = (0..<count).map { Float(tag) * 1000 + Float($0) }
        return (Payload(dtype: .float32, shape: [count]), [FloatBytes.bytes(values)])
    }
}
