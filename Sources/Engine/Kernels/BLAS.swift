// BLAS: the single wrapper through which all matrix work reaches OpenBLAS (cblas_sgemm & co.).
import COpenBLAS

/// Row-major single-precision matrix products on OpenBLAS.
public enum BLAS {
    /// C[m×n] = alpha · op(A) · op(B) + beta · C, all row-major.
    /// `lda`, `ldb`, `ldc` default to the tight leading dimensions of the stored (untransposed) arrays.
    @inline(__always)
    public static func gemm(transA: Bool = false, transB: Bool = false,
                            m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<Float>, lda: Int? = nil,
                            b: UnsafePointer<Float>, ldb: Int? = nil,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int? = nil) {
        let lda = lda ?? (transA ? m : k)
        let ldb = ldb ?? (transB ? k : n)
        let ldc = ldc ?? n
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                    beta, c, blasint(ldc))
    }

    /// y[m] = alpha · op(A) · x + beta · y, A row-major m×n (before op).
    @inline(__always)
    public static func gemv(transA: Bool = false, m: Int, n: Int, alpha: Float = 1,
                            a: UnsafePointer<Float>, x: UnsafePointer<Float>,
                            beta: Float = 0, y: UnsafeMutablePointer<Float>) {
        cblas_sgemv(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, blasint(m), blasint(n), alpha,
                    a, blasint(n), x, 1, beta, y, 1)
    }

    /// Threads OpenBLAS may use (0 or less leaves its default).
    public static func setThreads(_ n: Int) {
        if n > 0 { openblas_set_num_threads(Int32(n)) }
    }

    public static var threads: Int { Int(openblas_get_num_threads()) }
}
