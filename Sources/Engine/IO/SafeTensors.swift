// SafeTensors: memory-mapped reader and writer for the safetensors format (huggingface/safetensors), and the strict WeightLoader.
//
// File layout (https://github.com/huggingface/safetensors#format): an unsigned 64-bit little-endian
// header length N, N bytes of UTF-8 JSON, then the data region. The JSON object maps each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data region),
// plus an optional "__metadata__" object of string → string. Data is little-endian, row-major.
//
// Everything read from a file is validated before use: a corrupt or hostile file gives an
// `EngineError`, never a trap. (A file truncated by another process *while mapped* can still raise
// SIGBUS on access; that is inherent to mmap and is why the whole extent is checked at open.)
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Element types of the safetensors format. Only `f32`, `f16` and `bf16` can be read as float32
/// tensors; the others are parsed so that their byte extents can be validated and reported by name.
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16"
    case f64 = "F64", f8e4m3 = "F8_E4M3", f8e5m2 = "F8_E5M2"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8"
    case u64 = "U64", u32 = "U32", u16 = "U16", u8 = "U8", bool = "BOOL"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f64, .i64, .u64: return 8
        case .f32, .i32, .u32: return 4
        case .f16, .bf16, .i16, .u16: return 2
        case .f8e4m3, .f8e5m2, .i8, .u8, .bool: return 1
        }
    }

    /// Whether `SafeTensors.tensor(_:)` can return this type (widened to float32).
    public var isFloatReadable: Bool { self == .f32 || self == .f16 || self == .bf16 }
}

/// A safetensors file, memory-mapped and validated at open.
///
/// Immutable after `init`, so one instance may be read from many threads. F32 tensors whose data is
/// 4-byte aligned are returned as zero-copy views into the mapping (which they keep alive); the
/// mapping is private copy-on-write, so writing into such a tensor never changes the file.
public final class SafeTensors: @unchecked Sendable {
    /// The header of one tensor, validated against the file.
    struct Entry {
        let dtypeName: String
        let dtype: DType?
        let shape: [Int]
        let count: Int
        let begin: Int  // relative to the data region
        let end: Int
    }

    /// Largest accepted JSON header, as in the reference implementation.
    public static let maxHeaderBytes = 100_000_000

    public let path: String
    /// Tensor names, sorted.
    public let keys: [String]
    /// The "__metadata__" object of the header (empty when absent).
    public let metadata: [String: String]
    /// Size of the data region in bytes.
    public let dataByteCount: Int

    private let entries: [String: Entry]
    private let base: UnsafeMutableRawPointer
    private let mappedLength: Int
    private let dataStart: Int

    /// Maps the file at `path` and validates its header and every tensor's byte extent.
    public init(path: String) throws {
        self.path = path
        let (base, length) = try Self.map(path)
        do {
            let headerLength = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
            guard headerLength <= UInt64(Self.maxHeaderBytes) else {
                throw EngineError.format("\(path): header length \(headerLength) exceeds the \(Self.maxHeaderBytes)-byte limit")
            }
            guard headerLength <= UInt64(length - 8) else {
                throw EngineError.format("\(path): header length \(headerLength) exceeds the file (\(length) bytes)")
            }
            let n = Int(headerLength)
            let header = UnsafeRawBufferPointer(start: base + 8, count: n)
            let dataLength = length - 8 - n
            let (entries, metadata) = try Self.parseHeader(header, dataLength: dataLength, path: path)
            self.entries = entries
            self.metadata = metadata
            self.keys = entries.keys.sorted()
            self.dataStart = 8 + n
            self.dataByteCount = dataLength
        } catch {
            munmap(base, max(length, 1))
            throw error
        }
        self.base = base
        self.mappedLength = length
    }

    deinit {
        munmap(base, max(mappedLength, 1))
    }

    /// The dtype (as written in the file) and shape of `key`, or nil when absent.
    public func entry(_ key: String) -> (dtype: String, shape: [Int])? {
        guard let e = entries[key] else { return nil }
        return (e.dtypeName, e.shape)
    }

    /// The tensor `key` as float32: F32 as a view (or a copy when unaligned), F16 and BF16 widened.
    public func tensor(_ key: String) throws -> Tensor {
        guard let e = entries[key] else {
            throw EngineError.weights("\(path): no tensor '\(key)'")
        }
        guard let dtype = e.dtype else {
            throw EngineError.format("\(path): tensor '\(key)' has unknown dtype \(e.dtypeName) (readable: F32, F16, BF16)")
        }
        if e.count == 0 { return Tensor(zeros: e.shape) }
        let src = UnsafeRawPointer(base + dataStart + e.begin)
        switch dtype {
        case .f32:
            if Int(bitPattern: src) % MemoryLayout<Float>.alignment == 0 {
                let p = UnsafeMutableRawPointer(mutating: src).bindMemory(to: Float.self, capacity: max(e.count, 1))
                return Tensor(borrowing: p, shape: e.shape, owner: self)
            }
            let t = Tensor(uninitialized: e.shape)
            UnsafeMutableRawPointer(t.data).copyMemory(from: src, byteCount: e.count * 4)
            return t
        case .f16:
            let t = Tensor(uninitialized: e.shape)
            let dst = t.data
            Parallel.forEachChunk(e.count, grain: 1 << 16) { range in
                for i in range {
                    let bits = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    dst[i] = Self.widenF16(bits)
                }
            }
            return t
        case .bf16:
            let t = Tensor(uninitialized: e.shape)
            let dst = t.data
            Parallel.forEachChunk(e.count, grain: 1 << 16) { range in
                for i in range {
                    let bits = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    dst[i] = Float(bitPattern: UInt32(bits) << 16)
                }
            }
            return t
        default:
            throw EngineError.format("\(path): tensor '\(key)' has dtype \(e.dtypeName), which cannot be read as float32 (readable: F32, F16, BF16)")
        }
    }

    /// The 16-bit values of `key` in place (no copy), when it is stored as F16 or BF16 at an even offset.
    func halfView(_ key: String) -> (pointer: UnsafePointer<UInt16>, dtype: DType)? {
        guard let e = entries[key], let dtype = e.dtype, dtype == .f16 || dtype == .bf16, e.count > 0 else { return nil }
        let src = UnsafeRawPointer(base + dataStart + e.begin)
        guard Int(bitPattern: src) % 2 == 0 else { return nil }
        return (src.assumingMemoryBound(to: UInt16.self), dtype)
    }

    // MARK: - Conversions

    /// IEEE binary16 bits → float32, exact (subnormals, infinities and NaN payloads included).
    ///
    /// Bit manipulation after F. Giesen's `half_to_float`: about 10× faster than the
    /// `Float(Float16(bitPattern:))` library call, and checked against it for all 65,536 inputs.
    @inline(__always)
    static func widenF16(_ h: UInt16) -> Float {
        var o = UInt32(h & 0x7FFF) << 13        // exponent and mantissa moved into place
        let exponent = o & 0x0F80_0000
        o &+= (127 - 15) << 23                   // rebias
        let magnitude: Float
        if exponent == 0x0F80_0000 {             // inf / NaN: exponent all ones
            o &+= (128 - 16) << 23
            magnitude = Float(bitPattern: o)
        } else if exponent == 0 {                // zero / subnormal: renormalise with one float subtraction
            o &+= 1 << 23
            magnitude = Float(bitPattern: o) - Float(bitPattern: 113 << 23)
        } else {
            magnitude = Float(bitPattern: o)
        }
        return Float(bitPattern: magnitude.bitPattern | UInt32(h & 0x8000) << 16)
    }

    /// float32 → IEEE binary16 bits, round to nearest even (overflow gives ±inf).
    @inline(__always)
    static func narrowF16(_ x: Float) -> UInt16 {
        Float16(x).bitPattern
    }

    /// float32 → bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
    @inline(__always)
    static func narrowBF16(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let rounded = bits &+ 0x7FFF &+ ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }

    // MARK: - Opening

    private static func map(_ path: String) throws -> (UnsafeMutableRawPointer, Int) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw EngineError.io("cannot open \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw EngineError.io("cannot stat \(path): \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw EngineError.io("\(path) is not a regular file")
        }
        let length = Int(st.st_size)
        guard length >= 8 else {
            throw EngineError.format("\(path): file is \(length) bytes, shorter than the 8-byte safetensors header length")
        }
        // Private + writable: copy-on-write pages, so a caller that writes into a zero-copy tensor
        // gets its own page instead of a fault, and the file is never modified.
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)
        guard let p, p != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw EngineError.io("cannot mmap \(path) (\(length) bytes): \(String(cString: strerror(errno)))")
        }
        return (p, length)
    }

    private static func parseHeader(_ bytes: UnsafeRawBufferPointer, dataLength: Int, path: String) throws
        -> ([String: Entry], [String: String]) {
        let root: HeaderJSON
        do {
            var parser = HeaderJSONParser(bytes)
            root = try parser.parseDocument()
        } catch let e as HeaderJSONParser.Failure {
            throw EngineError.format("\(path): header is not valid JSON: \(e.message) at byte \(e.offset) of the header")
        }
        guard case .object(let members) = root else {
            throw EngineError.format("\(path): header is not a JSON object")
        }
        var entries: [String: Entry] = [:]
        var metadata: [String: String] = [:]
        for (key, value) in members {
            if key == "__metadata__" {
                guard case .object(let items) = value else {
                    throw EngineError.format("\(path): __metadata__ is not a JSON object")
                }
                for (k, v) in items {
                    guard case .string(let s) = v else {
                        throw EngineError.format("\(path): __metadata__ value for '\(k)' is not a string")
                    }
                    metadata[k] = s
                }
                continue
            }
            entries[key] = try parseEntry(key, value, dataLength: dataLength, path: path)
        }
        // Non-empty extents may not overlap (gaps are tolerated).
        let extents = entries.filter { $0.value.begin < $0.value.end }
            .sorted { ($0.value.begin, $0.key) < ($1.value.begin, $1.key) }
        for (a, b) in zip(extents, extents.dropFirst()) where b.value.begin < a.value.end {
            throw EngineError.format("\(path): data of tensors '\(a.key)' [\(a.value.begin), \(a.value.end)) and '\(b.key)' [\(b.value.begin), \(b.value.end)) overlap")
        }
        return (entries, metadata)
    }

    private static func parseEntry(_ key: String, _ value: HeaderJSON, dataLength: Int, path: String) throws -> Entry {
        func bad(_ what: String) -> EngineError { .format("\(path): tensor '\(key)': \(what)") }
        guard case .object(let fields) = value else { throw bad("header entry is not a JSON object") }
        var dtypeValue: HeaderJSON?, shapeValue: HeaderJSON?, offsetsValue: HeaderJSON?
        for (k, v) in fields {
            switch k {
            case "dtype": dtypeValue = v
            case "shape": shapeValue = v
            case "data_offsets": offsetsValue = v
            default: continue
            }
        }
        guard let dtypeValue else { throw bad("missing \"dtype\"") }
        guard let shapeValue else { throw bad("missing \"shape\"") }
        guard let offsetsValue else { throw bad("missing \"data_offsets\"") }
        guard case .string(let dtypeName) = dtypeValue else { throw bad("\"dtype\" is not a string") }
        guard case .array(let dims) = shapeValue else { throw bad("\"shape\" is not an array") }
        var shape: [Int] = []
        var count = 1
        for d in dims {
            guard case .integer(let n) = d, n >= 0 else {
                throw bad("\"shape\" must hold non-negative integers, found \(d.summary)")
            }
            shape.append(n)
            let (p, overflow) = count.multipliedReportingOverflow(by: n)
            guard !overflow else { throw bad("element count of shape \(dims.map(\.summary)) overflows") }
            count = p
        }
        guard case .array(let offs) = offsetsValue, offs.count == 2 else {
            throw bad("\"data_offsets\" is not an array of two integers")
        }
        guard case .integer(let begin) = offs[0], case .integer(let end) = offs[1], begin >= 0, end >= 0 else {
            throw bad("\"data_offsets\" must be non-negative integers, found [\(offs[0].summary), \(offs[1].summary)]")
        }
        guard begin <= end else { throw bad("data_offsets [\(begin), \(end)]: begin > end") }
        guard end <= dataLength else {
            throw bad("data_offsets [\(begin), \(end)] run past the data region (\(dataLength) bytes; file truncated?)")
        }
        let dtype = DType(rawValue: dtypeName)
        if let dtype {
            let (bytes, overflow) = count.multipliedReportingOverflow(by: dtype.size)
            guard !overflow, bytes == end - begin else {
                throw bad("data_offsets [\(begin), \(end)] hold \(end - begin) bytes, but shape \(shape) of \(dtypeName) needs \(overflow ? "more than Int.max" : String(bytes))")
            }
        }
        return Entry(dtypeName: dtypeName, dtype: dtype, shape: shape, count: count, begin: begin, end: end)
    }

    // MARK: - Writing

    /// Writes `tensors` as a safetensors file, converted to `dtype` (F32, F16 or BF16; F16/BF16 round
    /// to nearest even). Keys are sorted, data is contiguous in key order, and the header is padded
    /// with spaces to a multiple of 8 bytes. The file is written beside `path` and renamed into place.
    public static func write(_ tensors: [(String, Tensor)], dtype: DType = .f32, metadata: [String: String] = [:],
                             to path: String) throws {
        guard dtype.isFloatReadable else {
            throw EngineError.invalidArgument("SafeTensors.write: dtype \(dtype.rawValue) not supported (F32, F16, BF16)")
        }
        let sorted = tensors.sorted { $0.0 < $1.0 }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.0 == b.0 {
            throw EngineError.invalidArgument("SafeTensors.write: duplicate tensor name '\(a.0)'")
        }
        if sorted.contains(where: { $0.0 == "__metadata__" }) {
            throw EngineError.invalidArgument("SafeTensors.write: '__metadata__' is reserved and cannot name a tensor")
        }
        var json = "{"
        var fields: [String] = []
        if !metadata.isEmpty {
            let items = metadata.sorted { $0.key < $1.key }.map { "\(jsonString($0.key)):\(jsonString($0.value))" }
            fields.append("\"__metadata__\":{\(items.joined(separator: ","))}")
        }
        var offset = 0
        for (name, t) in sorted {
            let bytes = t.count * dtype.size
            let shape = t.shape.map(String.init).joined(separator: ",")
            fields.append("\(jsonString(name)):{\"dtype\":\"\(dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + bytes)]}")
            offset += bytes
        }
        json += fields.joined(separator: ",") + "}"
        var header = Array(json.utf8)
        while header.count % 8 != 0 { header.append(0x20) }

        let tmp = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw EngineError.io("cannot create \(tmp): \(String(cString: strerror(errno)))")
        }
        var pending = true
        defer {
            if pending { close(fd); unlink(tmp) }
        }
        func put(_ p: UnsafeRawPointer, _ n: Int) throws {
            guard writeAll(fd, p, n) else {
                throw EngineError.io("cannot write \(tmp): \(String(cString: strerror(errno)))")
            }
        }
        var lengthLE = UInt64(header.count).littleEndian
        try withUnsafeBytes(of: &lengthLE) { try put($0.baseAddress!, 8) }
        try header.withUnsafeBytes { try put($0.baseAddress!, $0.count) }
        let chunk = 1 << 18
        var scratch = [UInt16](repeating: 0, count: chunk)
        for (_, t) in sorted {
            switch dtype {
            case .f32:
                try put(UnsafeRawPointer(t.data), t.count * 4)
            default:
                var i = 0
                while i < t.count {
                    let n = min(chunk, t.count - i)
                    try scratch.withUnsafeMutableBufferPointer { buf in
                        for j in 0..<n {
                            let x = t.data[i + j]
                            buf[j] = (dtype == .f16 ? narrowF16(x) : narrowBF16(x)).littleEndian
                        }
                        try put(UnsafeRawPointer(buf.baseAddress!), 2 * n)
                    }
                    i += n
                }
            }
        }
        pending = false
        guard close(fd) == 0 else {
            let message = String(cString: strerror(errno))
            unlink(tmp)
            throw EngineError.io("cannot finish writing \(tmp): \(message)")
        }
        guard rename(tmp, path) == 0 else {
            let message = String(cString: strerror(errno))
            unlink(tmp)
            throw EngineError.io("cannot rename \(tmp) to \(path): \(message)")
        }
    }

    private static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}

/// write(2) until all `n` bytes are out (retrying on EINTR); false on error, with errno set.
private func writeAll(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Bool {
    var done = 0
    while done < n {
        let r = write(fd, p + done, n - done)
        if r < 0 && errno == EINTR { continue }
        guard r > 0 else { return false }
        done += r
    }
    return true
}

// MARK: - WeightLoader

/// Strict weight loading with nested prefixes.
///
/// Every key a model asks for must exist with the shape it gives, and `finish()` fails if any key in
/// the files was never taken: a typo or a renamed upstream key is an error that names it, never a
/// silently random weight. `scoped(_:)` loaders share the record of taken keys with their parent.
public final class WeightLoader: @unchecked Sendable {
    private final class Shared: @unchecked Sendable {
        let files: [SafeTensors]
        let index: [String: Int]  // key → position in `files`
        let randomSeed: UInt64?   // set for `WeightLoader.random(seed:)`
        let precision: WeightPrecision
        let lock = NSLock()
        var used: Set<String> = []
        init(files: [SafeTensors], index: [String: Int], randomSeed: UInt64? = nil, precision: WeightPrecision) {
            self.files = files
            self.index = index
            self.randomSeed = randomSeed
            self.precision = precision
        }
    }

    private let shared: Shared
    /// Prefix prepended (with a ".") to every name; empty at the root.
    public let prefix: String

    /// How `weight(_:shape:)` keeps convolution and linear weights in memory.
    public var precision: WeightPrecision { shared.precision }

    /// A loader over `files`, which together hold one model; a key present in two files is an error.
    /// `precision` is how the model's convolution and linear weights stay in memory.
    public init(_ files: [SafeTensors], precision: WeightPrecision = .float32) throws {
        var index: [String: Int] = [:]
        for (i, f) in files.enumerated() {
            for k in f.keys {
                if let j = index[k] {
                    throw EngineError.weights("tensor '\(k)' appears in both \(files[j].path) and \(f.path)")
                }
                index[k] = i
            }
        }
        self.shared = Shared(files: files, index: index, precision: precision)
        self.prefix = ""
    }

    /// A loader with no files that makes up every tensor asked for, for benchmarks and tests.
    ///
    /// Values are uniform in ±1/√fan_in (fan_in = elements per row of dimension 0; rank ≤ 1: ±0.1),
    /// a function of `seed` and the full key only, so a model gets the same weights on every run and
    /// thread count. `contains` is false and `shape` nil for every name; `finish()` always succeeds.
    public static func random(seed: UInt64 = 0, precision: WeightPrecision = .float32) -> WeightLoader {
        WeightLoader(shared: Shared(files: [], index: [:], randomSeed: seed, precision: precision), prefix: "")
    }

    public convenience init(path: String, precision: WeightPrecision = .float32) throws {
        try self.init([SafeTensors(path: path)], precision: precision)
    }

    public convenience init(paths: [String], precision: WeightPrecision = .float32) throws {
        try self.init(paths.map { try SafeTensors(path: $0) }, precision: precision)
    }

    private init(shared: Shared, prefix: String) {
        self.shared = shared
        self.prefix = prefix
    }

    /// A loader whose names are `prefix.name` (nested under this loader's own prefix).
    public func scoped(_ prefix: String) -> WeightLoader {
        if prefix.isEmpty { return self }
        return WeightLoader(shared: shared, prefix: key(prefix))
    }

    /// The full key for `name` under this loader's prefix.
    public func key(_ name: String) -> String {
        prefix.isEmpty ? name : prefix + "." + name
    }

    /// Whether the full key for `name` exists (does not count as taking it).
    public func contains(_ name: String) -> Bool {
        shared.index[key(name)] != nil
    }

    /// The stored shape of `name`, or nil when absent (does not count as taking it).
    public func shape(_ name: String) -> [Int]? {
        let k = key(name)
        guard let i = shared.index[k] else { return nil }
        return shared.files[i].entry(k)?.shape
    }

    /// Takes tensor `name`, which must exist with exactly `shape`.
    public func tensor(_ name: String, shape: [Int]) throws -> Tensor {
        let k = key(name)
        if let seed = shared.randomSeed { return try Self.randomTensor(key: k, shape: shape, seed: seed) }
        guard let i = shared.index[k] else {
            throw EngineError.weights("missing tensor '\(k)' (expected shape \(shape)) in \(filesDescription)")
        }
        let file = shared.files[i]
        if let stored = file.entry(k)?.shape, stored != shape {
            throw EngineError.weights("tensor '\(k)' in \(file.path) has shape \(stored), expected \(shape)")
        }
        let t = try file.tensor(k)
        markUsed(k)
        return t
    }

    /// Takes weight `name` (a convolution or linear weight), which must exist with exactly `shape`, kept
    /// as `precision`: a stored F16/BF16 tensor of that precision stays a view into the mapped file.
    public func weight(_ name: String, shape: [Int]) throws -> Weight {
        let k = key(name)
        if shared.precision != .float32, shared.randomSeed == nil, let i = shared.index[k],
           let view = shared.files[i].halfView(k),
           view.dtype == (shared.precision == .float16 ? .f16 : .bf16) {
            let file = shared.files[i]
            if let stored = file.entry(k)?.shape, stored != shape {
                throw EngineError.weights("tensor '\(k)' in \(file.path) has shape \(stored), expected \(shape)")
            }
            markUsed(k)
            return Weight(halfs: view.pointer, shape: shape, precision: shared.precision, owner: file)
        }
        return try resident(tensor(name, shape: shape), name: name)
    }

    /// `tensor` (e.g. weights fused at load time from several keys) kept as this loader's `precision`.
    public func resident(_ tensor: Tensor, name: String) throws -> Weight {
        try Weight.narrowing(tensor, to: shared.precision, name: key(name))
    }

    /// Marks `name` as taken without reading it (buffers a model does not use, such as the I64
    /// `position_ids` some CLIP checkpoints carry). Absent names are ignored.
    public func ignore(_ name: String) {
        let k = key(name)
        if shared.index[k] != nil { markUsed(k) }
    }

    /// Fails, listing them, if any key of the files (under every prefix) was never taken.
    public func finish() throws {
        shared.lock.lock()
        let used = shared.used
        shared.lock.unlock()
        let unexpected = shared.index.keys.filter { !used.contains($0) }.sorted()
        guard unexpected.isEmpty else {
            let shown = unexpected.prefix(20).map { "'\($0)'" }.joined(separator: ", ")
            let more = unexpected.count > 20 ? " and \(unexpected.count - 20) more" : ""
            throw EngineError.weights("\(unexpected.count) unexpected tensor(s) in \(filesDescription) never loaded: \(shown)\(more)")
        }
    }

    private static func randomTensor(key: String, shape: [Int], seed: UInt64) throws -> Tensor {
        var count = 1
        for d in shape {
            let (p, overflow) = count.multipliedReportingOverflow(by: d)
            guard d >= 0, !overflow, p <= 1 << 40 else {
                throw EngineError.invalidArgument("random weight '\(key)': invalid shape \(shape)")
            }
            count = p
        }
        let fanIn = shape.count >= 2 && shape[0] > 0 ? count / shape[0] : 0
        let bound: Float = fanIn > 0 ? 1 / Float(fanIn).squareRoot() : 0.1
        var keyHash: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a: stable across processes, unlike Hasher
        for b in key.utf8 { keyHash = (keyHash ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        let t = Tensor(uninitialized: shape)
        let dst = t.data
        let chunk = 1 << 16
        Parallel.forEachChunk((count + chunk - 1) / chunk) { range in
            for c in range {
                var state = seed ^ keyHash ^ (UInt64(c) &* 0x9E37_79B9_7F4A_7C15)
                for i in (c * chunk)..<min(count, (c + 1) * chunk) {
                    state &+= 0x9E37_79B9_7F4A_7C15  // SplitMix64
                    var z = state
                    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                    z ^= z >> 31
                    dst[i] = (Float(z >> 40) * 0x1p-24 * 2 - 1) * bound
                }
            }
        }
        return t
    }

    private func markUsed(_ k: String) {
        shared.lock.lock()
        shared.used.insert(k)
        shared.lock.unlock()
    }

    private var filesDescription: String {
        shared.files.isEmpty ? "(no files)" : shared.files.map(\.path).joined(separator: ", ")
    }
}

// MARK: - Header JSON

/// The JSON values a safetensors header can hold. Integers that fit in `Int` are kept exactly;
/// other numbers keep their text (they are only ever reported, never used).
enum HeaderJSON {
    case object([(String, HeaderJSON)])
    case array([HeaderJSON])
    case string(String)
    case integer(Int)
    case number(String)
    case bool(Bool)
    case null

    var summary: String {
        switch self {
        case .object: return "an object"
        case .array: return "an array"
        case .string(let s): return "\"\(s.prefix(40))\""
        case .integer(let n): return String(n)
        case .number(let t): return String(t.prefix(40))
        case .bool(let b): return String(b)
        case .null: return "null"
        }
    }
}

/// A small strict JSON parser (RFC 8259) over the mapped header bytes: rejects duplicate keys,
/// invalid UTF-8, control characters in strings, trailing garbage and nesting deeper than 64.
struct HeaderJSONParser {
    struct Failure: Error {
        let message: String
        let offset: Int
    }

    private let bytes: UnsafeRawBufferPointer
    private var pos = 0
    private var depth = 0
    private static let maxDepth = 64

    init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    mutating func parseDocument() throws -> HeaderJSON {
        skipSpace()
        let v = try parseValue()
        skipSpace()
        guard pos == bytes.count else { throw fail("unexpected data after the JSON value") }
        return v
    }

    private func fail(_ message: String) -> Failure { Failure(message: message, offset: pos) }

    private var peek: UInt8? { pos < bytes.count ? bytes[pos] : nil }

    private mutating func skipSpace() {
        while let c = peek, c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { pos += 1 }
    }

    private mutating func expect(_ c: UInt8) throws {
        guard peek == c else {
            throw fail(peek == nil ? "unexpected end, expected '\(Character(UnicodeScalar(c)))'"
                                   : "expected '\(Character(UnicodeScalar(c)))'")
        }
        pos += 1
    }

    private mutating func parseValue() throws -> HeaderJSON {
        guard let c = peek else { throw fail("unexpected end of header") }
        switch c {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw fail("unexpected character 0x\(String(c, radix: 16))")
        }
    }

    private mutating func literal(_ word: String) throws {
        for b in word.utf8 {
            guard peek == b else { throw fail("invalid literal, expected \(word)") }
            pos += 1
        }
    }

    private mutating func nest() throws {
        depth += 1
        guard depth <= Self.maxDepth else { throw fail("nesting deeper than \(Self.maxDepth)") }
    }

    private mutating func parseObject() throws -> HeaderJSON {
        try nest()
        defer { depth -= 1 }
        pos += 1  // {
        var members: [(String, HeaderJSON)] = []
        var seen = Set<String>()
        skipSpace()
        if peek == UInt8(ascii: "}") { pos += 1; return .object(members) }
        while true {
            skipSpace()
            guard peek == UInt8(ascii: "\"") else { throw fail("expected a string key") }
            let keyStart = pos
            let key = try parseString()
            guard seen.insert(key).inserted else {
                throw Failure(message: "duplicate key \"\(key.prefix(80))\"", offset: keyStart)
            }
            skipSpace()
            try expect(UInt8(ascii: ":"))
            skipSpace()
            members.append((key, try parseValue()))
            skipSpace()
            if peek == UInt8(ascii: ",") { pos += 1; continue }
            try expect(UInt8(ascii: "}"))
            return .object(members)
        }
    }

    private mutating func parseArray() throws -> HeaderJSON {
        try nest()
        defer { depth -= 1 }
        pos += 1  // [
        var items: [HeaderJSON] = []
        skipSpace()
        if peek == UInt8(ascii: "]") { pos += 1; return .array(items) }
        while true {
            skipSpace()
            items.append(try parseValue())
            skipSpace()
            if peek == UInt8(ascii: ",") { pos += 1; continue }
            try expect(UInt8(ascii: "]"))
            return .array(items)
        }
    }

    private mutating func parseString() throws -> String {
        pos += 1  // opening quote
        var out: [UInt8] = []
        while true {
            guard let c = peek else { throw fail("unterminated string") }
            pos += 1
            switch c {
            case UInt8(ascii: "\""):
                guard let s = String(validating: out, as: UTF8.self) else {
                    throw fail("string is not valid UTF-8")
                }
                return s
            case UInt8(ascii: "\\"):
                guard let e = peek else { throw fail("unterminated escape") }
                pos += 1
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800...0xDBFF).contains(scalar) {
                        guard peek == UInt8(ascii: "\\") else { throw fail("unpaired surrogate") }
                        pos += 1
                        guard peek == UInt8(ascii: "u") else { throw fail("unpaired surrogate") }
                        pos += 1
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low) else { throw fail("unpaired surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw fail("unpaired surrogate") }
                    out.append(contentsOf: Array(String(Character(u)).utf8))
                default: throw fail("invalid escape")
                }
            case 0x00..<0x20:
                throw fail("control character in string")
            default:
                out.append(c)
            }
        }
    }

    private mutating func hex4() throws -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard let c = peek, let d = Character(UnicodeScalar(c)).hexDigitValue else {
                throw fail("invalid \\u escape")
            }
            v = v << 4 | UInt32(d)
            pos += 1
        }
        return v
    }

    private mutating func parseNumber() throws -> HeaderJSON {
        let start = pos
        var isInteger = true
        if peek == UInt8(ascii: "-") { pos += 1 }
        guard let first = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else {
            throw fail("invalid number")
        }
        if first == UInt8(ascii: "0") { pos += 1 } else { digits() }
        if peek == UInt8(ascii: ".") {
            isInteger = false
            pos += 1
            guard digits() > 0 else { throw fail("invalid number") }
        }
        if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
            isInteger = false
            pos += 1
            if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { pos += 1 }
            guard digits() > 0 else { throw fail("invalid number") }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
        if isInteger, let n = Int(text) { return .integer(n) }
        return .number(text)
    }

    @discardableResult
    private mutating func digits() -> Int {
        let start = pos
        while let c = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) { pos += 1 }
        return pos - start
    }
}
