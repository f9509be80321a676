// Parallel: splits independent loop ranges over the machine's cores for the non-BLAS kernels.
import Dispatch
import Foundation

public enum Parallel {
    /// Worker count for element-wise kernels; set from the CLI's --threads.
    nonisolated(unsafe) public static var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    /// Runs `body(range)` over `0..<count` split into contiguous chunks, in parallel when worth it.
    /// `grain` is the smallest chunk worth a thread (in loop iterations).
    @inline(__always)
    public static func forEachChunk(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        let workers = min(threads, max(1, count / max(grain, 1)))
        if workers <= 1 || count <= 1 {
            body(0..<count)
            return
        }
        let chunks = min(count, workers * 4)
        DispatchQueue.concurrentPerform(iterations: chunks) { i in
            let lo = count * i / chunks, hi = count * (i + 1) / chunks
            if lo < hi { body(lo..<hi) }
        }
    }
}
