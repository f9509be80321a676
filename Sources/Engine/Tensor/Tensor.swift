// Tensor: a dense float32 array with a shape, NCHW for images (batch, channels, height, width).
import Foundation

/// A dense, row-major float32 tensor.
///
/// A `Tensor` owns its buffer (reference semantics: copies share storage). Models treat their weight
/// tensors as read-only, so one model can serve many concurrent calls; activations are fresh tensors
/// owned by the call that made them.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>
    /// Keeps a memory-mapped file or another owner alive while `data` points into it.
    private let owner: AnyObject?
    private let ownsData: Bool

    /// A zero-filled tensor.
    public init(zeros shape: [Int]) {
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.data = UnsafeMutablePointer<Float>.allocateAligned(capacity: max(count, 1))
        self.data.initialize(repeating: 0, count: max(count, 1))
        self.owner = nil
        self.ownsData = true
    }

    /// An uninitialised tensor; the caller writes every element before reading.
    public init(uninitialized shape: [Int]) {
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.data = UnsafeMutablePointer<Float>.allocateAligned(capacity: max(count, 1))
        self.owner = nil
        self.ownsData = true
    }

    public convenience init(shape: [Int], values: [Float]) {
        self.init(uninitialized: shape)
        precondition(values.count == count, "Tensor(shape:values:): \(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    public convenience init(shape: [Int], repeating value: Float) {
        self.init(uninitialized: shape)
        data.update(repeating: value, count: count)
    }

    /// A view of memory owned by `owner` (e.g. a memory-mapped file); never freed by the tensor.
    public init(borrowing pointer: UnsafeMutablePointer<Float>, shape: [Int], owner: AnyObject) {
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.data = pointer
        self.owner = owner
        self.ownsData = false
    }

    deinit {
        if ownsData { data.deallocate() }
    }

    public var rank: Int { shape.count }
    public var array: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }

    public subscript(flat i: Int) -> Float {
        get { data[i] }
        set { data[i] = newValue }
    }

    /// Same values, another shape with the same element count (shares storage).
    public func reshaped(_ newShape: [Int]) -> Tensor {
        precondition(newShape.reduce(1, *) == count, "reshape \(shape) -> \(newShape)")
        return Tensor(borrowing: data, shape: newShape, owner: self)
    }

    public func copy() -> Tensor {
        let t = Tensor(uninitialized: shape)
        t.data.update(from: data, count: count)
        return t
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let head = (0..<min(count, 6)).map { String(format: "%.5g", data[$0]) }.joined(separator: ", ")
        return "Tensor\(shape)[\(head)\(count > 6 ? ", …" : "")]"
    }
}

/// Errors the engine reports for bad input, files or weights; never a trap.
public enum EngineError: Error, CustomStringConvertible, Equatable {
    case invalidArgument(String)
    case io(String)
    case format(String)
    case weights(String)
    case cancelled

    public var description: String {
        switch self {
        case .invalidArgument(let m): return "invalid argument: \(m)"
        case .io(let m): return "I/O error: \(m)"
        case .format(let m): return "format error: \(m)"
        case .weights(let m): return "weights error: \(m)"
        case .cancelled: return "cancelled"
        }
    }
}

extension UnsafeMutablePointer where Pointee == Float {
    /// Uninitialised floats on a 64-byte (cache-line) boundary, so that vector rows do not straddle
    /// lines; free with `deallocate()` as usual.
    ///
    /// Buffers of 4 MiB and more are placed on 2 MiB boundaries and marked for transparent huge pages
    /// (`madvise(MADV_HUGEPAGE)`; Linux's default THP mode only gives them to regions that ask): one
    /// page fault per 2 MiB instead of 512, and strided reads across channel planes (GEMM packing,
    /// LayerNorm over channels) stop missing the TLB.
    @inline(__always)
    public static func allocateAligned(capacity: Int) -> UnsafeMutablePointer<Float> {
        let bytes = MemoryLayout<Float>.stride * Swift.max(capacity, 1)
        guard bytes >= hugePageThreshold else {
            return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
                .bindMemory(to: Float.self, capacity: Swift.max(capacity, 1))
        }
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: hugePageSize)
        #if os(Linux)
        _ = madvise(raw, bytes / hugePageSize * hugePageSize, MADV_HUGEPAGE)  // whole huge pages inside the buffer
        #endif
        return raw.bindMemory(to: Float.self, capacity: Swift.max(capacity, 1))
    }
}

private let hugePageSize = 2 << 20
private let hugePageThreshold = 4 << 20
