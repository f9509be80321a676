// Weight: a layer's weight matrix as it is kept in memory — float32, or 16-bit (IEEE half or bfloat16)
// widened to float32 for each use, which halves a model's resident size.
import CGemm
import Foundation

/// How a model keeps its convolution and linear weights in memory (`--weights`, `autodir_engine_params`).
///
/// - `float32`: widened once at load; the fastest.
/// - `float16` / `bfloat16`: kept 16-bit (an F16 / BF16 file stays as memory-mapped, an F32 file is
///   narrowed once at load) and widened into a pooled scratch buffer each time a layer runs.
///   Norms, biases, embeddings and the NAFNet depthwise filters stay float32 (they are small).
public enum WeightPrecision: String, Sendable, CaseIterable {
    case float32 = "f32"
    case float16 = "f16"
    case bfloat16 = "bf16"

    /// Bytes per stored element.
    public var bytes: Int { self == .float32 ? 4 : 2 }
}

/// A weight tensor in one of the `WeightPrecision` layouts. Immutable; safe to share between threads.
public final class Weight: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    public let precision: WeightPrecision
    /// The values when `precision == .float32`.
    private let floats: Tensor?
    /// The 16-bit values otherwise (a view into a mapped file or into `halfStorage`).
    private let halfs: UnsafePointer<UInt16>?
    /// Keeps the mapped file (or the owned 16-bit buffer) alive.
    private let owner: AnyObject?

    /// A float32 weight.
    public init(_ tensor: Tensor) {
        shape = tensor.shape
        count = tensor.count
        precision = .float32
        floats = tensor
        halfs = nil
        owner = nil
    }

    /// A 16-bit weight over `count(shape)` values at `pointer`, which `owner` keeps alive.
    init(halfs pointer: UnsafePointer<UInt16>, shape: [Int], precision: WeightPrecision, owner: AnyObject) {
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.precision = precision
        floats = nil
        halfs = pointer
        self.owner = owner
    }

    /// `tensor` kept as `precision` (narrowed, rounding to nearest even, for the 16-bit layouts).
    /// Throws when a finite value does not fit in float16 (|x| ≥ 65520): `name` says which tensor.
    public static func narrowing(_ tensor: Tensor, to precision: WeightPrecision, name: String) throws -> Weight {
        if precision == .float32 { return Weight(tensor) }
        let storage = HalfStorage(count: tensor.count)
        let n = tensor.count
        if precision == .float16 {
            var overflowed = 0
            let lock = NSLock()
            Parallel.forEachChunk(n, grain: 1 << 16) { r in
                let k = adg_narrow_f16(tensor.data + r.lowerBound, storage.pointer + r.lowerBound, r.count)
                if k > 0 { lock.lock(); overflowed += k; lock.unlock() }
            }
            if overflowed > 0 {
                throw EngineError.weights("tensor '\(name)': \(overflowed) value(s) too large for float16 (|x| ≥ 65520); "
                                          + "keep the weights as bf16 or f32")
            }
        } else {
            Parallel.forEachChunk(n, grain: 1 << 16) { r in
                adg_narrow_bf16(tensor.data + r.lowerBound, storage.pointer + r.lowerBound, r.count)
            }
        }
        return Weight(halfs: storage.pointer, shape: tensor.shape, precision: precision, owner: storage)
    }

    /// Bytes this weight keeps in memory.
    public var residentBytes: Int { count * precision.bytes }

    /// Runs `body` with the values as float32: the tensor itself, or the 16-bit values widened into a
    /// pooled scratch buffer that is valid only during `body` (never keep it).
    public func withFloat32<R>(_ body: (Tensor) throws -> R) rethrows -> R {
        if let floats { return try body(floats) }
        return try ScratchPool.withBuffer(count) { buffer in
            widen(into: buffer)
            return try body(Tensor(borrowing: buffer, shape: shape, owner: self))
        }
    }

    /// The values as a float32 tensor of their own (the tensor itself for `.float32`), for load-time work.
    public func float32() -> Tensor {
        if let floats { return floats }
        let t = Tensor(uninitialized: shape)
        widen(into: t.data)
        return t
    }

    /// Writes row `row` of dimension 0 (e.g. one token's embedding) as float32 to `destination`.
    public func copyRow(_ row: Int, to destination: UnsafeMutablePointer<Float>) {
        let length = shape.isEmpty ? count : count / max(shape[0], 1)
        if let floats {
            destination.update(from: floats.data + row * length, count: length)
        } else if let halfs {
            widen(halfs + row * length, into: destination, count: length)
        }
    }

    private func widen(into destination: UnsafeMutablePointer<Float>) {
        guard let halfs else { return }
        Parallel.forEachChunk(count, grain: 1 << 16) { r in
            widen(halfs + r.lowerBound, into: destination + r.lowerBound, count: r.count)
        }
    }

    private func widen(_ source: UnsafePointer<UInt16>, into destination: UnsafeMutablePointer<Float>, count n: Int) {
        if precision == .bfloat16 {
            adg_widen_bf16(source, destination, n)
        } else {
            adg_widen_f16(source, destination, n)
        }
    }
}

/// An owned, 64-byte-aligned buffer of 16-bit values.
final class HalfStorage: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<UInt16>

    init(count: Int) {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 2, alignment: 64)
        pointer = raw.bindMemory(to: UInt16.self, capacity: max(count, 1))
    }

    deinit { pointer.deallocate() }
}
