// BLAS: the single wrapper through which all matrix work goes — the engine's own AVX-512 sgemm
// (Sources/CGemm) where the CPU has AVX-512F, OpenBLAS (cblas_sgemm & co.) everywhere else.
import CGemm
import COpenBLAS
import Dispatch
import Foundation

/// Which implementation runs `BLAS.gemm`.
public enum GEMMBackend: String, Sendable, CaseIterable {
    /// OpenBLAS's cblas_sgemm (whatever core type OpenBLAS chose, e.g. by OPENBLAS_CORETYPE).
    case openblas
    /// The engine's packed AVX-512 kernel (Sources/CGemm), threaded over `BLAS.threads`.
    case avx512
}

/// Row-major single-precision matrix products.
public enum BLAS {
    /// True when this CPU can run the AVX-512 kernel.
    public static let avx512Available = adg_avx512_available() == 1

    /// The backend `gemm` uses: AVX-512 when available, unless the environment says AUTODIR_GEMM=openblas.
    /// With the AVX-512 backend OpenBLAS is kept to one thread (it still serves gemv and skinny products):
    /// its idle threads spin in sched_yield after every call and would take cores from the engine's own.
    nonisolated(unsafe) public static var backend: GEMMBackend = initialBackend {
        didSet { applyThreads() }
    }

    private static let initialBackend: GEMMBackend = {
        let choice: GEMMBackend
        if ProcessInfo.processInfo.environment["AUTODIR_GEMM"]?.lowercased() == "openblas" {
            choice = .openblas
        } else {
            choice = avx512Available ? .avx512 : .openblas
        }
        _ = defaultThreads  // read before OpenBLAS is set to one thread
        if choice == .avx512 { openblas_set_num_threads(1) }
        return choice
    }()

    /// OpenBLAS's own default (cores, or OPENBLAS_NUM_THREADS), read once before the engine changes it.
    private static let defaultThreads = max(1, Int(openblas_get_num_threads()))

    /// Threads one matrix product may use (OpenBLAS's count with the OpenBLAS backend).
    nonisolated(unsafe) private static var threadCount = defaultThreads

    /// C[m×n] = alpha · op(A) · op(B) + beta · C + rowBias[i] + colBias[j], all row-major.
    /// `lda`, `ldb`, `ldc` default to the tight leading dimensions of the stored (untransposed) arrays.
    /// The biases (a convolution's per-output-channel bias is a row bias of C [Cout, pixels]; a linear layer's
    /// is a column bias of C [tokens, features]) are added in the kernel's store, saving a pass over C.
    @inline(__always)
    public static func gemm(transA: Bool = false, transB: Bool = false,
                            m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<Float>, lda: Int? = nil,
                            b: UnsafePointer<Float>, ldb: Int? = nil,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int? = nil,
                            rowBias: UnsafePointer<Float>? = nil, colBias: UnsafePointer<Float>? = nil) {
        let lda = lda ?? (transA ? m : k)
        let ldb = ldb ?? (transB ? k : n)
        let ldc = ldc ?? n
        let p = GEMMProblem(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                            b: b, ldb: ldb, beta: beta, c: c, ldc: ldc, rowBias: rowBias, colBias: colBias)
        // Skinny products (a row or a handful of columns) stay with OpenBLAS's gemv-like paths, unless they
        // are long enough (a convolution to 3 channels over a whole image) for the padded tiles to win.
        if backend == .avx512 && n >= 16 && (m >= 4 || n * k >= 1 << 18) {
            p.runPacked(threads: threads)
        } else {
            p.runOpenBLAS(rows: 0..<m, cols: 0..<n)
        }
    }

    /// y[m] = alpha · op(A) · x + beta · y, A row-major m×n (before op).
    @inline(__always)
    public static func gemv(transA: Bool = false, m: Int, n: Int, alpha: Float = 1,
                            a: UnsafePointer<Float>, x: UnsafePointer<Float>,
                            beta: Float = 0, y: UnsafeMutablePointer<Float>) {
        cblas_sgemv(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, blasint(m), blasint(n), alpha,
                    a, blasint(n), x, 1, beta, y, 1)
    }

    /// Threads one matrix product may use, for OpenBLAS and the AVX-512 kernel (0 or less leaves the default).
    public static func setThreads(_ n: Int) {
        if n > 0 { threadCount = n }
        applyThreads()
    }

    public static var threads: Int {
        _ = backend  // makes sure the initial backend has configured OpenBLAS
        return threadCount
    }

    private static func applyThreads() {
        openblas_set_num_threads(Int32(backend == .openblas ? threadCount : 1))
    }
}

/// One row-major product C = alpha · op(A) · op(B) + beta · C, with tight-or-given leading dimensions.
private struct GEMMProblem {
    let transA: Bool, transB: Bool
    let m: Int, n: Int, k: Int
    let alpha: Float
    let a: UnsafePointer<Float>, lda: Int
    let b: UnsafePointer<Float>, ldb: Int
    let beta: Float
    let c: UnsafeMutablePointer<Float>, ldc: Int
    let rowBias: UnsafePointer<Float>?, colBias: UnsafePointer<Float>?

    /// The AVX-512 kernel over `threads` blocks of C, split along its longer side (in whole register tiles).
    func runPacked(threads: Int) {
        let flops = 2.0 * Double(m) * Double(n) * Double(k)
        let tilesM = (m + 11) / 12, tilesN = (n + 31) / 32
        let splitColumns = tilesN >= tilesM
        let parts = max(1, min(threads, flops < 4e6 ? 1 : (splitColumns ? tilesN : tilesM)))
        func block(_ i: Int) {
            let rows: Range<Int>, cols: Range<Int>
            if splitColumns {
                cols = (tilesN * i / parts * 32)..<min(n, tilesN * (i + 1) / parts * 32)
                rows = 0..<m
            } else {
                rows = (tilesM * i / parts * 12)..<min(m, tilesM * (i + 1) / parts * 12)
                cols = 0..<n
            }
            let status = adg_sgemm_block(transA ? 1 : 0, transB ? 1 : 0, m, n, k, alpha, a, lda, b, ldb,
                                         beta, c, ldc, rowBias, colBias, rows.lowerBound, rows.upperBound,
                                         cols.lowerBound, cols.upperBound)
            if status != 0 { runOpenBLAS(rows: rows, cols: cols) }
        }
        if parts == 1 {
            block(0)
        } else {
            DispatchQueue.concurrentPerform(iterations: parts, execute: block)
        }
    }

    /// OpenBLAS on the block C[rows, cols] (biases first, as C = beta · C + biases, then a beta-1 product).
    func runOpenBLAS(rows: Range<Int>, cols: Range<Int>) {
        guard !rows.isEmpty, !cols.isEmpty else { return }
        var blasBeta = beta
        if rowBias != nil || colBias != nil {
            for i in rows {
                let row = c + i * ldc, rb = rowBias?[i] ?? 0
                for j in cols { row[j] = (beta == 0 ? 0 : beta * row[j]) + rb + (colBias?[j] ?? 0) }
            }
            blasBeta = 1
        }
        let aBlock = a + (transA ? rows.lowerBound : rows.lowerBound * lda)
        let bBlock = b + (transB ? cols.lowerBound * ldb : cols.lowerBound)
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(rows.count), blasint(cols.count), blasint(k), alpha, aBlock, blasint(lda),
                    bBlock, blasint(ldb), blasBeta, c + rows.lowerBound * ldc + cols.lowerBound, blasint(ldc))
    }
}
