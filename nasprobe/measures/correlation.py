"""Filter weight correlations (2020 paper Eq. 6-7, Fig. 7), as pure numpy functions.

A layer's weight tensor has its output channels (filters) on ``axis`` 0 — ONNX's layout for
Conv ``(D, C, kh, kw)``; Gemm/MatMul weights are given as ``(D, K)`` by the caller. Each filter
is flattened to a vector ``w_d``.

Memory. :func:`filter_correlations` builds the whole ``D × D`` matrix (for small layers and
tests). :func:`corr_histogram`, which the probe uses, never does: it computes the lower
triangle in blocks of rows and adds each block to the histogram, so its memory is bounded by
:data:`CORR_BLOCK_ENTRIES` float64 values whatever ``D`` (the counts equal those of the full
matrix). Above :data:`CORR_MAX_FILTERS` filters the histogram is that of the pairs among a
fixed sample of that many filters (the same filters every epoch; the centring mean still
uses every filter), which keeps the time per epoch bounded as well. ``nasprobe probe
--no-corr`` skips the histograms altogether (docs: README, *The store*).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["filter_correlations", "lower_triangle", "corr_histogram", "sampled_filters",
           "CORR_BINS", "CORR_MAX_FILTERS", "CORR_BLOCK_ENTRIES"]

#: Bin edges of ``corr_hist``: width 0.01 on [-1, 1] (200 bins).
CORR_BINS = np.linspace(-1.0, 1.0, 201)

#: Layers with more filters get the histogram of a fixed sample of this many filters.
CORR_MAX_FILTERS = 2048

#: float64 values in one block of the correlation matrix (and of the filters it reads): 8 MiB.
CORR_BLOCK_ENTRIES = 1 << 20


def filter_correlations(w: np.ndarray, centring: str = "paper") -> np.ndarray:
    """Correlation matrix ``c`` (shape ``(D, D)``, float64) of the ``D`` filters in ``w``.

    Args:
        w: weights with filters on axis 0, shape ``(D, ...)``.
        centring: ``"paper"`` centres every filter by the layer's mean filter ``w̄`` (component-
            wise mean over all filters, 2020 paper Eq. 6); ``"pearson"`` centres each filter by
            its own mean (standard Pearson correlation).

    Returns:
        ``c[d, e] = <u_d, u_e> / (|u_d| |u_e|)`` with ``u`` the centred filters; a filter whose
        centred norm is 0 gives correlations of 0 (not NaN).
    """
    f = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)
    if centring == "paper":
        u = f - f.mean(axis=0, keepdims=True)
    elif centring == "pearson":
        u = f - f.mean(axis=1, keepdims=True)
    else:
        raise ValueError(f"centring must be 'paper' or 'pearson', not {centring!r}")
    norm = np.linalg.norm(u, axis=1)
    safe = np.where(norm > 0, norm, 1.0)
    c = (u @ u.T) / np.outer(safe, safe)
    c[norm == 0, :] = 0.0
    c[:, norm == 0] = 0.0
    return np.clip(c, -1.0, 1.0)


def lower_triangle(c: np.ndarray) -> np.ndarray:
    """The strictly lower triangle of a square matrix as a 1-D array of ``D (D - 1) / 2`` values."""
    i, j = np.tril_indices(c.shape[0], k=-1)
    return c[i, j]


def _below_diagonal(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the strict lower triangle of an ``n × n`` block. Those of
    small blocks are kept: ``numpy.tril_indices`` takes about 11 µs even for 8 filters, a
    quarter of a small layer's histogram, which a probe job computes per layer and epoch."""
    return _small_below_diagonal(n) if n <= 128 else np.tril_indices(n, k=-1)


@lru_cache(maxsize=8)  # at most 8 × 130 KB
def _small_below_diagonal(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.tril_indices(n, k=-1)
    i.flags.writeable = j.flags.writeable = False
    return i, j


def sampled_filters(d: int, max_filters: int | None = CORR_MAX_FILTERS) -> np.ndarray:
    """The filter indices :func:`corr_histogram` uses: all ``d``, or a sorted sample of
    ``max_filters`` of them drawn with a fixed seed (the same for every epoch of a layer)."""
    if max_filters is None or d <= max_filters:
        return np.arange(d)
    return np.sort(np.random.default_rng(0x5EED).choice(d, size=max_filters, replace=False))


def _centred(f: np.ndarray, rows: np.ndarray, mean: np.ndarray | None, centring: str) -> np.ndarray:
    """Rows ``rows`` of ``f`` in float64, centred; consecutive rows are read as a slice (no
    gathered copy), and the paper's centring casts and subtracts in one pass."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        part = f[rows[0]:rows[-1] + 1]
    else:
        part = f[rows]
    if centring == "paper":
        return np.subtract(part, mean, dtype=np.float64)
    u = np.asarray(part, dtype=np.float64)
    return u - u.mean(axis=1, keepdims=True)


def corr_histogram(w: np.ndarray, centring: str = "paper", *,
                   max_filters: int | None = CORR_MAX_FILTERS,
                   block_entries: int = CORR_BLOCK_ENTRIES) -> np.ndarray:
    """Counts of the lower-triangle filter correlations of ``w`` in :data:`CORR_BINS` (200,) int64.

    Computed block by block (module docstring): memory about ``3 * block_entries`` float64
    values, never ``D × D``. The values are those of :func:`filter_correlations` (same formula,
    float64); with more than ``max_filters`` filters, only the pairs among
    :func:`sampled_filters` are counted (``max_filters=None``: all pairs).
    """
    if centring not in ("paper", "pearson"):
        raise ValueError(f"centring must be 'paper' or 'pearson', not {centring!r}")
    f = np.asarray(w).reshape(w.shape[0], -1)
    d, k = f.shape
    idx = sampled_filters(d, max_filters)
    mean = f.mean(axis=0, dtype=np.float64) if centring == "paper" else None
    n = len(idx)
    step = max(1, min(n, int(np.sqrt(block_entries)), block_entries // max(k, 1)))
    # the norms of block a come with its centred rows, before any pair (b <= a) needs them
    norms = np.zeros(n)
    safe = np.ones(n)
    counts = np.zeros(len(CORR_BINS) - 1, np.int64)
    for a in range(0, n, step):
        ui = _centred(f, idx[a:a + step], mean, centring)
        norms[a:a + step] = np.linalg.norm(ui, axis=1)
        safe[a:a + step] = np.where(norms[a:a + step] > 0, norms[a:a + step], 1.0)
        for b in range(0, a + step, step):
            uj = ui if b == a else _centred(f, idx[b:b + step], mean, centring)
            c = (ui @ uj.T) / np.outer(safe[a:a + step], safe[b:b + step])
            if not (norms[a:a + step].all() and norms[b:b + step].all()):
                c[norms[a:a + step] == 0, :] = 0.0
                c[:, norms[b:b + step] == 0] = 0.0
            if b == a:  # the diagonal block: strictly below its diagonal only
                c = c[_below_diagonal(len(c))]
            counts += np.histogram(np.clip(c, -1.0, 1.0), bins=CORR_BINS)[0]
    return counts
