"""Filter weight correlations (2020 paper Eq. 6-7, Fig. 7), as pure numpy functions.

A layer's weight tensor has its output channels (filters) on ``axis`` 0 — ONNX's layout for
Conv ``(D, C, kh, kw)``; Gemm/MatMul weights are given as ``(D, K)`` by the caller. Each filter
is flattened to a vector ``w_d``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["filter_correlations", "lower_triangle", "corr_histogram", "CORR_BINS"]

#: Bin edges of ``corr_hist``: width 0.01 on [-1, 1] (200 bins).
CORR_BINS = np.linspace(-1.0, 1.0, 201)


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


def corr_histogram(w: np.ndarray, centring: str = "paper") -> np.ndarray:
    """Counts of the lower-triangle filter correlations of ``w`` in :data:`CORR_BINS` (200,) int64."""
    vals = lower_triangle(filter_correlations(w, centring))
    counts, _ = np.histogram(vals, bins=CORR_BINS)
    return counts.astype(np.int64)
