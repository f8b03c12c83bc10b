"""The compiled host kernels (nasprobe/measures/ckernels.c, nas_kernels.c) against the numpy reference and fallback."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nasprobe import kernels
from nasprobe.measures.aggregate import FINE_BINS, NAS_BINS
from nasprobe.measures.nas import entropy_from_nas, nas

# The extension is built wherever the tests run (the Makefile installs with a C compiler): a
# missing build is a failure, never a skip.
_c = kernels.ckernels


def test_kernels_are_built():
    assert kernels.available(), "nasprobe.measures.ckernels is not built: run `make` (needs a C compiler)"
    from nasprobe.measures import ckernels  # noqa: F401 - importable under its public name too
    # the clone the loader picked is named (doctor prints it)
    assert kernels.simd() in {"x86-64-v4 (AVX-512)", "x86-64-v3 (AVX2, FMA)",
                              "x86-64 baseline (SSE2)", "one build for this CPU family (no clones)"}


@pytest.fixture
def threads():
    """kernels.set_threads, restored to the default (all CPUs) afterwards."""
    yield kernels.set_threads
    kernels.set_threads(None)


def _f32(a):
    """``a`` rounded to float32 and back: the values a float32 tap tensor can hold."""
    return np.asarray(a).astype(np.float32).astype(np.float64)


def _reference(a, axis, bias=None):
    x = np.asarray(a, dtype=np.float64)
    if bias is not None:
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        x = x - np.asarray(bias, np.float64).reshape(shape)
    return nas(x, axis=axis)


def _check(a, axis, bias=None, atol=1e-5):
    """C kernel and numpy fallback both match the float64 reference; returns the C result."""
    assert kernels.available()
    ref = _reference(a, axis, bias)
    got = kernels.nas_map(a, axis, bias, use_c=True)
    fallback = kernels.nas_map(a, axis, bias, use_c=False)
    for out in (got, fallback):
        assert out.dtype == np.float32 and out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=atol, rtol=0)
    np.testing.assert_allclose(got, fallback, atol=atol, rtol=0)
    d = np.asarray(a).shape[axis]
    assert np.isfinite(got).all()
    assert (got >= -1e-6).all() and (got <= 1 - 1 / d + 1e-6).all()
    return got


SHAPES = [
    pytest.param((3, 6, 8, 8), 1, id="nchw"),
    pytest.param((3, 7, 5, 9), 1, id="nchw-odd"),
    pytest.param((2, 33, 17, 19), 1, id="nchw-C33-inner323"),  # two BLOCKs, ragged chunk
    pytest.param((2, 65, 259), 1, id="ncl-C65-inner259"),
    pytest.param((2, 31, 256), 1, id="ncl-C31-inner256"),
    pytest.param((2, 32, 257), 1, id="ncl-C32-inner257"),
    pytest.param((3, 5, 9, 37), -1, id="nhwc-axis-1"),
    pytest.param((3, 5, 9, 37), 3, id="nhwc-axis3"),
    pytest.param((4, 13, 70), 2, id="ntd"),
    pytest.param((4, 11, 3), 2, id="ntd-small"),
    pytest.param((11, 300), 1, id="dense"),
    pytest.param((5, 7), -1, id="dense-axis-1"),
    pytest.param((7, 5), 0, id="dense-axis0"),
    pytest.param((1, 1000, 3, 3), 1, id="wide"),
    pytest.param((9,), 0, id="vector"),
]


@pytest.mark.parametrize("shape, axis", SHAPES)
def test_nas_map_matches_reference(shape, axis):
    a = np.random.default_rng(len(shape) + sum(shape)).normal(0, 2, shape)
    _check(a, axis)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_any_float_dtype(dtype):
    a = np.random.default_rng(1).normal(0, 3, (2, 19, 6, 5)).astype(dtype)
    _check(a, 1)


def test_non_contiguous_input():
    a = np.random.default_rng(2).normal(0, 2, (4, 9, 12, 10))[:, :, ::2, 1:]
    assert not a.flags.c_contiguous
    _check(a, 1)
    _check(np.swapaxes(a, 1, 3), 3)


@pytest.mark.parametrize("shape, axis", [((2, 1), 1), ((3, 1, 5, 5), 1), ((2, 4, 1), 2)])
def test_one_channel_gives_zero(shape, axis):
    a = np.random.default_rng(3).normal(0, 100, shape)
    got = _check(a, axis)
    assert (got == 0).all()


def test_equal_channels_give_zero_and_one_hot_gives_the_maximum():
    a = np.full((2, 64, 10), 3.5)
    np.testing.assert_allclose(_check(a, 1), 0, atol=1e-6)
    a = np.full((2, 11, 10), -2.0)
    np.testing.assert_allclose(_check(a, 1), 0, atol=1e-6)
    b = np.full((2, 64, 10), -1e4)
    b[:, 3] = 1e4
    np.testing.assert_allclose(_check(b, 1), 1 - 1 / 64, atol=1e-6)


@pytest.mark.parametrize("channels", [2, 3, 10, 11, 64, 100, 1000])
def test_equal_channels_are_never_below_zero(channels):
    # nas_map promises [0, 1 - 1/D]. Equal channels (a zero-initialised layer, a zero input
    # region with exclude_bias) must give a value >= 0: one a hair below 0 is not counted in
    # nas_hist at all (numpy.histogram's rule), so the layer's histogram would lose it.
    a = np.zeros((2, channels, 3), np.float32)
    got = kernels.nas_map(a, 1, use_c=True)
    assert (got >= 0).all() and (got <= 1e-6).all(), got.ravel()[:3]
    count, lo, hi, hist = _state()
    finite, *_ = kernels.fold(got, count, lo, hi, hist, NAS_BINS, channels, use_c=True)
    assert hist.sum() == finite == got.size


@pytest.mark.parametrize("kind", ["uniform", "normal", "near+1e4", "near-1e4"])
def test_inputs_of_1e4_are_stable(kind):
    # The tap tensors the kernel sees are float32; values are drawn float32-representable so
    # that the comparison measures the kernel's own error. (float64 values of magnitude 1e4 move
    # by up to 5e-4 when rounded to float32, which alone can move NAS by more than 1e-5.)
    rng = np.random.default_rng(4)
    shape = (3, 33, 17, 19)
    a = {"uniform": lambda: rng.uniform(-1e4, 1e4, shape),
         "normal": lambda: rng.normal(0, 1e4, shape),
         "near+1e4": lambda: 1e4 + rng.normal(0, 3, shape),
         "near-1e4": lambda: -1e4 + rng.normal(0, 3, shape)}[kind]()
    _check(_f32(a), 1)
    _check(_f32(np.moveaxis(a, 1, -1)), -1)


@pytest.mark.parametrize("shape, axis", [((3, 33, 7, 5), 1), ((2, 6, 5, 33), 3), ((2, 9, 65), 2),
                                         ((6, 65), 1)])
def test_bias_is_subtracted(shape, axis):
    rng = np.random.default_rng(5)
    a = rng.normal(0, 2, shape)
    bias = rng.normal(0, 5, shape[axis])
    got = _check(a, axis, bias)
    # A real difference: without the bias the maps are other maps.
    assert np.abs(got - kernels.nas_map(a, axis, use_c=True)).max() > 1e-3
    # The kernel works in float32: a float32 bias gives the very same maps.
    np.testing.assert_array_equal(kernels.nas_map(a, axis, bias.astype(np.float32), use_c=True), got)


@pytest.mark.parametrize("shape, axis", [((3, 6, 5, 7), 1), ((3, 5, 7, 6), 3), ((3, 5, 6), 2),
                                         ((5, 6), 1)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("use_c", [True, False])
def test_nonfinite_value_makes_exactly_its_location_nan(shape, axis, bad, use_c):
    rng = np.random.default_rng(6)
    a = rng.normal(0, 2, shape)
    clean = kernels.nas_map(a, axis, use_c=use_c)
    out_shape = clean.shape
    # Two bad locations, the bad value in a middle channel and in the last one.
    locs = [tuple(int(rng.integers(s)) for s in out_shape) for _ in range(2)]
    locs = list(dict.fromkeys(locs))
    for loc, ch in zip(locs, [shape[axis] // 2, shape[axis] - 1]):
        idx = list(loc)
        idx.insert(axis % len(shape), ch)
        a[tuple(idx)] = bad
    got = kernels.nas_map(a, axis, use_c=use_c)
    want_nan = np.zeros(out_shape, bool)
    for loc in locs:
        want_nan[loc] = True
    np.testing.assert_array_equal(np.isnan(got), want_nan)
    np.testing.assert_array_equal(got[~want_nan], clean[~want_nan])


def test_nonfinite_everywhere_in_one_location():
    a = np.random.default_rng(7).normal(0, 1, (2, 8, 3))
    a[1, :, 2] = -np.inf
    a[0, :, 0] = np.nan
    got = kernels.nas_map(a, 1, use_c=True)
    np.testing.assert_array_equal(np.isnan(got), [[True, False, False], [False, False, True]])
    with np.errstate(divide="ignore"):  # the numpy fallback's log(0) for an all -inf location
        np.testing.assert_array_equal(np.isnan(kernels.nas_map(a, 1, use_c=False)), np.isnan(got))


def test_nan_bias_makes_every_location_nan():
    a = np.random.default_rng(8).normal(0, 1, (2, 4, 3))
    assert np.isnan(kernels.nas_map(a, 1, np.array([0, np.nan, 0, 0]), use_c=True)).all()


def _row_calls(monkeypatch, a, axis, n_threads=None):
    """The sorted row ranges ``nas_map(a, axis, threads=n_threads)`` hands to the compiled
    kernel, and its result."""
    calls, real = [], _c.nas_rows

    def spy(x, outer, c, inner, b, out, start, stop):
        calls.append((start, stop))
        return real(x, outer, c, inner, b, out, start, stop)

    with monkeypatch.context() as m:
        m.setattr(kernels, "ckernels", type("C", (), {"nas_rows": staticmethod(spy)}))
        got = kernels.nas_map(a, axis, use_c=True, threads=n_threads)
    return sorted(calls), got


@pytest.mark.parametrize("shape, axis", [((7, 48, 15, 14), 1), ((7, 15, 14, 48), 3),
                                         ((9, 200, 40), 2)])
@pytest.mark.parametrize("n", [2, 3])
def test_threads_give_the_single_threaded_result(threads, monkeypatch, shape, axis, n):
    a = np.random.default_rng(9).normal(0, 2, shape)
    idx = [3] + [1] * (len(shape) - 1)
    idx[axis] = 5
    a[tuple(idx)] = np.nan  # a NaN location in a row of the second thread
    # small arrays, so that the test stays quick: let every thread take as few values as these
    monkeypatch.setattr(kernels, "MIN_VALUES_PER_THREAD", a.size // n)
    threads(1)
    single = kernels.nas_map(a, axis, use_c=True)
    # Record the row ranges the threads get: they must tile [0, outer) with several calls.
    threads(n)
    calls, multi = _row_calls(monkeypatch, a, axis)
    np.testing.assert_array_equal(multi, single)
    assert len(calls) > 1 and calls[0][0] == 0 and calls[-1][1] == shape[0]
    assert all(s1 == e0 for (_, e0), (s1, _) in zip(calls, calls[1:]))
    np.testing.assert_allclose(multi, _reference(a, axis), atol=1e-5, rtol=0)


def test_a_small_tensor_stays_on_the_calling_thread(monkeypatch):
    """Waking the pool costs more than a small tensor's NAS: under twice
    MIN_VALUES_PER_THREAD values, one call on the calling thread whatever the threads asked."""
    per = kernels.MIN_VALUES_PER_THREAD
    a = np.random.default_rng(10).normal(0, 1, (64, 8, 2 * per // 8 // 64 - 1)).astype(np.float32)
    assert per <= a.size < 2 * per
    calls, got = _row_calls(monkeypatch, a, 1, 4)
    assert calls == [(0, 64)]
    np.testing.assert_array_equal(got, kernels.nas_map(a, 1, use_c=True, threads=1))


def test_threads_get_at_least_min_values_each(monkeypatch):
    """Two and a half times MIN_VALUES_PER_THREAD values: two threads, not the four asked."""
    per = kernels.MIN_VALUES_PER_THREAD
    a = np.random.default_rng(11).normal(0, 1, (64, 8, 5 * per // 2 // 8 // 64)).astype(np.float32)
    calls, got = _row_calls(monkeypatch, a, 1, 4)
    assert calls == [(0, 32), (32, 64)]
    np.testing.assert_array_equal(got, kernels.nas_map(a, 1, use_c=True, threads=1))
    np.testing.assert_allclose(got, _reference(a, 1), atol=1e-5, rtol=0)


def test_set_threads_none_restores_the_default(threads):
    threads(0)
    assert kernels._threads() == 1
    threads(None)
    assert kernels._threads() >= 1


# --- fold --------------------------------------------------------------------------------------

def _state(fine=FINE_BINS):
    return (np.zeros(fine, np.int64), np.full(fine, np.inf), np.full(fine, -np.inf),
            np.zeros(len(NAS_BINS) - 1, np.int64))


def _values(rng, dtype, extra):
    edges = np.concatenate([NAS_BINS, np.nextafter(NAS_BINS, -1), np.nextafter(NAS_BINS, 2)])
    fine_edges = np.arange(0, FINE_BINS + 1, 997) / FINE_BINS
    v = np.concatenate([rng.uniform(0, 1, 4000), rng.beta(0.3, 0.5, 3000), rng.uniform(0.4, 0.41, 500),
                        [0.0, 0.0, 0.5, 0.01, 0.29, 0.99, 0.999999],
                        edges[(edges >= 0) & (edges < 1)], fine_edges[fine_edges < 1], extra])
    rng.shuffle(v)
    return v.astype(dtype)


EXTRAS = {
    "in-range": [],
    "nonfinite": [np.nan, np.inf, -np.inf, np.nan],
    "zero-one-negative": [0.0, 1.0, 1.0, -1e-7, -1e-7, 1 - 1e-7],
    "above-one": [1.0000001, 1.5, 2.0, 1.0, -1e-7],
    "all": [np.nan, np.inf, -np.inf, 0.0, 1.0, -1e-7, 1.0000001, 1.5],
}


def _same(a, b, rel=1e-9):
    if np.isnan(a) or np.isnan(b):
        return np.isnan(a) and np.isnan(b)
    if np.isinf(a) or np.isinf(b):
        return a == b
    return a == pytest.approx(b, rel=rel, abs=1e-12)


@pytest.mark.parametrize("use_c", [True, False])
def test_fold_sets_a_bins_bounds_from_its_first_value(use_c):
    """bin_min / bin_max need no initial values (LayerStats leaves them uninitialised): started
    from garbage, every occupied bin holds the smallest and largest of the clipped values that
    fell in it (numpy's own reduction per bin), over two batches; empty bins are untouched."""
    rng = np.random.default_rng(11)
    batches = [_values(rng, np.float32, EXTRAS["zero-one-negative"]), rng.beta(2, 5, 3000)]
    count, hist = np.zeros(FINE_BINS, np.int64), np.zeros(len(NAS_BINS) - 1, np.int64)
    garbage = rng.normal(0, 10, (2, FINE_BINS))
    lo, hi = garbage[0].copy(), garbage[1].copy()
    for v in batches:
        kernels.fold(v, count, lo, hi, hist, NAS_BINS, 8, use_c=use_c)
    values = np.clip(np.concatenate([np.ravel(b).astype(np.float32).astype(np.float64)
                                     if b.dtype == np.float32 else b for b in batches]), 0, 1)
    idx = np.minimum((values * FINE_BINS).astype(np.int64), FINE_BINS - 1)
    occupied = np.unique(idx)
    np.testing.assert_array_equal(np.flatnonzero(count), occupied)
    np.testing.assert_array_equal(count[occupied], np.bincount(idx)[occupied])
    want_lo, want_hi = np.full(FINE_BINS, np.inf), np.full(FINE_BINS, -np.inf)
    np.minimum.at(want_lo, idx, values)
    np.maximum.at(want_hi, idx, values)
    np.testing.assert_array_equal(lo[occupied], want_lo[occupied])
    np.testing.assert_array_equal(hi[occupied], want_hi[occupied])
    empty = count == 0
    assert (lo[empty] == garbage[0][empty]).all() and (hi[empty] == garbage[1][empty]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_fold_c_equals_numpy(dtype, extra):
    rng = np.random.default_rng(10)
    batches = [_values(rng, dtype, EXTRAS[extra]), _values(rng, dtype, [])[:1000].reshape(10, 100)]
    channels = 37
    sc, sn = _state(), _state()
    for v in batches:
        with np.errstate(invalid="ignore", divide="ignore"):  # the numpy fallback's ln(D(1-s))
            rc = kernels.fold(v, *sc, NAS_BINS, channels, use_c=True)
            rn = kernels.fold(v, *sn, NAS_BINS, channels, use_c=False)
        for a, b, name in zip(sc, sn, ["count", "bin_min", "bin_max", "hist"]):
            np.testing.assert_array_equal(a, b, err_msg=name)
        assert rc[:2] == rn[:2]
        assert all(_same(a, b) for a, b in zip(rc[2:], rn[2:])), (rc, rn)

        # And against numpy's own reductions of the finite values (float32 values as float32).
        f = np.asarray(v).ravel().astype(np.float64)
        f = f[np.isfinite(f)]
        assert rc[0] == f.size and rc[1] == v.size - f.size
        assert rc[2] == pytest.approx(f.sum(), rel=1e-9)
        with np.errstate(invalid="ignore", divide="ignore"):
            assert _same(rc[3], entropy_from_nas(f, channels).sum())
    total = np.concatenate([np.ravel(v).astype(np.float64) for v in batches])
    total = total[np.isfinite(total)]
    np.testing.assert_array_equal(sc[3], np.histogram(total, bins=NAS_BINS)[0])
    assert sc[0].sum() == total.size
    clipped = np.clip(total, 0, 1)
    nz = np.flatnonzero(sc[0])
    assert sc[1][nz[0]] == clipped.min() and sc[2][nz[-1]] == clipped.max()
    assert (sc[1][nz] <= sc[2][nz]).all() and np.isinf(sc[1][sc[0] == 0]).all()


@pytest.mark.parametrize("n", [4 * 16384, 4 * 16384 + 3, 200_001, 4 * 65536 + 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fold_of_several_chunks_equals_numpy(n, dtype):
    """The C fold updates the fine bins 65,536 values at a time, grouped by blocks of bins:
    sizes of one chunk exactly, one chunk and a rest of 1-3 values for lane 0, several chunks
    and a rest give numpy's counts, minima and maxima, and the same sums."""
    rng = np.random.default_rng(n)
    v = np.concatenate([rng.beta(2, 5, n - 40), rng.uniform(0.3, 0.3001, 30),
                        [np.nan, np.inf, -1e-7, 1.0, 1.5, 0.0, 0.5, 0.25, 0.999999, 0.01]])
    v = v[rng.permutation(n)].astype(dtype)
    sc, sn = _state(), _state()
    with np.errstate(invalid="ignore", divide="ignore"):
        rc = kernels.fold(v, *sc, NAS_BINS, 16, use_c=True)
        rn = kernels.fold(v, *sn, NAS_BINS, 16, use_c=False)
    for a, b, name in zip(sc, sn, ["count", "bin_min", "bin_max", "hist"]):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert rc[:2] == rn[:2] == (n - 2, 2)
    assert rc[2] == pytest.approx(rn[2], rel=1e-12) and np.isnan(rc[3]) and np.isnan(rn[3])
    # without the value above 1 (ln of a negative) and 1 itself (ln 0), a finite entropy sum
    keep = np.isfinite(v) & (v < 1)
    sc, sn = _state(), _state()
    rc = kernels.fold(v[keep], *sc, NAS_BINS, 16, use_c=True)
    rn = kernels.fold(v[keep], *sn, NAS_BINS, 16, use_c=False)
    np.testing.assert_array_equal(sc[0], sn[0])
    assert np.isfinite(rc[3]) and rc[3] == pytest.approx(rn[3], rel=1e-9)


@pytest.mark.parametrize("use_c", [True, False])
def test_fold_of_nothing_and_of_only_nonfinite(use_c):
    s = _state()
    assert kernels.fold(np.array([], np.float32), *s, NAS_BINS, 4, use_c=use_c) == (0, 0, 0.0, 0.0)
    assert kernels.fold(np.array([np.nan, np.inf]), *s, NAS_BINS, 4, use_c=use_c) == (0, 2, 0.0, 0.0)
    assert not any(x.any() for x in (s[0], s[3])) and np.isinf(s[1]).all()


def test_fold_non_contiguous_and_other_dtypes():
    rng = np.random.default_rng(11)
    v = rng.uniform(0, 1, (6, 20, 30))[:, ::3, 1::2]
    for values in (v, v.astype(np.float16), np.swapaxes(v, 0, 2)):
        sc, sn = _state(), _state()
        rc = kernels.fold(values, *sc, NAS_BINS, 10, use_c=True)
        rn = kernels.fold(values, *sn, NAS_BINS, 10, use_c=False)
        assert rc[:2] == rn[:2] and _same(rc[2], rn[2]) and _same(rc[3], rn[3])
        for a, b in zip(sc, sn):
            np.testing.assert_array_equal(a, b)


# --- raw C functions: bad arguments are exceptions, not crashes --------------------------------

def _rows_args(outer=2, c=3, inner=4):
    return [np.zeros(outer * c * inner, np.float32), outer, c, inner, np.zeros(c, np.float32),
            np.zeros(outer * inner, np.float32), 0, outer]


def test_nas_rows_accepts_matching_sizes():
    args = _rows_args()
    args[5][:] = np.nan
    args[0][:] = np.random.default_rng(12).normal(0, 1, args[0].shape)
    assert _c.nas_rows(*args) is None
    np.testing.assert_allclose(args[5], nas(args[0].reshape(2, 3, 4).astype(np.float64), axis=1).ravel(),
                               atol=1e-6)


@pytest.mark.parametrize("change", [
    {0: np.zeros(23, np.float32)},  # x too short
    {0: np.zeros(25, np.float32)},  # x too long
    {0: np.zeros(24, np.float64)},  # x of the wrong itemsize (twice the bytes)
    {5: np.zeros(7, np.float32)},   # out too short
    {5: np.zeros(9, np.float32)},   # out too long
    {4: np.zeros(2, np.float32)},   # bias too short
    {4: np.zeros(4, np.float32)},   # bias too long
    {1: 3},                         # outer does not match
    {2: 4},                         # C does not match
    {3: 3},                         # inner does not match
    {2: 0, 0: np.zeros(0, np.float32), 4: np.zeros(0, np.float32)},  # no channels
    {3: 0, 0: np.zeros(0, np.float32), 5: np.zeros(0, np.float32)},  # no locations
    {1: -1},                        # negative outer
    {6: -1},                        # start before 0
    {7: 3},                         # stop past outer
    {6: 2, 7: 1},                   # start after stop
])
def test_nas_rows_rejects_wrong_sizes(change):
    args = _rows_args()
    for i, v in change.items():
        args[i] = v
    with pytest.raises(ValueError, match="nas_rows"):
        _c.nas_rows(*args)


def test_nas_rows_rejects_unusable_buffers():
    args = _rows_args()
    ro = args[5].copy()
    ro.flags.writeable = False
    for i, v in [(5, ro), (0, np.zeros((48,), np.float32)[::2]), (0, [0.0] * 24), (4, None)]:
        bad = list(args)
        bad[i] = v
        with pytest.raises(TypeError):
            _c.nas_rows(*bad)
    with pytest.raises(TypeError):
        _c.nas_rows(*args[:-1])


def test_nas_rows_rejects_sizes_whose_product_overflows():
    # outer * C * inner * 4 bytes wraps around to 0 in 64 bits: must be refused, not read and
    # written past empty buffers. In a subprocess, so that a crash fails this test only.
    code = textwrap.dedent("""
        import numpy as np
        from nasprobe.measures import ckernels
        e = np.zeros(0, np.float32)
        try:
            ckernels.nas_rows(e, 2**62, 1, 1, np.zeros(1, np.float32), e, 0, 2**62)
        except ValueError:
            print("ValueError")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ValueError", \
        f"exit {res.returncode}: {res.stdout}{res.stderr}"


@pytest.mark.parametrize("which, value", [
    (1, np.zeros(FINE_BINS, np.int64)[:0]),      # no fine bins
    (2, np.full(FINE_BINS - 1, np.inf)),         # bin_min shorter than count
    (3, np.full(FINE_BINS + 1, -np.inf)),        # bin_max longer than count
    (4, np.zeros(0, np.int64)),                  # no histogram bins
    (5, np.linspace(0, 1, 100)),                 # edges not hist + 1
    (2, np.full(FINE_BINS, np.inf, np.float32)), # bin_min of float32
])
def test_raw_fold_rejects_wrong_sizes(which, value):
    args = [np.linspace(0, 1, 10), *_state(), NAS_BINS, 5.0, True]
    args[which] = value
    with pytest.raises(ValueError, match="fold"):
        _c.fold(*args)


def test_raw_fold_rejects_read_only_state():
    args = [np.linspace(0, 1, 10), *_state(), NAS_BINS, 5.0, True]
    args[4].flags.writeable = False
    with pytest.raises(TypeError):
        _c.fold(*args)


def test_threaded_kernel_works_in_a_forked_child():
    """A process forked after the kernel's thread pool exists gets a fresh pool, not a hang."""
    import multiprocessing as mp

    kernels.set_threads(2)
    try:
        a = np.random.default_rng(5).normal(0, 2, (64, 16, 32, 32)).astype(np.float32)
        expected = kernels.nas_map(a, 1)  # creates the pool in this process
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(kernels.nas_map, (a, 1)).get(timeout=60)
        np.testing.assert_array_equal(got, expected)
    finally:
        kernels.set_threads(None)


@pytest.mark.parametrize("q", [2.0**-20, 0.999, 1e300])
def test_fold_entropy_sum_survives_a_product_that_would_under_or_overflow(q):
    """The C fold sums ln(1 - s) as the log of a running product: 10,000 factors of 2**-20
    (or of 1e300, from s = 1 - 1e300) must neither underflow to 0 nor overflow to inf."""
    channels = 2**20
    v = np.full(10_000, 1.0 - q)
    sc, sn = _state(), _state()
    rc = kernels.fold(v, *sc, NAS_BINS, channels, use_c=True)
    rn = kernels.fold(v, *sn, NAS_BINS, channels, use_c=False)
    expected = v.size * np.log(channels * q)
    assert np.isfinite(rc[3]) and rc[3] == pytest.approx(expected, rel=1e-12)
    assert rc[3] == pytest.approx(rn[3], rel=1e-12)


def test_streams_calling_the_kernel_at_once_with_their_own_threads_get_todays_maps():
    """Probe streams call nas_map concurrently, each with its share of threads, through one
    shared pool: every map equals the single-threaded one."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    arrays = [rng.normal(0, 3, (16, 24, 20, 20)).astype(np.float32) for _ in range(6)]
    want = [kernels.nas_map(a, 1, threads=1) for a in arrays]
    for threads in (1, 2, 3):
        with ThreadPoolExecutor(3) as streams:
            got = list(streams.map(lambda a, t=threads: kernels.nas_map(a, 1, threads=t), arrays))
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
