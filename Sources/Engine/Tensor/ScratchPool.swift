// ScratchPool: large temporary float buffers that kernels need on every call (Winograd's transformed
// tiles, im2col columns), kept and reused instead of freed, so that a model's thousands of calls neither
// fault fresh pages in each time nor fragment the heap (glibc raises its mmap threshold after a large
// free, and the freed blocks then pile up in the heap).
import Foundation

public enum ScratchPool {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var free: [(pointer: UnsafeMutablePointer<Float>, capacity: Int)] = []
    /// Floats kept in idle buffers (64 Mi floats = 256 MiB at most; the least recently used go first).
    nonisolated(unsafe) public static var maxKeptFloats = 64 << 20

    /// Runs `body` with a 64-byte-aligned buffer of at least `count` floats (uninitialised), then returns it to the pool.
    public static func withBuffer<R>(_ count: Int, _ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        let buffer = acquire(count)
        defer { release(buffer) }
        return try body(buffer.pointer)
    }

    private static func acquire(_ count: Int) -> (pointer: UnsafeMutablePointer<Float>, capacity: Int) {
        lock.lock()
        // the smallest idle buffer that is big enough
        var best = -1
        for (i, b) in free.enumerated() where b.capacity >= count && (best < 0 || b.capacity < free[best].capacity) {
            best = i
        }
        if best >= 0 {
            let b = free.remove(at: best)
            lock.unlock()
            return b
        }
        lock.unlock()
        return (UnsafeMutablePointer<Float>.allocateAligned(capacity: count), max(count, 1))
    }

    private static func release(_ buffer: (pointer: UnsafeMutablePointer<Float>, capacity: Int)) {
        lock.lock()
        free.append(buffer)                                     // most recently used last
        var evicted: [UnsafeMutablePointer<Float>] = []
        var kept = free.reduce(0) { $0 + $1.capacity }
        while kept > maxKeptFloats, let oldest = free.first {
            kept -= oldest.capacity
            evicted.append(free.removeFirst().pointer)
        }
        lock.unlock()
        evicted.forEach { $0.deallocate() }
    }

    /// Frees every idle buffer (e.g. after unloading a model).
    public static func trim() {
        lock.lock()
        let all = free
        free.removeAll()
        lock.unlock()
        all.forEach { $0.pointer.deallocate() }
    }
}
