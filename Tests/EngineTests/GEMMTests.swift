// GEMM tests: the engine's AVX-512 sgemm (Sources/CGemm) against a float64 reference and against OpenBLAS,
// over shapes that cross every block edge (MR 12, NR 32, KC 256, MC 144, NC 2048), both transposes,
// padded leading dimensions, alpha/beta, and the split of one product over threads.
import XCTest
@testable import Engine

final class GEMMTests: XCTestCase {
    struct Shape { let m: Int, n: Int, k: Int }

    /// C = alpha · op(A) · op(B) + beta · C in float64, row-major with the given leading dimensions.
    static func reference(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                          a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                          beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for p in 0..<k {
                    let av = transA ? a[p * lda + i] : a[i * lda + p]
                    let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
                    s += Double(av) * Double(bv)
                }
                let old = beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])
                c[i * ldc + j] = Float(Double(alpha) * s + old)
            }
        }
    }

    func withBackend(_ backend: GEMMBackend, _ body: () throws -> Void) rethrows {
        let saved = BLAS.backend
        BLAS.backend = backend
        defer { BLAS.backend = saved }
        try body()
    }

    func testAVX512KernelMatchesReferenceAndOpenBLAS() throws {
        try XCTSkipUnless(BLAS.avx512Available, "this CPU has no AVX-512F: the engine uses OpenBLAS only")
        var rng = TestRNG(seed: 7)
        let shapes = [Shape(m: 4, n: 16, k: 1), Shape(m: 13, n: 33, k: 7), Shape(m: 12, n: 32, k: 256),
                      Shape(m: 25, n: 65, k: 257), Shape(m: 145, n: 100, k: 300), Shape(m: 5, n: 2081, k: 40),
                      Shape(m: 150, n: 40, k: 520), Shape(m: 77, n: 77, k: 64), Shape(m: 3, n: 3000, k: 100)]
        for s in shapes {
            for (transA, transB) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta) in [(Float(1), Float(0)), (0.5, 1), (-1.5, 0.25)] {
                    // Leading dimensions wider than the matrices, so that strides are exercised too.
                    let lda = (transA ? s.m : s.k) + 3, ldb = (transB ? s.k : s.n) + 5, ldc = s.n + 7
                    let a = rng.tensor([(transA ? s.k : s.m) * lda]), b = rng.tensor([(transB ? s.n : s.k) * ldb])
                    let c0 = rng.tensor([s.m * ldc])
                    if beta == 0 { for i in 0..<c0.count { c0.data[i] = .nan } }  // beta 0 must not read C
                    let expected = c0.copy(), fast = c0.copy(), blas = c0.copy()
                    Self.reference(transA: transA, transB: transB, m: s.m, n: s.n, k: s.k, alpha: alpha, a: a.data,
                                   lda: lda, b: b.data, ldb: ldb, beta: beta, c: expected.data, ldc: ldc)
                    withBackend(.avx512) {
                        BLAS.gemm(transA: transA, transB: transB, m: s.m, n: s.n, k: s.k, alpha: alpha, a: a.data,
                                  lda: lda, b: b.data, ldb: ldb, beta: beta, c: fast.data, ldc: ldc)
                    }
                    withBackend(.openblas) {
                        BLAS.gemm(transA: transA, transB: transB, m: s.m, n: s.n, k: s.k, alpha: alpha, a: a.data,
                                  lda: lda, b: b.data, ldb: ldb, beta: beta, c: blas.data, ldc: ldc)
                    }
                    if beta == 0 {  // the padding columns of C keep their NaN; compare only the m×n block
                        for t in [expected, fast, blas] {
                            for i in 0..<s.m { for j in s.n..<ldc { t.data[i * ldc + j] = 0 } }
                        }
                    }
                    let what = "m \(s.m) n \(s.n) k \(s.k) tA \(transA) tB \(transB) α \(alpha) β \(beta)"
                    let tol = 2e-6 * Float(s.k).squareRoot() + 1e-6
                    assertClose(fast, expected, atol: tol, rtol: 1e-5, "avx512 vs float64: \(what)")
                    assertClose(fast, blas, atol: tol, rtol: 1e-5, "avx512 vs OpenBLAS: \(what)")
                }
            }
        }
    }

    /// Row and column biases are added in the store, on both backends, with beta 0 (C not read) and beta ≠ 0.
    func testBiasesInTheStore() throws {
        var rng = TestRNG(seed: 11)
        let backends = BLAS.avx512Available ? [GEMMBackend.avx512, .openblas] : [.openblas]
        for s in [Shape(m: 13, n: 45, k: 300), Shape(m: 30, n: 70, k: 9), Shape(m: 2, n: 5, k: 3), Shape(m: 200, n: 300, k: 64)] {
            for (useRow, useCol) in [(true, false), (false, true), (true, true)] {
                for beta in [Float(0), 0.5] {
                    let a = rng.tensor([s.m, s.k]), b = rng.tensor([s.k, s.n]), c0 = rng.tensor([s.m, s.n])
                    let rowBias = rng.tensor([s.m]), colBias = rng.tensor([s.n])
                    if beta == 0 { for i in 0..<c0.count { c0.data[i] = .nan } }
                    let expected = c0.copy()
                    Self.reference(transA: false, transB: false, m: s.m, n: s.n, k: s.k, alpha: 1.5, a: a.data, lda: s.k,
                                   b: b.data, ldb: s.n, beta: beta, c: expected.data, ldc: s.n)
                    for i in 0..<s.m {
                        for j in 0..<s.n {
                            expected.data[i * s.n + j] += (useRow ? rowBias.data[i] : 0) + (useCol ? colBias.data[j] : 0)
                        }
                    }
                    for backend in backends {
                        let out = c0.copy()
                        withBackend(backend) {
                            BLAS.gemm(m: s.m, n: s.n, k: s.k, alpha: 1.5, a: a.data, b: b.data, beta: beta, c: out.data,
                                      rowBias: useRow ? rowBias.data : nil, colBias: useCol ? colBias.data : nil)
                        }
                        assertClose(out, expected, atol: 1e-4, rtol: 1e-5,
                                    "\(backend) bias row \(useRow) col \(useCol) β \(beta) m \(s.m) n \(s.n) k \(s.k)")
                    }
                }
            }
        }
    }

    /// Large enough to be split over threads, once along columns and once along rows; every block of C
    /// (and nothing outside the product) must be written.
    func testThreadSplitCoversTheWholeProduct() throws {
        try XCTSkipUnless(BLAS.avx512Available, "this CPU has no AVX-512F")
        var rng = TestRNG(seed: 8)
        for s in [Shape(m: 50, n: 3000, k: 70), Shape(m: 1000, n: 40, k: 130)] {
            let a = rng.tensor([s.m, s.k]), b = rng.tensor([s.k, s.n])
            let fast = Tensor(shape: [s.m * s.n + 16], repeating: .nan), expected = Tensor(zeros: [s.m * s.n + 16])
            for i in (s.m * s.n)..<(s.m * s.n + 16) { fast.data[i] = 42; expected.data[i] = 42 }
            Self.reference(transA: false, transB: false, m: s.m, n: s.n, k: s.k, alpha: 1, a: a.data, lda: s.k,
                           b: b.data, ldb: s.n, beta: 0, c: expected.data, ldc: s.n)
            withBackend(.avx512) {
                BLAS.gemm(m: s.m, n: s.n, k: s.k, a: a.data, b: b.data, c: fast.data)
            }
            assertClose(fast, expected, atol: 1e-4, rtol: 1e-5, "split m \(s.m) n \(s.n) k \(s.k)")
        }
    }
}
