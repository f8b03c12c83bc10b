/* The Python bindings of nasprobe's fused CPU kernels (see nasprobe/measures/kernels.py for the
 * Python side and the numpy reference each function must match).
 *
 * nas_rows: NAS along the channel axis of a float32 tensor viewed as (outer, C, inner), less a
 *   per-channel bias, in one pass over memory: per location the max over channels, then sum(e) and sum(e*z) with
 *   z = a - max, e = exp(z); H = ln S - T/S, NAS = 1 - exp(H)/C, clamped to [0, 1 - 1/C]
 *   against rounding. A NaN or infinite input value makes its location's NAS NaN. Given a
 *   counts buffer, the same first pass also adds, per channel, how many of the row's values are
 *   > 0 (the unit activity of docs/measures.md; the raw value, before the bias is subtracted).
 * nas_blocked_rows: the same NAS (and counts) of a tensor in onnxruntime's blocked channel
 *   layout (NCHWc), tile by tile transposed into scratch memory and handed to np_nas_block.
 * count_rows: the same counts alone, for a tensor whose NAS is not taken (the input of a
 *   nonlinearity behind BatchNorm, when NAS is taken before it).
 * fold: adds NAS values (float32, or float64 when is_double) to the running histogram
 *   statistics of nasprobe.aggregate.LayerStats (a fine bin's min and max are read only once
 *   its count is above 0: its first value sets them, so they need no initial value). The
 *   fine bins are updated a chunk of values at a time, sorted by blocks of bins first.
 *
 * Each releases the GIL, so several Python threads can work on disjoint row ranges at once. The
 * loops themselves are in nas_kernels.c (shared declarations in ckernels.h).
 */
#include "ckernels.h"

/* fold: values taken per bucketed update, and bins per block of it (256 bins: 6 KB of counts,
 * minima and maxima) */
#define FOLD_CHUNK 65536
#define FOLD_SHIFT 8

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
                np_nas_block(x + o * C * inner + j0, C, inner, n, b, out + o * inner + j0, cnt);
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
                    np_gather_tile(xo_ + j0 * B, nblk, B, step, n, tile);
                    np_nas_block(tile, C, TILE, n, zero, out + o * inner + j0, cnt);
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
        for (Py_ssize_t o = 0; o < outer; o++) np_count_block(x + o * C * inner, C, inner, cnt);
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
        /* scratch of the bucketed update (below); without it, the bins are updated directly */
        const Py_ssize_t nblocks = (nfine >> FOLD_SHIFT) + 1;
        const size_t room = (size_t)(nv < FOLD_CHUNK + 3 ? nv : FOLD_CHUNK + 3);
        const size_t bytes = room * 2 * (sizeof(int32_t) + sizeof(double))
                             + sizeof(int32_t) * (size_t)nblocks;
        void *scratch = nfine <= INT32_MAX && nv >= 4 ? malloc(bytes) : NULL;
        double *kept = (double *)scratch, *skept = kept + room;
        int32_t *keys = (int32_t *)(skept + room), *skeys = keys + room, *per = skeys + room;
#define FOLD_ONE(IDX, L, STEP) do {                                                        \
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
            STEP(f, c);                                                                    \
        } while (0)
#define UPDATE(F, C) do {                                                                  \
            Py_ssize_t f_ = (F);                                                           \
            double c_ = (C);                                                               \
            if (count[f_]++ == 0) {       /* a bin's bounds are set by its first value */  \
                lo_[f_] = c_;                                                              \
                hi_[f_] = c_;                                                              \
            } else {                                                                       \
                double lo1_ = lo_[f_], hi1_ = hi_[f_];                                     \
                lo_[f_] = c_ < lo1_ ? c_ : lo1_;                                           \
                hi_[f_] = c_ > hi1_ ? c_ : hi1_;                                           \
            }                                                                              \
        } while (0)
#define KEEP(F, C) do {                                                                    \
            keys[m] = (int32_t)(F);                                                        \
            kept[m] = (C);                                                                 \
            per[(F) >> FOLD_SHIFT]++;                                                      \
            m++;                                                                           \
        } while (0)
        /* The statistics of the values (sums, coarse histogram) are taken in the order of the
         * four lanes; the fine bins are updated FOLD_CHUNK values at a time, grouped first by
         * blocks of 2^FOLD_SHIFT bins (a counting sort by block), so that the updates sweep the
         * bins upwards, each block's few KB in L1, instead of landing anywhere in 1.2 MB. */
        if (scratch) {
            const Py_ssize_t step = FOLD_CHUNK / 4;
            for (Py_ssize_t i0 = 0; i0 < quarter; i0 += step) {  /* quarter >= 1 here */
                Py_ssize_t i1 = i0 + step < quarter ? i0 + step : quarter, m = 0;
                memset(per, 0, sizeof(int32_t) * (size_t)nblocks);
                for (Py_ssize_t i = i0; i < i1; i++) {
                    FOLD_ONE(i, 0, KEEP);
                    FOLD_ONE(quarter + i, 1, KEEP);
                    FOLD_ONE(2 * quarter + i, 2, KEEP);
                    FOLD_ONE(3 * quarter + i, 3, KEEP);
                }
                if (i1 == quarter)  /* the rest after four quarters: lane 0 */
                    for (Py_ssize_t i = 4 * quarter; i < nv; i++) FOLD_ONE(i, 0, KEEP);
                int32_t at = 0;
                for (Py_ssize_t k = 0; k < nblocks; k++) {
                    int32_t c_ = per[k];
                    per[k] = at;
                    at += c_;
                }
                for (Py_ssize_t j = 0; j < m; j++) {
                    int32_t p_ = per[keys[j] >> FOLD_SHIFT]++;
                    skeys[p_] = keys[j];
                    skept[p_] = kept[j];
                }
                for (Py_ssize_t j = 0; j < m; j++) UPDATE(skeys[j], skept[j]);
            }
        } else {
            for (Py_ssize_t i = 0; i < quarter; i++) {
                FOLD_ONE(i, 0, UPDATE);
                FOLD_ONE(quarter + i, 1, UPDATE);
                FOLD_ONE(2 * quarter + i, 2, UPDATE);
                FOLD_ONE(3 * quarter + i, 3, UPDATE);
            }
            for (Py_ssize_t i = 4 * quarter; i < nv; i++) FOLD_ONE(i, 0, UPDATE);
        }
#undef KEEP
#undef UPDATE
#undef FOLD_ONE
        free(scratch);
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
