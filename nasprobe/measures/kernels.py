"""Host-side NAS kernels: NAS maps from raw tap tensors, and the folding of NAS values into
running histogram statistics.

On CPU it is cheaper to let onnxruntime hand back the raw tap tensors and compute NAS in one
fused pass over memory than to append NAS as five or six separate operators to the graph, each
of which reads (and most of which write) the whole tap tensor. The fused pass is the small C
extension :mod:`nasprobe.measures.ckernels`, built at install time when a C compiler is present; without
it every function here falls back to numpy (same results, slower) and
:func:`available` is False, in which case probing keeps NAS inside the graph.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nasprobe.cpus import usable_cpus

from .nas import entropy_from_nas, nas

try:  # built by setup.py; optional
    from . import ckernels
except ImportError:  # pragma: no cover - exercised only where no C compiler was available
    ckernels = None

__all__ = ["available", "extension_file", "simd", "nas_map", "nas_map_blocked", "count_positive",
           "fold", "set_threads", "MIN_VALUES_PER_THREAD"]

#: Values each thread of :func:`nas_map` gets at least: a smaller tensor uses fewer threads.
#: Handing rows to the pool and waking its threads costs tens of µs; on a 2-core EPYC two
#: threads were slower than one up to 262,144 values (a 1.5× loss at 131,072) and faster from
#: 524,288 (docs/speed.md).
MIN_VALUES_PER_THREAD = 1 << 18

_THREADS: int | None = None
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE = None, 0  # a forked child has no threads: the parent's pool would hang
    _POOL_LOCK = threading.Lock()  # and a lock held by a parent's thread is never released


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def available() -> bool:
    """True when the compiled kernels are importable (``nasprobe.measures.ckernels``)."""
    return ckernels is not None


def extension_file() -> str | None:
    """Path of the compiled extension module that :func:`nas_map` uses, or None when not built."""
    return None if ckernels is None else ckernels.__file__


def simd() -> str | None:
    """The instruction set the compiled NAS kernel runs with on this CPU, e.g.
    ``"x86-64-v4 (AVX-512)"`` (gcc on x86-64 Linux builds several and picks one at load
    time); None when the kernels are not built."""
    return None if ckernels is None else ckernels.simd()


def set_threads(n: int | None) -> None:
    """Threads :func:`nas_map` may use (None: the CPUs this process may run on)."""
    global _THREADS
    _THREADS = None if n is None else max(1, int(n))


def _threads() -> int:
    return _THREADS if _THREADS is not None else usable_cpus()


def _pool(n: int) -> ThreadPoolExecutor:
    """The kernel's worker pool, with at least ``n`` threads; several probe streams share it.
    A pool that is outgrown is dropped, not shut down (a stream may still be submitting to
    it); its idle threads end when it is garbage-collected."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < n:
            _POOL, _POOL_SIZE = ThreadPoolExecutor(n, thread_name_prefix="nasprobe-kernel"), n
        return _POOL


def nas_map(a: np.ndarray, axis: int, bias: np.ndarray | None = None, *,
            use_c: bool | None = None, threads: int | None = None,
            counts: np.ndarray | None = None) -> np.ndarray:
    """NAS along ``axis`` of a tap tensor (docs/measures.md), as float32.

    Args:
        a: the tap tensor, any float dtype, e.g. ``(N, D, H, W)`` with ``axis=1`` or
            ``(N, T, D)`` with ``axis=2``.
        axis: the channel axis (``D`` channels; negative counts from the end).
        bias: optional ``(D,)`` values subtracted per channel first.
        use_c: force (True) or forbid (False) the compiled kernel; default: use it when built.
        threads: threads for the compiled kernel at most (default: :func:`set_threads`'s, all
            CPUs); a probe stream passes its own share (:func:`nasprobe.job.pipeline.cpu_streams`).
            A tensor of fewer than ``threads`` × :data:`MIN_VALUES_PER_THREAD` values uses
            fewer (one below twice that), whatever the setting.
        counts: optional ``(D,)`` int64 array to which the same pass adds, per channel, how
            many values of ``a`` are above zero (before ``bias`` is subtracted; NaN counts as
            not above): the numerator of the unit activity (docs/measures.md, "Dead units").

    Returns:
        ``a.shape`` without ``axis``, float32 in ``[0, 1 - 1/D]``; NaN where any channel value at
        that location is NaN or infinite. The kernel works in float32, so float64 inputs beyond
        the float32 range (|a| > 3.4e38) count as infinite. Matches :func:`nasprobe.measures.nas.nas` in float64 to
        ~1e-6 (float32 arithmetic with float64 totals; the max shift keeps ±1e4 inputs finite).
    """
    a = np.asarray(a)
    axis = axis % a.ndim
    channels = a.shape[axis]
    out_shape = a.shape[:axis] + a.shape[axis + 1:]
    if use_c is None:
        use_c = ckernels is not None
    if use_c and ckernels is None:
        raise RuntimeError("nasprobe.measures.ckernels is not built (no C compiler at install time?)")
    if counts is not None:
        _check_counts(counts, channels)
    if not use_c:
        if counts is not None:
            counts += _positive(a, axis)
        x = a.astype(np.float64)
        if bias is not None:
            shape = [1] * a.ndim
            shape[axis] = channels
            x = x - np.asarray(bias, np.float64).reshape(shape)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return nas(x, axis=axis).astype(np.float32)
    if a.ndim > 2 and axis != 1:  # channels to axis 1, so that locations are contiguous
        a = np.moveaxis(a, axis, 1)
        axis = 1
    x = np.ascontiguousarray(a, dtype=np.float32)
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1:])
    if inner == 1 < outer:  # dense (N, D): the kernel vectorises over locations, so give it
        x = np.ascontiguousarray(x.reshape(outer, channels).T)  # (D, N), one row of N
        outer, inner = 1, outer
    b = (np.zeros(channels, np.float32) if bias is None
         else np.ascontiguousarray(bias, dtype=np.float32).reshape(channels))
    out = np.empty(outer * inner, np.float32)
    if out.size == 0:
        return out.reshape(out_shape)
    _rows(lambda *a: ckernels.nas_rows(x, outer, channels, inner, b, out, *a), outer, x.size,
          threads, counts, channels)
    return out.reshape(out_shape)


def nas_map_blocked(a: np.ndarray, channels: int, block: int, *, threads: int | None = None,
                    counts: np.ndarray | None = None) -> np.ndarray:
    """NAS over the channels of a tensor in onnxruntime's blocked channel layout (NCHWc), as
    float32, equal to :func:`nas_map` of the same tensor in NCHW layout.

    Args:
        a: ``(N, Cp, *spatial)`` float32 as onnxruntime returns a blocked tensor: in memory
            ``(N, Cp / block, *spatial, block)``, ``Cp`` = ``channels`` rounded up to ``block``
            (the lanes past ``channels`` are padding and ignored).
        channels: ``D``, the real channels.
        block: channels per block (16 on AVX-512 CPUs, 8 on AVX2 ones; at most 64).
        threads, counts: as for :func:`nas_map` (``counts``: ``(D,)`` int64).

    Returns:
        ``(N, *spatial)`` float32.
    """
    if ckernels is None:
        raise RuntimeError("nasprobe.measures.ckernels is not built (no C compiler at install time?)")
    x = np.ascontiguousarray(a, dtype=np.float32)
    padded = -(-channels // block) * block
    if x.ndim < 3 or x.shape[1] != padded or not 0 < block <= 64:
        raise ValueError(f"a blocked tensor of {channels} channels in blocks of {block} has "
                         f"shape (N, {padded}, ...), not {x.shape}")
    if counts is not None:
        _check_counts(counts, channels)
    outer, inner = x.shape[0], math.prod(x.shape[2:])
    out = np.empty(outer * inner, np.float32)
    if out.size:
        own = None if counts is None else np.zeros(padded, np.int64)
        _rows(lambda *r: ckernels.nas_blocked_rows(x, outer, channels, block, inner, out, *r),
              outer, x.size, threads, own, padded)
        if counts is not None:
            counts += own[:channels]
    return out.reshape((outer, *x.shape[2:]))


def _rows(kernel, outer: int, size: int, threads: int | None, counts: np.ndarray | None,
          width: int) -> None:
    """``kernel(start, stop[, counts])`` over rows ``0..outer`` on up to ``threads`` threads
    (the calling one takes the first rows; at most one per :data:`MIN_VALUES_PER_THREAD` of
    the ``size`` values), each counting into its own ``(width,)`` row that is added to
    ``counts`` after."""
    threads = min(_threads() if threads is None else max(1, threads), outer,
                  max(1, size // MIN_VALUES_PER_THREAD))
    if threads <= 1:
        kernel(0, outer, *(() if counts is None else (counts,)))
        return
    step = -(-outer // threads)
    starts = range(0, outer, step)
    part = None if counts is None else np.zeros((len(starts), width), np.int64)

    def own(i):
        return () if part is None else (part[i],)

    pool = _pool(max(threads - 1, _threads() - 1, 1))
    jobs = [pool.submit(kernel, s, min(outer, s + step), *own(i))
            for i, s in enumerate(starts) if i]
    try:
        kernel(0, min(outer, step), *own(0))
    finally:
        for j in jobs:
            j.result()
    if part is not None:
        counts += part.sum(axis=0)


def _check_counts(counts: np.ndarray, channels: int) -> None:
    if not (isinstance(counts, np.ndarray) and counts.dtype == np.int64
            and counts.shape == (channels,) and counts.flags.c_contiguous
            and counts.flags.writeable):
        raise ValueError(f"counts must be a writable contiguous int64 array of shape "
                         f"({channels},)")


def _positive(a: np.ndarray, axis: int) -> np.ndarray:
    """Per channel along ``axis``: how many values are > 0 (numpy)."""
    return (np.moveaxis(np.asarray(a), axis, 0).reshape(a.shape[axis], -1) > 0).sum(axis=1)


def count_positive(a: np.ndarray, axis: int, counts: np.ndarray, *,
                   use_c: bool | None = None) -> None:
    """Add to ``counts`` (``(D,)`` int64, in place), per channel along ``axis`` of ``a``, how
    many values are above zero (NaN is not): the unit activity's numerator for a tensor whose
    NAS is not taken (the nonlinearity's input behind BatchNorm when NAS is taken before it).
    """
    a = np.asarray(a)
    axis = axis % a.ndim
    channels = a.shape[axis]
    _check_counts(counts, channels)
    if use_c is None:
        use_c = ckernels is not None
    if not use_c or a.size == 0 or a.ndim < 2:
        counts += _positive(a, axis)
        return
    if a.ndim == 2 and axis == 1:  # dense (N, D): rows of one location
        x = np.ascontiguousarray(a.T, dtype=np.float32)
        ckernels.count_rows(x, 1, channels, a.shape[0], counts)
        return
    if axis != 1:
        a = np.moveaxis(a, axis, 1) if a.ndim > 2 else a
    x = np.ascontiguousarray(a, dtype=np.float32)
    if x.ndim == 2:  # (D, N) with the channels first
        ckernels.count_rows(x, 1, channels, x.shape[1], counts)
        return
    ckernels.count_rows(x, x.shape[0], channels, math.prod(x.shape[2:]), counts)


def fold(values: np.ndarray, count: np.ndarray, bin_min: np.ndarray, bin_max: np.ndarray,
         hist: np.ndarray, edges: np.ndarray, channels: int, *,
         use_c: bool | None = None) -> tuple[int, int, float, float]:
    """Add NAS ``values`` to running statistics, in place.

    Args:
        values: NAS values, any shape: float64 as they are, anything else rounded to float32
            (the dtype of NAS maps) first.
        count, bin_min, bin_max: per fine bin of ``[0, 1]`` (``F`` bins, int64 / float64 /
            float64): how many values fell in it and the smallest / largest (values clipped to
            ``[0, 1]`` first). A bin's min and max are read only where its count is above 0 (its
            first value sets them): they may start with any values.
        hist: ``(B,)`` int64 counts over ``edges`` (``(B+1,)`` float64, evenly spaced), with
            :func:`numpy.histogram`'s rules (the last bin is closed; values outside not counted).
        channels: ``D`` of the layer, for the entropy ``H = ln(D (1 - s))``.

    Returns:
        ``(finite, nonfinite, sum, entropy_sum)``: counts of finite and of NaN/±Inf values (the
        latter are skipped), the sum of the finite values and of their entropies (nats).
    """
    if use_c is None:
        use_c = ckernels is not None
    if use_c:
        v = np.asarray(values)
        v = np.ascontiguousarray(v, np.float64 if v.dtype == np.float64 else np.float32).ravel()
        return ckernels.fold(v, count, bin_min, bin_max, hist,
                             np.ascontiguousarray(edges, np.float64), float(channels),
                             v.dtype == np.float64)
    v = np.asarray(values)
    v = (v if v.dtype == np.float64 else v.astype(np.float32)).astype(np.float64).ravel()
    finite = np.isfinite(v)
    nonfinite = int(v.size - finite.sum())
    if nonfinite:
        v = v[finite]
    if v.size == 0:
        return 0, nonfinite, 0.0, 0.0
    total = float(v.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = float(entropy_from_nas(v, channels).sum())
    hist += np.histogram(v, bins=edges)[0]
    v = np.sort(np.clip(v, 0.0, 1.0))
    fine = len(count)
    idx = np.minimum((v * fine).astype(np.int64), fine - 1)
    bins, first, counts = np.unique(idx, return_index=True, return_counts=True)
    new = count[bins] == 0
    count[bins] += counts
    bin_min[bins] = np.where(new, v[first], np.minimum(bin_min[bins], v[first]))
    bin_max[bins] = np.where(new, v[first + counts - 1],
                             np.maximum(bin_max[bins], v[first + counts - 1]))
    return int(v.size), nonfinite, total, ent
