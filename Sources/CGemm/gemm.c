// gemm.c: the engine's own AVX-512 single-precision GEMM (see include/autodir_gemm.h).
//
// Structure (the BLIS / GotoBLAS scheme): C is walked in NC-wide column blocks; K in KC-deep slices;
// the KC×NC slice of op(B) is packed once into NR-wide panels, each MC×KC block of op(A) into MR-tall
// panels; a 12×32 register tile (24 zmm accumulators) does the arithmetic. The B micro-panel
// (KC·NR floats = 32 KiB) stays in L1 while the A panels stream from L2. Edges are zero-padded in the
// packed panels and masked on the store, so any m, n, k and leading dimensions work.
#include "autodir_gemm.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

// Block sizes (overridable with -D for tuning; measured on a Zen 5 core: 48 KiB L1, 1 MiB L2).
#ifndef KC_SIZE
#define KC_SIZE 256
#endif
#ifndef MC_SIZE
#define MC_SIZE 144
#endif
#ifndef NC_SIZE
#define NC_SIZE 2048
#endif
enum {
    MR = 12,       // rows of C per register tile
    NR = 32,       // columns of C per register tile (two zmm vectors)
    KC = KC_SIZE,  // depth of one packed slice
    MC = MC_SIZE,  // rows of op(A) per packed block (a multiple of MR)
    NC = NC_SIZE,  // columns of op(B) per packed block (a multiple of NR)
};

#define AVX512 __attribute__((target("avx512f")))

int adg_avx512_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
}

// ---- per-thread packing buffers (freed when the thread exits) ----

typedef struct {
    float *a;  // MC × KC
    float *b;  // KC × NC
} PackBuffers;

static pthread_key_t buffers_key;
static pthread_once_t buffers_once = PTHREAD_ONCE_INIT;

static void free_buffers(void *p) {
    PackBuffers *buf = p;
    free(buf->a);
    free(buf->b);
    free(buf);
}

static void make_key(void) { pthread_key_create(&buffers_key, free_buffers); }

static PackBuffers *thread_buffers(void) {
    pthread_once(&buffers_once, make_key);
    PackBuffers *buf = pthread_getspecific(buffers_key);
    if (buf) return buf;
    buf = calloc(1, sizeof *buf);
    if (!buf) return NULL;
    buf->a = aligned_alloc(64, sizeof(float) * MC * KC);
    buf->b = aligned_alloc(64, sizeof(float) * KC * NC);
    if (!buf->a || !buf->b || pthread_setspecific(buffers_key, buf) != 0) {
        free_buffers(buf);
        return NULL;
    }
    return buf;
}

// ---- packing ----

// In-register transpose of a 16×16 block: r[i] holds row i on entry and column i on return.
// Stage 1–2 transpose the 4×4 blocks inside each 128-bit lane; stage 3–4 move the lanes into place.
AVX512 static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) {
        __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 2]);
        __m512d c = _mm512_castps_pd(t[4 * g + 1]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    // u[4g + j], lane L = rows 4g … 4g+3 of column 4L + j
    for (int j = 0; j < 4; j++) {
        __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44), v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xEE);
        __m512 w0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x44), w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xEE);
        r[j] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        r[4 + j] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
        r[8 + j] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
    }
}

static inline __mmask16 first_lanes(long n) { return n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1); }

// op(A)[i0 ..< i0+mc, p0 ..< p0+kc] → MR-row panels: dst[panel][kk][r] (rows past mc are zero).
AVX512 static void pack_a(int transA, const float *A, long lda, long i0, long mc, long p0, long kc, float *dst) {
    for (long ip = 0; ip < mc; ip += MR) {
        long rows = mc - ip < MR ? mc - ip : MR;
        float *d = dst + ip * kc;
        if (transA) {
            // A stored k×m: the MR values of one kk are contiguous.
            for (long kk = 0; kk < kc; kk++) {
                const float *s = A + (p0 + kk) * lda + i0 + ip;
                long r = 0;
                for (; r < rows; r++) d[kk * MR + r] = s[r];
                for (; r < MR; r++) d[kk * MR + r] = 0;
            }
        } else {
            // A stored m×k: 16 k-values of each of the MR rows, transposed in registers, give 16 packed
            // rows of MR values (rows past `rows` and k past kc are loaded as zeros).
            for (long k0 = 0; k0 < kc; k0 += 16) {
                __mmask16 km = first_lanes(kc - k0);
                __m512 r[16];
                for (int i = 0; i < 16; i++) {
                    r[i] = i < rows ? _mm512_maskz_loadu_ps(km, A + (i0 + ip + i) * lda + p0 + k0) : _mm512_setzero_ps();
                }
                transpose16(r);
                long n = kc - k0 < 16 ? kc - k0 : 16;
                for (long t = 0; t < n; t++) _mm512_mask_storeu_ps(d + (k0 + t) * MR, 0x0FFF, r[t]);
            }
        }
    }
}

// op(B)[p0 ..< p0+kc, j0 ..< j0+nc] → NR-column panels: dst[panel][kk][c] (columns past nc are zero).
AVX512 static void pack_b(int transB, const float *B, long ldb, long p0, long kc, long j0, long nc, float *dst) {
    if (!transB) {
        // B stored k×n: walk each row of B once, left to right (one stream, few pages), and scatter
        // its NR-wide pieces into the panels.
        for (long kk = 0; kk < kc; kk++) {
            const float *s = B + (p0 + kk) * ldb + j0;
            for (long jp = 0; jp < nc; jp += NR) {
                long cols = nc - jp < NR ? nc - jp : NR;
                float *d = dst + jp * kc + kk * NR;
                if (cols == NR) {
                    _mm512_store_ps(d, _mm512_loadu_ps(s + jp));
                    _mm512_store_ps(d + 16, _mm512_loadu_ps(s + jp + 16));
                } else {
                    __mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
                    __mmask16 m1 = cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
                    _mm512_store_ps(d, _mm512_maskz_loadu_ps(m0, s + jp));
                    _mm512_store_ps(d + 16, _mm512_maskz_loadu_ps(m1, s + jp + 16));
                }
            }
        }
        return;
    }
    // B stored n×k: column c of a panel is a contiguous run along k; 16 columns × 16 k-values at a time are
    // transposed in registers into 16 packed rows (columns past nc and k past kc are loaded as zeros).
    for (long jp = 0; jp < nc; jp += NR) {
        long cols = nc - jp < NR ? nc - jp : NR;
        float *d = dst + jp * kc;
        for (long k0 = 0; k0 < kc; k0 += 16) {
            __mmask16 km = first_lanes(kc - k0);
            long n = kc - k0 < 16 ? kc - k0 : 16;
            for (int half = 0; half < NR / 16; half++) {
                __m512 r[16];
                for (int i = 0; i < 16; i++) {
                    long c = half * 16 + i;
                    r[i] = c < cols ? _mm512_maskz_loadu_ps(km, B + (j0 + jp + c) * ldb + p0 + k0) : _mm512_setzero_ps();
                }
                transpose16(r);
                for (long t = 0; t < n; t++) _mm512_store_ps(d + (k0 + t) * NR + half * 16, r[t]);
            }
        }
    }
}

// ---- the 12×32 register tile ----

// c[0 ..< mr, 0 ..< nr] = alpha · Σ_kk a[kk][·] ⊗ b[kk][·] + beta · c + rowBias[i] + colBias[j]
// (beta == 0: c is not read; a NULL bias adds nothing)
AVX512 static void kernel_12x32(long kc, const float *a, const float *b, float *c, long ldc,
                                float alpha, float beta, int mr, int nr,
                                const float *rowBias, const float *colBias) {
    __m512 c0a = _mm512_setzero_ps(), c0b = _mm512_setzero_ps(), c1a = _mm512_setzero_ps(), c1b = _mm512_setzero_ps();
    __m512 c2a = _mm512_setzero_ps(), c2b = _mm512_setzero_ps(), c3a = _mm512_setzero_ps(), c3b = _mm512_setzero_ps();
    __m512 c4a = _mm512_setzero_ps(), c4b = _mm512_setzero_ps(), c5a = _mm512_setzero_ps(), c5b = _mm512_setzero_ps();
    __m512 c6a = _mm512_setzero_ps(), c6b = _mm512_setzero_ps(), c7a = _mm512_setzero_ps(), c7b = _mm512_setzero_ps();
    __m512 c8a = _mm512_setzero_ps(), c8b = _mm512_setzero_ps(), c9a = _mm512_setzero_ps(), c9b = _mm512_setzero_ps();
    __m512 cAa = _mm512_setzero_ps(), cAb = _mm512_setzero_ps(), cBa = _mm512_setzero_ps(), cBb = _mm512_setzero_ps();
    // Ask for the C tile now: it is read (or written) only after the k loop, and power-of-two row
    // strides make its lines collide in L1, so without this the store waits on L2/L3.
    for (int i = 0; i < mr; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + 16), _MM_HINT_T0);
    }
#define ROW(i, ra, rb)                                   \
    {                                                    \
        __m512 ai = _mm512_set1_ps(a[i]);                \
        ra = _mm512_fmadd_ps(ai, b0, ra);                \
        rb = _mm512_fmadd_ps(ai, b1, rb);                \
    }
    for (long kk = 0; kk < kc; kk++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        ROW(0, c0a, c0b) ROW(1, c1a, c1b) ROW(2, c2a, c2b) ROW(3, c3a, c3b)
        ROW(4, c4a, c4b) ROW(5, c5a, c5b) ROW(6, c6a, c6b) ROW(7, c7a, c7b)
        ROW(8, c8a, c8b) ROW(9, c9a, c9b) ROW(10, cAa, cAb) ROW(11, cBa, cBb)
        a += MR;
        b += NR;
    }
#undef ROW
    __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    // the column bias, or zeros (then the row bias, if any, is added on top per row)
    __m512 cba = colBias ? _mm512_maskz_loadu_ps(m0, colBias) : _mm512_setzero_ps();
    __m512 cbb = colBias ? _mm512_maskz_loadu_ps(m1, colBias + 16) : _mm512_setzero_ps();
#define STORE(i, ra, rb)                                                                            \
    if ((i) < mr) {                                                                                 \
        float *row = c + (long)(i) * ldc;                                                           \
        __m512 ba = cba, bb = cbb;                                                                  \
        if (rowBias) {                                                                              \
            __m512 rbv = _mm512_set1_ps(rowBias[i]);                                                \
            ba = _mm512_add_ps(ba, rbv);                                                            \
            bb = _mm512_add_ps(bb, rbv);                                                            \
        }                                                                                           \
        if (beta == 0) {                                                                            \
            _mm512_mask_storeu_ps(row, m0, _mm512_fmadd_ps(va, ra, ba));                            \
            _mm512_mask_storeu_ps(row + 16, m1, _mm512_fmadd_ps(va, rb, bb));                       \
        } else {                                                                                    \
            __m512 oa = _mm512_maskz_loadu_ps(m0, row), ob = _mm512_maskz_loadu_ps(m1, row + 16);   \
            _mm512_mask_storeu_ps(row, m0, _mm512_fmadd_ps(va, ra, _mm512_fmadd_ps(vb, oa, ba)));   \
            _mm512_mask_storeu_ps(row + 16, m1, _mm512_fmadd_ps(va, rb, _mm512_fmadd_ps(vb, ob, bb))); \
        }                                                                                           \
    }
    STORE(0, c0a, c0b) STORE(1, c1a, c1b) STORE(2, c2a, c2b) STORE(3, c3a, c3b)
    STORE(4, c4a, c4b) STORE(5, c5a, c5b) STORE(6, c6a, c6b) STORE(7, c7a, c7b)
    STORE(8, c8a, c8b) STORE(9, c9a, c9b) STORE(10, cAa, cAb) STORE(11, cBa, cBb)
#undef STORE
}

// C[m0 ..< m1, n0 ..< n1] = beta · C + rowBias[i] + colBias[j] (beta == 0: C is not read): the k == 0 case.
static void scale_block(float *C, long ldc, long m0, long m1, long n0, long n1, float beta,
                        const float *rowBias, const float *colBias) {
    for (long i = m0; i < m1; i++) {
        float *row = C + i * ldc;
        float rb = rowBias ? rowBias[i] : 0;
        for (long j = n0; j < n1; j++) {
            float old = beta == 0 ? 0 : beta * row[j];
            row[j] = old + rb + (colBias ? colBias[j] : 0);
        }
    }
}

int adg_sgemm_block(int transA, int transB, long m, long n, long k,
                     float alpha, const float *A, long lda, const float *B, long ldb,
                     float beta, float *C, long ldc, const float *rowBias, const float *colBias,
                     long m0, long m1, long n0, long n1) {
    (void)m;
    (void)n;
    if (m1 <= m0 || n1 <= n0) return 0;
    if (k <= 0 || alpha == 0) {
        scale_block(C, ldc, m0, m1, n0, n1, beta, rowBias, colBias);
        return 0;
    }
    PackBuffers *buf = thread_buffers();
    if (!buf) return -1;  // no memory for the packing buffers: the caller falls back to OpenBLAS
    for (long jc = n0; jc < n1; jc += NC) {
        long nc = n1 - jc < NC ? n1 - jc : NC;
        for (long pc = 0; pc < k; pc += KC) {
            long kc = k - pc < KC ? k - pc : KC;
            // the first slice applies beta and the biases; later slices accumulate onto it
            int first = pc == 0;
            float beff = first ? beta : 1.0f;
            pack_b(transB, B, ldb, pc, kc, jc, nc, buf->b);
            for (long ic = m0; ic < m1; ic += MC) {
                long mc = m1 - ic < MC ? m1 - ic : MC;
                pack_a(transA, A, lda, ic, mc, pc, kc, buf->a);
                for (long jr = 0; jr < nc; jr += NR) {
                    int nr = (int)(nc - jr < NR ? nc - jr : NR);
                    for (long ir = 0; ir < mc; ir += MR) {
                        int mr = (int)(mc - ir < MR ? mc - ir : MR);
                        kernel_12x32(kc, buf->a + ir * kc, buf->b + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc,
                                     alpha, beff, mr, nr, first && rowBias ? rowBias + ic + ir : NULL,
                                     first && colBias ? colBias + jc + jr : NULL);
                    }
                }
            }
        }
    }
    return 0;
}
