// autodir_gemm: the engine's own single-precision matrix product for CPUs with AVX-512
// (a BLIS-style packed GEMM: 12×32 register tile, cache-blocked panels). The engine uses it in place
// of OpenBLAS's sgemm where the CPU has AVX-512F, and OpenBLAS everywhere else.
#ifndef AUTODIR_GEMM_H
#define AUTODIR_GEMM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// 1 when this CPU (and OS) can run the AVX-512 kernel, else 0.
int adg_avx512_available(void);

/// Row-major C = alpha · op(A) · op(B) + beta · C + rowBias[i] + colBias[j] (either bias may be NULL),
/// computing only the block of C with rows [m0, m1)
/// and columns [n0, n1) (so that threads can share one product). op(A) is m×k, op(B) is k×n;
/// transA / transB say that A is stored k×m / B is stored n×k. With beta == 0, C is not read.
/// Returns 0, or -1 (C untouched) when the per-thread packing buffers (2.2 MiB) cannot be allocated.
/// Must only be called when adg_avx512_available() returned 1.
int adg_sgemm_block(int transA, int transB, long m, long n, long k,
                     float alpha, const float *A, long lda, const float *B, long ldb,
                     float beta, float *C, long ldc, const float *rowBias, const float *colBias,
                     long m0, long m1, long n0, long n1);

/// IEEE binary16 → float32 for n values, exact (F16C / AVX-512 conversion where the CPU has it).
void adg_widen_f16(const uint16_t *src, float *dst, long n);

/// bfloat16 → float32 for n values (exact: a 16-bit shift).
void adg_widen_bf16(const uint16_t *src, float *dst, long n);

/// float32 → IEEE binary16 for n values, rounding to nearest even; returns how many finite values
/// overflowed to ±infinity (|x| ≥ 65520).
long adg_narrow_f16(const float *src, uint16_t *dst, long n);

/// float32 → bfloat16 for n values, rounding to nearest even (NaN stays NaN).
void adg_narrow_bf16(const float *src, uint16_t *dst, long n);

#ifdef __cplusplus
}
#endif
#endif
