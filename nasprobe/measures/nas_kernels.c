/* The loops of nasprobe's C kernels (ckernels.c binds them to Python; kernels.py says what each
 * must match). NAS per location: the max over channels, then sum(e) and sum(e*z) with
 * z = a - max, e = exp(z); H = ln S - T/S, NAS = 1 - exp(H)/C. Plain C99 without -ffast-math:
 * NaN semantics are kept. The exponential and logarithm are our own vectorisable polynomials,
 * so that the compiler turns the inner loops into SIMD code; gcc on x86-64 Linux also emits
 * x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA) clones of them, the best one picked at load
 * time for the CPU. */
#include "ckernels.h"

/* EXP_NONPOS(z, zc, e): zc = max(z, -80) and e = exp(zc) for z <= 0, a macro so that it is
 * inlined into every target clone. A NaN z gives finite zc and e (callers track non-finite
 * inputs apart). Relative error
 * ~2e-7 on [-80, 0]; exp(z < -80) is taken as exp(-80) ~ 1.8e-35, which keeps every result a
 * normal float (subnormals are slow) at a cost below 1e-30 in S = sum e. Range reduction
 * z = k ln2 + r, |r| <= ln2/2 (k rounded with the 1.5 * 2^23 trick, ln2 split in two parts),
 * then a degree-6 Taylor polynomial for e^r and 2^k built from its exponent bits. */
#define EXP_NONPOS(z, zc, e) do {                                                        \
        float zn_ = (z) > -80.0f ? (z) : -80.0f;          /* NaN -> -80 before the cast */  \
        (zc) = zn_;                                                                        \
        float kf_ = (zn_ * 1.4426950408889634f + 12582912.0f) - 12582912.0f;              \
        int32_t k_ = (int32_t)kf_;                                                         \
        float r_ = (zn_ - kf_ * 0.693145751953125f) - kf_ * 1.428606765330187e-06f;       \
        float p_ = 1.0f + r_ * (1.0f + r_ * (0.5f + r_ * (1.6666667e-01f + r_ *             \
                   (4.1666668e-02f + r_ * (8.3333338e-03f + r_ * 1.3888889e-03f)))));      \
        union { int32_t i; float f; } s_;                                                  \
        s_.i = (k_ + 127) << 23;                          /* 2^k, k in [-116, 0] */         \
        (e) = p_ * s_.f;                                                                   \
    } while (0)

/* LOG_PARTS(s, k, p): ln s = k ln 2 + p for a float s in [1, 2^64), in float arithmetic that
 * vectorises (a macro, for every target clone): s = m 2^k with m in [sqrt(1/2), sqrt(2)),
 * p = ln m = 2 atanh(f / (2 + f)), f = m - 1, by its series to the 9th power (|t| <= 0.172:
 * the next term is below 4e-10). Kept in two parts so that ln S - ln C loses nothing to the
 * cancellation of the k ln 2 terms. */
#define LOG_PARTS(s, k, p) do {                                                            \
        union { float f; int32_t i; } u_;                                                  \
        u_.f = (s);                                                                        \
        int32_t k_ = ((u_.i >> 23) & 0xff) - 127;                                          \
        u_.i = (u_.i & 0x007fffff) | 0x3f800000;          /* m in [1, 2) */                \
        float m_ = u_.f;                                                                   \
        int big_ = m_ > 1.41421356f;                                                       \
        m_ = big_ ? m_ * 0.5f : m_;                                                        \
        (k) = k_ + big_;                                                                   \
        float f_ = m_ - 1.0f, t_ = f_ / (2.0f + f_), t2_ = t_ * t_;                        \
        (p) = t_ * (2.0f + t2_ * (0.6666667f + t2_ * (0.4f + t2_ * (0.2857143f +           \
              t2_ * 0.2222222f))));                                                        \
    } while (0)

/* The last step of a tile, per location: H = ln S - T/S and NAS = 1 - exp(H)/C =
 * 1 - exp(ln S - ln C - T/S), clamped to [0, 1 - 1/C] against rounding, plus bad (NaN for a
 * location with a NaN or infinite value). S >= 1 (the max contributes exp(0)) and T <= 0:
 * float arithmetic keeps NAS within about 2e-7 of float64, and the loop vectorises (libm's
 * log and exp in double did not: they were a quarter of the kernel's time at 64 channels). */
NP_CLONES
static void nas_finish(const double *restrict S, const double *restrict T,
                       const float *restrict bad, Py_ssize_t C, Py_ssize_t n,
                       float *restrict out)
{
    int32_t kc;
    float pc;
    LOG_PARTS((float)C, kc, pc);                          /* ln C, the same way as ln S */
    const float top = (float)(1.0 - 1.0 / (double)C);     /* NAS in [0, 1 - 1/D], exactly */
    for (Py_ssize_t j = 0; j < n; j++) {
        int32_t k;
        float p, zc, e;
        LOG_PARTS((float)S[j], k, p);
        float dk = (float)(k - kc);
        float d = (dk * 0.693145751953125f + ((p - pc) + dk * 1.428606765330187e-06f))
                  - (float)(T[j] / S[j]);
        d = d < 0.0f ? d : 0.0f;
        EXP_NONPOS(d, zc, e);
        (void)zc;
        float v = 1.0f - e;
        v = v < 0.0f ? 0.0f : (v > top ? top : v);        /* rounding only */
        out[j] = v + bad[j];
    }
}

#define CHUNK 32  /* channels summed in float before adding to the double totals */

/* The first pass over a tile: per location the max over channels of x - bias, and bad[j] NaN
 * where a value is NaN or infinite. Its counting twin below also adds, per channel, how many
 * raw values are above zero; two functions, so that the pass without counts is the code it
 * always was. */
NP_CLONES
static void block_max(const float *restrict x, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t n,
                      const float *restrict bias, float *restrict m, float *restrict bad)
{
    for (Py_ssize_t c = 0; c < C; c++) {
        const float *restrict xc = x + c * inner;
        const float b = bias[c];
        for (Py_ssize_t j = 0; j < n; j++) {
            float v = xc[j] - b;
            bad[j] += v - v;                              /* NaN for NaN or +-Inf */
            m[j] = v > m[j] ? v : m[j];
        }
    }
}

NP_CLONES
static void block_max_count(const float *restrict x, Py_ssize_t C, Py_ssize_t inner,
                            Py_ssize_t n, const float *restrict bias, float *restrict m,
                            float *restrict bad, int64_t *restrict cnt)
{
    for (Py_ssize_t c = 0; c < C; c++) {
        const float *restrict xc = x + c * inner;
        const float b = bias[c];
        int32_t k = 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            float v = xc[j] - b;
            bad[j] += v - v;
            m[j] = v > m[j] ? v : m[j];
            k += xc[j] > 0.0f;
        }
        cnt[c] += k;
    }
}

NP_CLONES
void np_nas_block(const float *restrict x, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t n,
                      const float *restrict bias, float *restrict out, int64_t *restrict cnt)
{
    /* x points at (c=0, j=j0) of one outer row; n <= BLOCK locations j0..j0+n-1; cnt, when
     * not NULL, gets per channel the number of these values above zero. */
    float m[BLOCK], bad[BLOCK], s[BLOCK], t[BLOCK];
    double S[BLOCK], T[BLOCK];
    for (Py_ssize_t j = 0; j < n; j++) { m[j] = -INFINITY; bad[j] = 0.0f; S[j] = 0.0; T[j] = 0.0; }
    if (cnt)
        block_max_count(x, C, inner, n, bias, m, bad, cnt);
    else
        block_max(x, C, inner, n, bias, m, bad);
    for (Py_ssize_t c0 = 0; c0 < C; c0 += CHUNK) {
        Py_ssize_t c1 = C - c0 < CHUNK ? C : c0 + CHUNK;
        for (Py_ssize_t j = 0; j < n; j++) { s[j] = 0.0f; t[j] = 0.0f; }
        for (Py_ssize_t c = c0; c < c1; c++) {
            const float *restrict xc = x + c * inner;
            const float b = bias[c];
            for (Py_ssize_t j = 0; j < n; j++) {
                float z = (xc[j] - b) - m[j], zc, e;
                EXP_NONPOS(z, zc, e);                     /* e * zc: finite for any spread */
                s[j] += e;
                t[j] += e * zc;
            }
        }
        for (Py_ssize_t j = 0; j < n; j++) { S[j] += (double)s[j]; T[j] += (double)t[j]; }
    }
    nas_finish(S, T, bad, C, n, out);
}

/* Tiles of TILE locations of one image in blocked layout, transposed into scratch as
 * (C, TILE): channel c's values side by side, which np_nas_block then reads from cache. */

#if defined(__GNUC__) && !defined(__clang__)
/* 16 x 16 floats transposed with four rounds of two-vector shuffles (each round swaps the
 * off-diagonal s x s blocks, s = 8, 4, 2, 1): gcc's vector extensions, which become AVX-512
 * permutes in the x86-64-v4 clone and narrower ones elsewhere. */
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

#define SWAP_ROUND(S, LO, HI)                                                               \
    for (int i = 0; i < 16; i++)                                                            \
        if (!(i & (S))) {                                                                   \
            v16f a_ = r[i], b_ = r[i + (S)];                                                \
            r[i] = __builtin_shuffle(a_, b_, (LO));                                         \
            r[i + (S)] = __builtin_shuffle(a_, b_, (HI));                                   \
        }

NP_CLONES
static void gather16(const float *restrict x, Py_ssize_t nblk, Py_ssize_t step,
                     Py_ssize_t n, float *restrict dst)
{
    const v16i lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const v16i hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const v16i lo4 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
    const v16i hi4 = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31};
    const v16i lo2 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    const v16i hi2 = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
    const v16i lo1 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
    const v16i hi1 = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
    for (Py_ssize_t b = 0; b < nblk; b++) {
        const float *restrict src = x + b * step;
        float *restrict d = dst + b * 16 * TILE;
        Py_ssize_t j0 = 0;
        for (; j0 + 16 <= n; j0 += 16) {
            v16f r[16];
            for (int i = 0; i < 16; i++) memcpy(&r[i], src + (j0 + i) * 16, sizeof(v16f));
            SWAP_ROUND(8, lo8, hi8)
            SWAP_ROUND(4, lo4, hi4)
            SWAP_ROUND(2, lo2, hi2)
            SWAP_ROUND(1, lo1, hi1)
            for (int l = 0; l < 16; l++) memcpy(d + l * TILE + j0, &r[l], sizeof(v16f));
        }
        for (Py_ssize_t l = 0; l < 16; l++)
            for (Py_ssize_t j = j0; j < n; j++) d[l * TILE + j] = src[j * 16 + l];
    }
}

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* the same for blocks of 8 (onnxruntime's block on AVX2 CPUs): three rounds */
NP_CLONES
static void gather8(const float *restrict x, Py_ssize_t nblk, Py_ssize_t step,
                    Py_ssize_t n, float *restrict dst)
{
    const v8i lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
    const v8i lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
    const v8i lo1 = {0, 8, 2, 10, 4, 12, 6, 14}, hi1 = {1, 9, 3, 11, 5, 13, 7, 15};
    for (Py_ssize_t b = 0; b < nblk; b++) {
        const float *restrict src = x + b * step;
        float *restrict d = dst + b * 8 * TILE;
        Py_ssize_t j0 = 0;
        for (; j0 + 8 <= n; j0 += 8) {
            v8f r[8];
            for (int i = 0; i < 8; i++) memcpy(&r[i], src + (j0 + i) * 8, sizeof(v8f));
            for (int i = 0; i < 8; i++)
                if (!(i & 4)) {
                    v8f a_ = r[i], b_ = r[i + 4];
                    r[i] = __builtin_shuffle(a_, b_, lo4);
                    r[i + 4] = __builtin_shuffle(a_, b_, hi4);
                }
            for (int i = 0; i < 8; i++)
                if (!(i & 2)) {
                    v8f a_ = r[i], b_ = r[i + 2];
                    r[i] = __builtin_shuffle(a_, b_, lo2);
                    r[i + 2] = __builtin_shuffle(a_, b_, hi2);
                }
            for (int i = 0; i < 8; i++)
                if (!(i & 1)) {
                    v8f a_ = r[i], b_ = r[i + 1];
                    r[i] = __builtin_shuffle(a_, b_, lo1);
                    r[i + 1] = __builtin_shuffle(a_, b_, hi1);
                }
            for (int l = 0; l < 8; l++) memcpy(d + l * TILE + j0, &r[l], sizeof(v8f));
        }
        for (Py_ssize_t l = 0; l < 8; l++)
            for (Py_ssize_t j = j0; j < n; j++) d[l * TILE + j] = src[j * 8 + l];
    }
}
#define HAVE_GATHER16 1
#endif

static void gather_any(const float *restrict x, Py_ssize_t nblk, Py_ssize_t B, Py_ssize_t step,
                       Py_ssize_t n, float *restrict dst)
{
    for (Py_ssize_t b = 0; b < nblk; b++)
        for (Py_ssize_t l = 0; l < B; l++)
            for (Py_ssize_t j = 0; j < n; j++)
                dst[(b * B + l) * TILE + j] = x[b * step + j * B + l];
}

NP_CLONES
void np_count_block(const float *restrict x, Py_ssize_t C, Py_ssize_t inner,
                        int64_t *restrict cnt)
{
    for (Py_ssize_t c = 0; c < C; c++) {
        const float *restrict xc = x + c * inner;
        int64_t k = 0;
        for (Py_ssize_t j0 = 0; j0 < inner; j0 += 1 << 20) {   /* int32 partial sums */
            Py_ssize_t j1 = inner - j0 < (1 << 20) ? inner : j0 + (1 << 20);
            int32_t part = 0;
            for (Py_ssize_t j = j0; j < j1; j++) part += xc[j] > 0.0f;
            k += part;
        }
        cnt[c] += k;
    }
}

void np_gather_tile(const float *restrict x, Py_ssize_t nblk, Py_ssize_t B, Py_ssize_t step,
                    Py_ssize_t n, float *restrict dst)
{
#ifdef HAVE_GATHER16
    if (B == 16) { gather16(x, nblk, step, n, dst); return; }
    if (B == 8) { gather8(x, nblk, step, n, dst); return; }
#endif
    gather_any(x, nblk, B, step, n, dst);
}

