// ZMQ: a small safe Swift wrapper over libzmq (context, socket, options, multipart send/receive, poll, CURVE keys).
import CZmq
import Foundation

public enum ZMQ {
    /// The linked libzmq's version, e.g. "4.3.4".
    public static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return "\(major).\(minor).\(patch)"
    }

    /// Whether libzmq was built with CURVE security (libsodium or tweetnacl).
    public static var hasCurve: Bool { zmq_has("curve") != 0 }

    /// A new CURVE keypair as Z85 text (40 characters each).
    public static func curveKeypair() throws -> (publicKey: String, secretKey: String) {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw ZMQError.last("zmq_curve_keypair") }
        return (String(cString: pub), String(cString: sec))
    }

    /// Z85 text of a 32-byte binary key (as carried in a ZAP request's credentials frame).
    public static func z85Encode(_ bytes: [UInt8]) -> String? {
        guard bytes.count % 4 == 0, !bytes.isEmpty else { return nil }
        var out = [CChar](repeating: 0, count: bytes.count * 5 / 4 + 1)
        guard zmq_z85_encode(&out, bytes, bytes.count) != nil else { return nil }
        return String(cString: out)
    }

    /// Whether `s` is a valid 40-character Z85 CURVE key.
    public static func isZ85Key(_ s: String) -> Bool {
        guard s.utf8.count == 40 else { return false }
        var out = [UInt8](repeating: 0, count: 32)
        return zmq_z85_decode(&out, s) != nil
    }

    /// Waits until one of `items` is ready or `timeoutMs` passes (-1: forever). Returns the revents per item.
    public static func poll(_ sockets: [ZMQSocket], timeoutMs: Int) throws -> [Bool] {
        var items = sockets.map { zmq_pollitem_t(socket: $0.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
        let rc = zmq_poll(&items, Int32(items.count), timeoutMs)
        if rc < 0 {
            if zmq_errno() == EINTR { return sockets.map { _ in false } }
            throw ZMQError.last("zmq_poll")
        }
        return items.map { $0.revents & Int16(ZMQ_POLLIN) != 0 }
    }
}

/// A libzmq failure: the call and errno.
public struct ZMQError: Error, CustomStringConvertible {
    public let call: String
    public let errno: Int32
    public var description: String { "\(call): \(String(cString: zmq_strerror(errno))) (errno \(errno))" }
    static func last(_ call: String) -> ZMQError { ZMQError(call: call, errno: zmq_errno()) }
}

/// One ZeroMQ context; sockets are made from it. Terminated when the last reference goes.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    public init() throws {
        guard let h = zmq_ctx_new() else { throw ZMQError.last("zmq_ctx_new") }
        handle = h
    }

    deinit { zmq_ctx_term(handle) }
}

/// One ZeroMQ socket. Not thread-safe (like libzmq's): use it from one thread at a time.
public final class ZMQSocket: @unchecked Sendable {
    public let context: ZMQContext
    private(set) var handle: UnsafeMutableRawPointer?

    public enum Kind { case router, dealer, rep, req, push, pull, pair
        var raw: Int32 {
            switch self {
            case .router: return ZMQ_ROUTER
            case .dealer: return ZMQ_DEALER
            case .rep: return ZMQ_REP
            case .req: return ZMQ_REQ
            case .push: return ZMQ_PUSH
            case .pull: return ZMQ_PULL
            case .pair: return ZMQ_PAIR
            }
        }
    }

    /// Frames beyond this count in one message are drained and the message flagged as malformed.
    public static let maxFrames = 64

    public init(_ context: ZMQContext, _ kind: Kind) throws {
        self.context = context
        guard let h = zmq_socket(context.handle, kind.raw) else { throw ZMQError.last("zmq_socket") }
        handle = h
    }

    deinit { close() }

    /// Closes the socket (idempotent). Pending messages are kept for ZMQ_LINGER ms.
    public func close() {
        if let h = handle { zmq_close(h); handle = nil }
    }

    public func set(_ option: Int32, _ value: Int32) throws {
        var v = value
        guard zmq_setsockopt(handle, option, &v, MemoryLayout<Int32>.size) == 0 else { throw ZMQError.last("zmq_setsockopt(\(option))") }
    }

    public func set(_ option: Int32, int64 value: Int64) throws {
        var v = value
        guard zmq_setsockopt(handle, option, &v, MemoryLayout<Int64>.size) == 0 else { throw ZMQError.last("zmq_setsockopt(\(option))") }
    }

    public func set(_ option: Int32, bytes: [UInt8]) throws {
        let rc = bytes.withUnsafeBytes { zmq_setsockopt(handle, option, $0.baseAddress, bytes.count) }
        guard rc == 0 else { throw ZMQError.last("zmq_setsockopt(\(option))") }
    }

    public func set(_ option: Int32, string: String) throws { try set(option, bytes: Array(string.utf8)) }

    public func bind(_ endpoint: String) throws {
        guard zmq_bind(handle, endpoint) == 0 else { throw ZMQError.last("zmq_bind(\(endpoint))") }
    }

    public func connect(_ endpoint: String) throws {
        guard zmq_connect(handle, endpoint) == 0 else { throw ZMQError.last("zmq_connect(\(endpoint))") }
    }

    /// Sends a multipart message. With `dontWait`, returns false instead of blocking when the peer's queue
    /// is full (EAGAIN); a ROUTER_MANDATORY socket throws EHOSTUNREACH for an unknown peer.
    @discardableResult
    public func send(_ frames: [[UInt8]], dontWait: Bool = false) throws -> Bool {
        guard !frames.isEmpty else { return true }
        var zero: UInt8 = 0
        for (i, frame) in frames.enumerated() {
            var flags: Int32 = i < frames.count - 1 ? ZMQ_SNDMORE : 0
            if dontWait { flags |= ZMQ_DONTWAIT }
            let rc = frame.withUnsafeBytes { buf -> Int32 in
                withUnsafePointer(to: &zero) { z in  // an empty frame still needs a valid pointer
                    zmq_send(handle, buf.baseAddress ?? UnsafeRawPointer(z), buf.count, flags)
                }
            }
            if rc < 0 {
                let e = zmq_errno()
                if e == EAGAIN && i == 0 { return false }
                if e == EINTR { throw ZMQError(call: "zmq_send", errno: e) }
                throw ZMQError(call: "zmq_send", errno: e)
            }
        }
        return true
    }

    /// Receives one multipart message, or nil when none arrives within `timeoutMs` (0: don't wait, -1: forever).
    /// A message with more than `maxFrames` frames is drained and returned as nil with `overflow` set.
    public func receive(timeoutMs: Int = -1) throws -> [[UInt8]]? {
        if timeoutMs >= 0 {
            let ready = try ZMQ.poll([self], timeoutMs: timeoutMs)
            if !ready[0] { return nil }
        }
        var frames: [[UInt8]] = []
        var more = true
        var overflow = false
        while more {
            var msg = zmq_msg_t()
            zmq_msg_init(&msg)
            defer { zmq_msg_close(&msg) }
            let rc = zmq_msg_recv(&msg, handle, frames.isEmpty && timeoutMs >= 0 ? ZMQ_DONTWAIT : 0)
            if rc < 0 {
                let e = zmq_errno()
                if frames.isEmpty && (e == EAGAIN || e == EINTR) { return nil }
                throw ZMQError(call: "zmq_msg_recv", errno: e)
            }
            let n = zmq_msg_size(&msg)
            if frames.count < ZMQSocket.maxFrames {
                if n > 0, let p = zmq_msg_data(&msg) {
                    frames.append(Array(UnsafeRawBufferPointer(start: p, count: n)))
                } else {
                    frames.append([])
                }
            } else {
                overflow = true
            }
            more = zmq_msg_more(&msg) != 0
        }
        if overflow { frames.append(ZMQSocket.overflowMarker) }
        return frames
    }

    /// Appended as the last frame when a message had more than `maxFrames` frames (never a valid frame).
    public static let overflowMarker: [UInt8] = Array("\u{0}autodir-frame-overflow\u{0}".utf8)
}
