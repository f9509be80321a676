// halfs.c: float16 / bfloat16 ⇄ float32 conversion for weights kept 16-bit in memory (see
// include/autodir_gemm.h). The hardware converts IEEE half exactly (vcvtph2ps, F16C / AVX-512F);
// bfloat16 is the top half of a float32, so widening is a shift.
#include "autodir_gemm.h"

#include <immintrin.h>
#include <string.h>

static float widen_f16_scalar(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    uint32_t bits;
    if (exponent == 0x1F) {
        bits = sign | 0x7F800000u | (mantissa << 13);                       // inf / NaN
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);          // normal
    } else if (mantissa == 0) {
        bits = sign;                                                        // ±0
    } else {                                                                // subnormal: renormalise
        int shift = 0;
        while (!(mantissa & 0x400)) { mantissa <<= 1; shift++; }
        bits = sign | ((uint32_t)(113 - shift) << 23) | ((mantissa & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

__attribute__((target("avx512f")))
static void widen_f16_avx512(const uint16_t *src, float *dst, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(src + i));
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
    }
    for (; i < n; i++) dst[i] = widen_f16_scalar(src[i]);
}

__attribute__((target("avx,f16c")))
static void widen_f16_f16c(const uint16_t *src, float *dst, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) dst[i] = widen_f16_scalar(src[i]);
}

void adg_widen_f16(const uint16_t *src, float *dst, long n) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        widen_f16_avx512(src, dst, n);
    } else if (__builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx")) {
        widen_f16_f16c(src, dst, n);
    } else {
        for (long i = 0; i < n; i++) dst[i] = widen_f16_scalar(src[i]);
    }
}

__attribute__((target("avx512f")))
static void narrow_f16_avx512(const float *src, uint16_t *dst, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256((__m256i *)(dst + i), h);
    }
    for (; i < n; i++) {
        _Float16 h = (_Float16)src[i];
        memcpy(dst + i, &h, 2);
    }
}

long adg_narrow_f16(const float *src, uint16_t *dst, long n) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        narrow_f16_avx512(src, dst, n);
    } else {
        for (long i = 0; i < n; i++) {
            _Float16 h = (_Float16)src[i];  // round to nearest even
            memcpy(dst + i, &h, 2);
        }
    }
    long overflowed = 0;  // finite values that became ±inf (|x| ≥ 65520)
    for (long i = 0; i < n; i++) overflowed += ((dst[i] & 0x7FFF) == 0x7C00) & (src[i] - src[i] == 0);
    return overflowed;
}

void adg_narrow_bf16(const float *src, uint16_t *dst, long n) {
    const uint32_t *in = (const uint32_t *)src;
    for (long i = 0; i < n; i++) {
        uint32_t bits = in[i];
        if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
            dst[i] = (uint16_t)(bits >> 16) | 0x0040;                         // NaN stays a quiet NaN
        } else {
            dst[i] = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1)) >> 16);  // round to nearest even
        }
    }
}

void adg_widen_bf16(const uint16_t *src, float *dst, long n) {
    uint32_t *out = (uint32_t *)dst;  // the compiler vectorises this loop (shift and widen)
    for (long i = 0; i < n; i++) out[i] = (uint32_t)src[i] << 16;
}
