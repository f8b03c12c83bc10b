/* Fused CPU kernels for nasprobe (see nasprobe/kernels.py for the Python side and the numpy
 * reference each function must match).
 *
 * nas_rows: NAS along the channel axis of a float32 tensor viewed as (outer, C, inner), less a
 *   per-channel bias, in one pass over memory: per location the max over channels, then sum(e) and sum(e*z) with
 *   z = a - max, e = exp(z); H = ln S - T/S, NAS = 1 - exp(H)/C, clamped to [0, 1 - 1/C]
 *   against rounding. A NaN or infinite input value makes its location's NAS NaN. Given a
 *   counts buffer, the same first pass also adds, per channel, how many of the row's values are
 *   > 0 (the unit activity of docs/measures.md; the raw value, before the bias is subtracted).
 * nas_blocked_rows: the same NAS (and counts) of a tensor in onnxruntime's blocked channel
 *   layout (NCHWc), tile by tile transposed into scratch memory and handed to nas_block.
 * count_rows: the same counts alone, for a tensor whose NAS is not taken (the input of a
 *   nonlinearity behind BatchNorm, when NAS is taken before it).
 * fold: adds NAS values (float32, or float64 when is_double) to the running histogram
 *   statistics of nasprobe.aggregate.LayerStats.
 *
 * Both release the GIL, so several Python threads can work on disjoint row ranges at once.
 * Plain C99 without -ffast-math: NaN semantics are kept. The exponential is our own
 * vectorisable polynomial (inputs are <= 0 after the max shift), so the compiler can turn the
 * inner loops into SIMD code; gcc on x86-64 Linux also emits x86-64-v4 (AVX-512) and x86-64-v3
 * (AVX2 + FMA) clones of the hot loop, the best one picked at load time for the CPU (on the
 * project's AMD EPYC the AVX-512 clone takes 0.39 ns per value, the AVX2 one 0.55).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__) \
    && defined(__linux__)   /* x86-64-v3/v4 clones: gcc 12 on glibc (ifunc) */
#define NP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define NP_HAVE_CLONES 1
#else
#define NP_CLONES
#endif

/* Locations per tile: the second pass over a tile's C channels then reads what the first left in
 * L1/L2 (128 measured 15 % faster than 256 on taps fresh from memory, the same in cache). */
#define BLOCK 128

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
static void nas_block(const float *restrict x, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t n,
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

static int get_buf(PyObject *obj, Py_buffer *view, int writable, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s buffer", what,
                     writable ? " writable" : "");
        return -1;
    }
    return 0;
}

static PyObject *nas_rows(PyObject *self, PyObject *args)
{
    PyObject *xo, *bo, *oo, *co = Py_None;
    Py_ssize_t outer, C, inner, start, stop;
    if (!PyArg_ParseTuple(args, "OnnnOOnn|O", &xo, &outer, &C, &inner, &bo, &oo, &start, &stop,
                          &co))
        return NULL;
    Py_buffer xv, bv, ov, cv;
    int have_c = co != Py_None;
    if (get_buf(xo, &xv, 0, "x") < 0) return NULL;
    if (get_buf(bo, &bv, 0, "bias") < 0) { PyBuffer_Release(&xv); return NULL; }
    if (get_buf(oo, &ov, 1, "out") < 0) {
        PyBuffer_Release(&xv);
        PyBuffer_Release(&bv);
        return NULL;
    }
    if (have_c && get_buf(co, &cv, 1, "counts") < 0) {
        PyBuffer_Release(&xv);
        PyBuffer_Release(&bv);
        PyBuffer_Release(&ov);
        return NULL;
    }
    int ok = C > 0 && outer >= 0 && inner > 0 && 0 <= start && start <= stop && stop <= outer
             && outer <= PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(float) / C / inner  /* no overflow */
             && xv.len == (Py_ssize_t)sizeof(float) * outer * C * inner
             && ov.len == (Py_ssize_t)sizeof(float) * outer * inner
             && bv.len == (Py_ssize_t)sizeof(float) * C
             && (!have_c || cv.len == (Py_ssize_t)sizeof(int64_t) * C);
    if (ok) {
        const float *x = (const float *)xv.buf;
        const float *b = (const float *)bv.buf;
        float *out = (float *)ov.buf;
        int64_t *cnt = have_c ? (int64_t *)cv.buf : NULL;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t o = start; o < stop; o++)
            for (Py_ssize_t j0 = 0; j0 < inner; j0 += BLOCK) {
                Py_ssize_t n = inner - j0 < BLOCK ? inner - j0 : BLOCK;
                nas_block(x + o * C * inner + j0, C, inner, n, b, out + o * inner + j0, cnt);
            }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&xv);
    PyBuffer_Release(&ov);
    PyBuffer_Release(&bv);
    if (have_c) PyBuffer_Release(&cv);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "nas_rows: buffer sizes do not match (outer, C, inner)");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A tile of TILE locations of one image in blocked layout, transposed into scratch as
 * (C, TILE): channel c's values side by side, which nas_block then reads from cache. */
#define TILE 64

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

static PyObject *nas_blocked_rows(PyObject *self, PyObject *args)
{
    PyObject *xo, *oo, *co = Py_None;
    Py_ssize_t outer, C, B, inner, start, stop;
    if (!PyArg_ParseTuple(args, "OnnnnOnn|O", &xo, &outer, &C, &B, &inner, &oo, &start, &stop,
                          &co))
        return NULL;
    Py_buffer xv, ov, cv;
    int have_c = co != Py_None;
    if (get_buf(xo, &xv, 0, "x") < 0) return NULL;
    if (get_buf(oo, &ov, 1, "out") < 0) { PyBuffer_Release(&xv); return NULL; }
    if (have_c && get_buf(co, &cv, 1, "counts") < 0) {
        PyBuffer_Release(&xv);
        PyBuffer_Release(&ov);
        return NULL;
    }
    Py_ssize_t padded = B > 0 ? (C + B - 1) / B * B : 0;
    int ok = C > 0 && B > 0 && B <= 64 && outer >= 0 && inner > 0 && 0 <= start
             && start <= stop && stop <= outer
             && outer <= PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(float) / padded / inner
             && xv.len == (Py_ssize_t)sizeof(float) * outer * padded * inner
             && ov.len == (Py_ssize_t)sizeof(float) * outer * inner
             && (!have_c || cv.len == (Py_ssize_t)sizeof(int64_t) * padded);
    int nomem = 0;
    if (ok) {
        const float *x = (const float *)xv.buf;
        float *out = (float *)ov.buf;
        int64_t *cnt = have_c ? (int64_t *)cv.buf : NULL;
        Py_BEGIN_ALLOW_THREADS
        float *tile = malloc(sizeof(float) * (size_t)padded * TILE);
        float *zero = calloc((size_t)padded, sizeof(float));
        if (tile && zero) {
            const Py_ssize_t nblk = padded / B, step = inner * B;
            for (Py_ssize_t o = start; o < stop; o++) {
                const float *xo_ = x + o * padded * inner;
                for (Py_ssize_t j0 = 0; j0 < inner; j0 += TILE) {
                    Py_ssize_t n = inner - j0 < TILE ? inner - j0 : TILE;
#ifdef HAVE_GATHER16
                    if (B == 16) gather16(xo_ + j0 * B, nblk, step, n, tile);
                    else if (B == 8) gather8(xo_ + j0 * B, nblk, step, n, tile);
                    else
#endif
                        gather_any(xo_ + j0 * B, nblk, B, step, n, tile);
                    nas_block(tile, C, TILE, n, zero, out + o * inner + j0, cnt);
                }
            }
        } else {
            nomem = 1;
        }
        free(tile);
        free(zero);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&xv);
    PyBuffer_Release(&ov);
    if (have_c) PyBuffer_Release(&cv);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError,
                        "nas_blocked_rows: buffer sizes do not match (outer, C, B, inner)");
        return NULL;
    }
    if (nomem) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

NP_CLONES
static void count_block(const float *restrict x, Py_ssize_t C, Py_ssize_t inner,
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

static PyObject *count_rows(PyObject *self, PyObject *args)
{
    PyObject *xo, *co;
    Py_ssize_t outer, C, inner;
    if (!PyArg_ParseTuple(args, "OnnnO", &xo, &outer, &C, &inner, &co)) return NULL;
    Py_buffer xv, cv;
    if (get_buf(xo, &xv, 0, "x") < 0) return NULL;
    if (get_buf(co, &cv, 1, "counts") < 0) { PyBuffer_Release(&xv); return NULL; }
    int ok = C > 0 && outer >= 0 && inner > 0
             && outer <= PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(float) / C / inner
             && xv.len == (Py_ssize_t)sizeof(float) * outer * C * inner
             && cv.len == (Py_ssize_t)sizeof(int64_t) * C;
    if (ok) {
        const float *x = (const float *)xv.buf;
        int64_t *cnt = (int64_t *)cv.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t o = 0; o < outer; o++) count_block(x + o * C * inner, C, inner, cnt);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&xv);
    PyBuffer_Release(&cv);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "count_rows: buffer sizes do not match (outer, C, inner)");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *fold(PyObject *self, PyObject *args)
{
    PyObject *vo, *co, *lo, *ho, *hio, *eo;
    double channels;
    int is_double;
    if (!PyArg_ParseTuple(args, "OOOOOOdp", &vo, &co, &lo, &ho, &hio, &eo, &channels, &is_double))
        return NULL;
    Py_buffer v, cnt, bmin, bmax, hist, edges;
    Py_buffer *views[6] = {&v, &cnt, &bmin, &bmax, &hist, &edges};
    PyObject *objs[6] = {vo, co, lo, ho, hio, eo};
    const char *names[6] = {"values", "count", "bin_min", "bin_max", "hist", "edges"};
    int got = 0;
    for (; got < 6; got++)
        if (get_buf(objs[got], views[got], got >= 1 && got <= 4, names[got]) < 0) break;
    int ok = got == 6;
    Py_ssize_t nv = 0, nfine = 0, ncoarse = 0;
    if (ok) {
        nv = v.len / (Py_ssize_t)(is_double ? sizeof(double) : sizeof(float));
        nfine = cnt.len / (Py_ssize_t)sizeof(int64_t);
        ncoarse = hist.len / (Py_ssize_t)sizeof(int64_t);
        ok = nfine > 0 && bmin.len == nfine * (Py_ssize_t)sizeof(double)
             && bmax.len == nfine * (Py_ssize_t)sizeof(double) && ncoarse > 0
             && edges.len == (ncoarse + 1) * (Py_ssize_t)sizeof(double);
        if (!ok) PyErr_SetString(PyExc_ValueError, "fold: buffer sizes do not match");
    }
    long long finite = 0, nonfinite = 0;
    double total = 0.0, entropy = 0.0;
    if (ok) {
        const float *val32 = (const float *)v.buf;
        const double *val64 = (const double *)v.buf;
        int64_t *count = (int64_t *)cnt.buf, *h = (int64_t *)hist.buf;
        double *lo_ = (double *)bmin.buf, *hi_ = (double *)bmax.buf;
        const double *e = (const double *)edges.buf;
        double first = e[0], last = e[ncoarse], norm = (double)ncoarse / (last - first);
        double logc = log(channels);
        /* sum of ln(1 - s) as the log of a running product (one log per call, not per value):
         * the product is renormalised with frexp before it can underflow; a factor < 0 makes
         * the sum NaN and a factor 0 makes it -inf, as the sum of log1p(-s) would be.
         * Four lanes, each taking a quarter of the values: four independent chains of sums and
         * products instead of one, and consecutive increments of the histograms land in bins
         * of distant values (neighbouring locations share bins, and one increment would wait
         * for the last through memory). The rest after four quarters goes to lane 0. */
        double prod[4] = {1.0, 1.0, 1.0, 1.0}, tot[4] = {0.0, 0.0, 0.0, 0.0};
        long long exps[4] = {0, 0, 0, 0}, fin[4] = {0, 0, 0, 0}, bad[4] = {0, 0, 0, 0};
        int neg = 0, zero = 0;
        const Py_ssize_t quarter = nv / 4;
        Py_BEGIN_ALLOW_THREADS
#define FOLD_ONE(IDX, L) do {                                                              \
            Py_ssize_t i_ = (IDX);                                                         \
            double s = is_double ? val64[i_] : (double)val32[i_];                          \
            if (!isfinite(s)) { bad[L]++; break; }                                         \
            fin[L]++;                                                                      \
            tot[L] += s;                                                                   \
            double q = 1.0 - s;                           /* H = ln(D (1 - s)) */          \
            if (q > 0.0) {                                                                 \
                prod[L] *= q;                                                              \
                if (prod[L] < 0x1p-900 || prod[L] > 0x1p900) {                             \
                    int e_;                                                                \
                    prod[L] = frexp(prod[L], &e_);                                         \
                    exps[L] += e_;                                                         \
                }                                                                          \
            } else if (q == 0.0) {                                                         \
                zero = 1;                                                                  \
            } else {                                                                       \
                neg = 1;                                                                   \
            }                                                                              \
            if (s >= first && s <= last) {                /* numpy.histogram's rule */     \
                Py_ssize_t k = (Py_ssize_t)((s - first) * norm);                           \
                if (k >= ncoarse) k = ncoarse - 1;                                         \
                if (s < e[k]) k--;                                                         \
                else if (k + 1 < ncoarse && s >= e[k + 1]) k++;                            \
                h[k]++;                                                                    \
            }                                                                              \
            double c = s < 0.0 ? 0.0 : (s > 1.0 ? 1.0 : s);                               \
            Py_ssize_t f = (Py_ssize_t)(c * (double)nfine);                                \
            if (f >= nfine) f = nfine - 1;                                                 \
            count[f]++;                                                                    \
            double lo1_ = lo_[f], hi1_ = hi_[f];                                           \
            lo_[f] = c < lo1_ ? c : lo1_;                                                  \
            hi_[f] = c > hi1_ ? c : hi1_;                                                  \
        } while (0)
        for (Py_ssize_t i = 0; i < quarter; i++) {
            FOLD_ONE(i, 0);
            FOLD_ONE(quarter + i, 1);
            FOLD_ONE(2 * quarter + i, 2);
            FOLD_ONE(3 * quarter + i, 3);
        }
        for (Py_ssize_t i = 4 * quarter; i < nv; i++) FOLD_ONE(i, 0);
#undef FOLD_ONE
        Py_END_ALLOW_THREADS
        double lp = 0.0;
        for (int l = 0; l < 4; l++) {
            finite += fin[l];
            nonfinite += bad[l];
            lp += log(prod[l]) + (double)exps[l] * 0.69314718055994530942;
        }
        total = (tot[0] + tot[1]) + (tot[2] + tot[3]);
        if (neg)
            entropy = NAN;
        else if (zero)
            entropy = -INFINITY;
        else if (finite)
            entropy = (double)finite * logc + lp;
    }
    for (int i = 0; i < got; i++) PyBuffer_Release(views[i]);
    if (!ok) return NULL;
    return Py_BuildValue("LLdd", finite, nonfinite, total, entropy);
}

static PyObject *simd(PyObject *self, PyObject *noargs)
{
    /* the clone of nas_block that the loader picked, by the same test gcc's resolver makes */
#ifdef NP_HAVE_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return PyUnicode_FromString("x86-64-v4 (AVX-512)");
    if (__builtin_cpu_supports("x86-64-v3"))
        return PyUnicode_FromString("x86-64-v3 (AVX2, FMA)");
    return PyUnicode_FromString("x86-64 baseline (SSE2)");
#else
    return PyUnicode_FromString("one build for this CPU family (no clones)");
#endif
}

static PyMethodDef methods[] = {
    {"simd", simd, METH_NOARGS, "simd() -> the instruction set of the NAS kernel in use."},
    {"nas_rows", nas_rows, METH_VARARGS,
     "nas_rows(x, outer, C, inner, bias, out, start, stop[, counts]): NAS of rows start..stop "
     "(float32); counts (int64, C) gets the values > 0 per channel."},
    {"nas_blocked_rows", nas_blocked_rows, METH_VARARGS,
     "nas_blocked_rows(x, outer, C, B, inner, out, start, stop[, counts]): NAS of rows "
     "start..stop of a tensor in blocked channel layout (blocks of B channels, C real ones); "
     "counts (int64, C rounded up to B) gets the values > 0 per channel."},
    {"count_rows", count_rows, METH_VARARGS,
     "count_rows(x, outer, C, inner, counts): adds the values > 0 per channel to counts."},
    {"fold", fold, METH_VARARGS,
     "fold(values, count, bin_min, bin_max, hist, edges, channels, is_double) -> "
     "(finite, nonfinite, sum, entropy_sum)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ckernels",
                                    "Fused CPU kernels of nasprobe.", -1, methods};

PyMODINIT_FUNC PyInit_ckernels(void) { return PyModule_Create(&module); }
