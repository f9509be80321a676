// Protocol: the autodir pool's wire format (docs/PROTOCOL.md): a JSON header frame plus raw data frames.
import Foundation

/// Wire-format constants and helpers shared by broker, worker and clients.
public enum Wire {
    /// The protocol version this build speaks (`"v"` in every header).
    public static let version = 1
    /// The largest tensor accepted in elements (2^28 floats = 1 GiB).
    public static let maxElements = 1 << 28

    /// Error codes carried in `{"type": "error", "code": …}` replies.
    public enum Code: String, Sendable {
        case badRequest = "bad_request"          // malformed frames, JSON or fields
        case unsupportedVersion = "unsupported_version"
        case unknownOp = "unknown_op"
        case busy                                // the queue is full: retry later
        case deadlineExceeded = "deadline_exceeded"
        case cancelled
        case workerLost = "worker_lost"          // the job's workers died `max_attempts` times
        case unavailable                         // no registered worker serves the op (for `unservedTimeoutMs`)
        case invalidInput = "invalid_input"      // the handler refused the input (EngineError)
        case internalError = "internal"
        case notFound = "not_found"
    }

    /// Encodes a header dictionary as one JSON frame.
    public static func encode(_ header: [String: Any]) -> [UInt8] {
        guard JSONSerialization.isValidJSONObject(header),
              let data = try? JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]) else {
            return Array(#"{"v":1,"type":"error","code":"internal","message":"unencodable header"}"#.utf8)
        }
        return Array(data)
    }

    /// Decodes a header frame; nil unless it is a JSON object.
    public static func decode(_ frame: [UInt8]) -> [String: Any]? {
        guard !frame.isEmpty, frame.count <= 1 << 20, frame.first == UInt8(ascii: "{") else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(frame))) as? [String: Any]
    }

    /// An error reply for request `id`.
    public static func error(_ code: Code, _ message: String, id: String?) -> [[UInt8]] {
        var h: [String: Any] = ["v": version, "type": "error", "code": code.rawValue, "message": message]
        if let id { h["id"] = id }
        return [encode(h)]
    }

    static func int(_ v: Any?) -> Int? {
        switch v {
        case let i as Int: return i
        case let d as Double where d.isFinite && d == d.rounded() && abs(d) < 1e15: return Int(d)
        case let n as NSNumber:
            let d = n.doubleValue
            return d.isFinite && d == d.rounded() && abs(d) < 1e15 ? Int(d) : nil
        default: return nil
        }
    }

    static func double(_ v: Any?) -> Double? {
        switch v {
        case let i as Int: return Double(i)
        case let d as Double: return d.isFinite ? d : nil
        case let n as NSNumber: return n.doubleValue.isFinite ? n.doubleValue : nil
        default: return nil
        }
    }
}

/// A payload's description: `dtype` + `shape` in the header, the bytes in the data frames.
public struct Payload: Sendable, Equatable {
    public enum DType: String, Sendable { case float32, png, none }
    public var dtype: DType
    public var shape: [Int]

    public init(dtype: DType, shape: [Int] = []) { self.dtype = dtype; self.shape = shape }

    /// Elements of `shape`, nil on overflow or out-of-range dims.
    public static func elements(_ shape: [Int]) -> Int? {
        guard !shape.isEmpty, shape.count <= 8 else { return nil }
        var n = 1
        for d in shape {
            guard d > 0, d <= 1 << 20 else { return nil }
            let (m, o) = n.multipliedReportingOverflow(by: d)
            guard !o, m <= Wire.maxElements else { return nil }
            n = m
        }
        return n
    }

    /// Reads dtype/shape from a header and checks them against the data frames; the message says what is wrong.
    public static func parse(_ h: [String: Any], frames: ArraySlice<[UInt8]>) -> Result<Payload, PayloadError> {
        let name = h["dtype"] as? String ?? (frames.isEmpty ? "none" : "")
        guard let dtype = DType(rawValue: name) else {
            return .failure(PayloadError("dtype must be \"float32\", \"png\" or \"none\", got \(h["dtype"].map { "\($0)" } ?? "nothing")"))
        }
        switch dtype {
        case .none:
            guard frames.isEmpty else { return .failure(PayloadError("dtype none takes no data frames, got \(frames.count)")) }
            return .success(Payload(dtype: .none))
        case .png:
            guard frames.count == 1, let f = frames.first, f.count >= 8 else {
                return .failure(PayloadError("dtype png takes one data frame of PNG bytes, got \(frames.count) frames"))
            }
            return .success(Payload(dtype: .png))
        case .float32:
            guard let raw = h["shape"] as? [Any] else { return .failure(PayloadError("float32 needs \"shape\": [dims]")) }
            let dims = raw.compactMap { Wire.int($0) }
            guard dims.count == raw.count, let n = elements(dims) else {
                return .failure(PayloadError("bad shape \(raw): 1…8 positive dims, at most \(Wire.maxElements) elements"))
            }
            guard frames.count == 1, let f = frames.first else {
                return .failure(PayloadError("float32 takes one data frame, got \(frames.count)"))
            }
            guard f.count == n * 4 else {
                return .failure(PayloadError("shape \(dims) needs \(n * 4) bytes, data frame has \(f.count)"))
            }
            return .success(Payload(dtype: .float32, shape: dims))
        }
    }

    /// Header fields for this payload.
    public var headerFields: [String: Any] {
        dtype == .float32 ? ["dtype": dtype.rawValue, "shape": shape] : ["dtype": dtype.rawValue]
    }
}

public struct PayloadError: Error, CustomStringConvertible {
    public let description: String
    init(_ s: String) { description = s }
}

/// Float32 little-endian bytes ⇄ [Float] (this engine runs on little-endian hosts only).
public enum FloatBytes {
    public static func bytes(_ values: UnsafeBufferPointer<Float>) -> [UInt8] {
        Array(UnsafeRawBufferPointer(values))
    }

    public static func bytes(_ values: [Float]) -> [UInt8] {
        values.withUnsafeBufferPointer { bytes($0) }
    }

    public static func floats(_ bytes: [UInt8]) -> [Float] {
        var out = [Float](repeating: 0, count: bytes.count / 4)
        out.withUnsafeMutableBytes { dst in bytes.withUnsafeBytes { src in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[0..<(bytes.count / 4 * 4)])) } }
        return out
    }
}
