// Curve: CURVE key files (Z85 text) and the ZAP handler that checks client and worker keys against separate allow-lists.
import CZmq
import Foundation

/// A CURVE keypair as Z85 text.
public struct CurveKeypair: Sendable, Equatable {
    public let publicKey: String
    public let secretKey: String

    public init(publicKey: String, secretKey: String) { self.publicKey = publicKey; self.secretKey = secretKey }

    public static func generate() throws -> CurveKeypair {
        let (p, s) = try ZMQ.curveKeypair()
        return CurveKeypair(publicKey: p, secretKey: s)
    }

    /// Writes `NAME.pub` (the public key, one line) and `NAME.key` (public then secret key, mode 0600) into `dir`.
    public func write(directory dir: String, name: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let pub = dir + "/" + name + ".pub", key = dir + "/" + name + ".key"
        guard FileManager.default.createFile(atPath: pub, contents: Data((publicKey + "\n").utf8)),
              FileManager.default.createFile(atPath: key, contents: Data((publicKey + "\n" + secretKey + "\n").utf8),
                                             attributes: [.posixPermissions: 0o600]) else {
            throw CurveError("cannot write \(pub) / \(key)")
        }
    }

    /// Reads a `NAME.key` file written by `write` (`autodir keygen`).
    public static func read(keyFile: String) throws -> CurveKeypair {
        let lines = try CurveKeypair.lines(keyFile)
        guard lines.count >= 2, ZMQ.isZ85Key(lines[0]), ZMQ.isZ85Key(lines[1]) else {
            throw CurveError("\(keyFile): expected two Z85 keys (public, secret), one per line")
        }
        return CurveKeypair(publicKey: lines[0], secretKey: lines[1])
    }

    /// Reads a public key: a `.pub` file, a `.key` file (its first line) or the Z85 text itself.
    public static func publicKey(_ fileOrKey: String) throws -> String {
        if ZMQ.isZ85Key(fileOrKey) && !FileManager.default.fileExists(atPath: fileOrKey) { return fileOrKey }
        let lines = try CurveKeypair.lines(fileOrKey)
        guard let first = lines.first, ZMQ.isZ85Key(first) else { throw CurveError("\(fileOrKey): no Z85 public key") }
        return first
    }

    static func lines(_ path: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else { throw CurveError("cannot read \(path)") }
        return String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
    }

    /// Public keys of every `*.pub` file in `dir` (an allow-list); empty if the folder is missing.
    public static func allowList(directory dir: String) throws -> Set<String> {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return Set(try names.filter { $0.hasSuffix(".pub") }.map { try publicKey(dir + "/" + $0) })
    }
}

public struct CurveError: Error, CustomStringConvertible {
    public let description: String
    init(_ s: String) { description = s }
}

/// A CURVE client's keys: its own keypair and the server's public key.
public struct CurveClientKeys: Sendable {
    public let keypair: CurveKeypair
    public let serverKey: String
    public init(keypair: CurveKeypair, serverKey: String) { self.keypair = keypair; self.serverKey = serverKey }

    /// `--curve-key FILE.key --server-key FILE.pub`.
    public static func load(keyFile: String, serverKey: String) throws -> CurveClientKeys {
        CurveClientKeys(keypair: try CurveKeypair.read(keyFile: keyFile), serverKey: try CurveKeypair.publicKey(serverKey))
    }

    func apply(to s: ZMQSocket) throws {
        try s.set(ZMQ_CURVE_SERVERKEY, string: serverKey)
        try s.set(ZMQ_CURVE_PUBLICKEY, string: keypair.publicKey)
        try s.set(ZMQ_CURVE_SECRETKEY, string: keypair.secretKey)
    }
}

/// The broker's CURVE setup: its keypair and the allowed client and worker public keys.
///
/// Folder layout read by `load(directory:)` (made by `autodir keygen --out DIR --setup`):
/// `DIR/broker.key`, `DIR/clients/*.pub`, `DIR/workers/*.pub`.
public struct CurveServerKeys: Sendable {
    public let keypair: CurveKeypair
    public var clients: Set<String>
    public var workers: Set<String>

    public init(keypair: CurveKeypair, clients: Set<String>, workers: Set<String>) {
        self.keypair = keypair; self.clients = clients; self.workers = workers
    }

    public static func load(directory dir: String) throws -> CurveServerKeys {
        let keys = CurveServerKeys(keypair: try CurveKeypair.read(keyFile: dir + "/broker.key"),
                                   clients: try CurveKeypair.allowList(directory: dir + "/clients"),
                                   workers: try CurveKeypair.allowList(directory: dir + "/workers"))
        return keys
    }

    /// Makes `s` a CURVE server whose handshakes ZAP checks in `domain` ("clients" or "workers").
    func apply(to s: ZMQSocket, domain: String) throws {
        try s.set(ZMQ_CURVE_SERVER, 1)
        try s.set(ZMQ_CURVE_SECRETKEY, string: keypair.secretKey)
        try s.set(ZMQ_ZAP_DOMAIN, string: domain)
    }
}

/// ZAP (RFC 27) handler on inproc://zeromq.zap.01: every CURVE handshake on the broker's sockets is checked
/// here; the key must be in the allow-list of the socket's domain, so a client key cannot join as a worker.
final class ZAPHandler {
    let keys: CurveServerKeys
    let socket: ZMQSocket
    private(set) var refused = 0
    private(set) var accepted = 0

    /// Binds the handler socket; must happen before the CURVE sockets bind.
    init(context: ZMQContext, keys: CurveServerKeys) throws {
        self.keys = keys
        socket = try ZMQSocket(context, .rep)
        try socket.set(ZMQ_LINGER, 0)
        try socket.bind("inproc://zeromq.zap.01")
    }

    /// Answers ZAP requests until `stop` is set. Runs on its own thread (it owns `socket`).
    func run(stop: StopFlag) {
        while !stop.isSet {
            guard let req = try? socket.receive(timeoutMs: 50) else { continue }
            _ = try? socket.send(answer(req))
        }
        socket.close()
    }

    /// ZAP request: version, request id, domain, address, identity, mechanism, credentials…
    func answer(_ f: [[UInt8]]) -> [[UInt8]] {
        let requestId = f.count > 1 ? f[1] : []
        func reply(_ ok: Bool, _ text: String, user: String = "") -> [[UInt8]] {
            if ok { accepted += 1 } else { refused += 1 }
            return [Array("1.0".utf8), requestId, Array((ok ? "200" : "400").utf8), Array(text.utf8), Array(user.utf8), []]
        }
        guard f.count >= 6, String(decoding: f[0], as: UTF8.self) == "1.0" else { return reply(false, "bad ZAP request") }
        let domain = String(decoding: f[2], as: UTF8.self), mechanism = String(decoding: f[5], as: UTF8.self)
        guard mechanism == "CURVE", f.count >= 7, f[6].count == 32, let key = ZMQ.z85Encode(f[6]) else {
            return reply(false, "CURVE required")
        }
        let allowed: Set<String>
        switch domain {
        case "clients": allowed = keys.clients
        case "workers": allowed = keys.workers
        default: return reply(false, "unknown domain")
        }
        return allowed.contains(key) ? reply(true, "OK", user: key) : reply(false, "key not allowed in \(domain)")
    }
}

/// A thread-safe flag used to stop loops running on other threads.
public final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    public init() {}
    public var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    public func set() { lock.lock(); value = true; lock.unlock() }
}
