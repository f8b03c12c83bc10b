"""Neural Activation Sparsity and its relatives, as pure numpy functions (docs/measures.md).

A tap tensor ``T`` has a batch axis, a channel axis of size ``D`` and any number of
*location* axes. For one sample ``n`` and one location ``k`` the channel vector
``a = T[n, :, k]`` gives

    p = softmax(a)
    H = logsumexp(a) - Σ p_l a_l        entropy in nats, in [0, ln D]
    ρ = exp(H)                           perplexity, in [1, D]
    s = 1 - ρ / D                        NAS, in [0, 1 - 1/D]

Every function here reduces over ``axis`` (the channel axis) and keeps all other axes, so a
``(N, D, H, W)`` tensor with ``axis=1`` gives ``(N, H, W)`` maps. Computation is done in
float64 unless the input is float32, where float32 is kept (results are still finite for
inputs of magnitude 1e4: the maximum is subtracted before exponentiation).
"""

from __future__ import annotations

import numpy as np

__all__ = ["entropy", "perplexity", "nas", "nas_from_entropy", "entropy_from_nas"]


def _float(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype in (np.float32, np.float64):
        return a
    return a.astype(np.float64)


def entropy(a: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax entropy ``H`` (nats) of ``a`` along the channel ``axis``.

    Args:
        a: activations, any shape; float32 stays float32, everything else becomes float64.
        axis: the channel axis (size ``D``).

    Returns:
        ``a``'s shape without ``axis``; values in ``[0, ln D]``.
    """
    a = _float(a)
    m = np.max(a, axis=axis, keepdims=True)
    z = a - np.where(np.isfinite(m), m, 0)
    e = np.exp(z)
    s = np.sum(e, axis=axis, keepdims=True)
    h = np.log(s) - np.sum(e * z, axis=axis, keepdims=True) / s
    # Rounding can give -1e-16 for a one-hot softmax; entropy is never negative.
    return np.maximum(np.squeeze(h, axis=axis), 0)


def perplexity(a: np.ndarray, axis: int = 1) -> np.ndarray:
    """Perplexity ``ρ = exp(H)`` of ``a`` along ``axis``; values in ``[1, D]``, shape as :func:`entropy`."""
    return np.exp(entropy(a, axis=axis))


def nas(a: np.ndarray, axis: int = 1) -> np.ndarray:
    """Neural Activation Sparsity ``s = 1 - exp(H) / D`` of ``a`` along the channel ``axis``.

    Args:
        a: activations, any shape, with the channel axis of size ``D`` at ``axis``.
        axis: the channel axis.

    Returns:
        ``a``'s shape without ``axis``; values in ``[0, 1 - 1/D]`` (0 = all channels equal,
        dense; ``1 - 1/D`` = one channel dominates, sparse), clamped to that range against
        rounding (``exp(ln D) / D`` may exceed 1 by an ulp). ``D = 1`` gives 0.
    """
    a = _float(a)
    d = a.shape[axis]
    s = 1 - perplexity(a, axis=axis) / d
    return np.clip(s, 0, s.dtype.type(1 - 1 / d))


def nas_from_entropy(h: np.ndarray, channels: int) -> np.ndarray:
    """NAS from entropy: ``s = 1 - exp(H) / D`` (``h`` in nats, any shape)."""
    return 1 - np.exp(np.asarray(h)) / channels


def entropy_from_nas(s: np.ndarray, channels: int) -> np.ndarray:
    """Entropy (nats) from NAS: ``H = ln(D (1 - s))`` (``s`` any shape)."""
    return np.log(channels * (1 - np.asarray(s, dtype=np.float64)))
