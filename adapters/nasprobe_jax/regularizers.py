"""Training-time regularisers of the papers for JAX: pure functions, usable in a jitted step.

=============  =====================================  ==========================================
NASReg         ``L = -Σ_i λ_i Σ_k mean_n ρ_{n,k}^i``  2021 paper Eq. 7; ``λ_i = 1/r_i`` ("auto")
SparsityReg    ``L = -Σ_i λ_i Σ_k mean_n H_{n,k}^i``  2020 paper Eq. 5; ``λ_i = 0.001``
DecorrReg      ``L =  Σ_i κ_i Σ_{d<e} c_de^i``        2020 paper Eq. 6-7; weights only
=============  =====================================  ==========================================

``ρ = exp(H)`` is the perplexity and ``H`` the entropy (nats) of the softmax over the ``D``
channels (last axis) of layer ``i``'s tap at location ``k`` (``r_i`` locations), averaged over
the ``N`` samples of the batch; ``c`` is the correlation matrix of the layer's filters
(:func:`filter_correlations`). The same definitions as ``nasprobe_torch.regularizers``, so the
values agree on the same numbers; here they are functions of arrays, with no hooks and no
state, so that they trace inside ``nnx.jit`` / ``jax.grad``::

    nas_reg, decorr = NASReg(), DecorrReg(kappa=0.1)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits, taps = forward_with_taps(model, x)            # nasprobe_jax.taps
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return ce + nas_reg(taps) + decorr(kernels_of(model))
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from nasprobe.contract import per_layer

from .taps import entropy, linear_modules

__all__ = ["NASReg", "SparsityReg", "DecorrReg", "nas_penalty", "sparsity_penalty",
           "decorr_penalty", "filter_correlations", "filters", "kernels_of"]


def _activation_penalty(taps: Mapping[str, jax.Array], lam: Any, perplexity: bool) -> jax.Array:
    total = jnp.zeros((), jnp.float32)
    lams = per_layer(lam, list(taps), "lam")
    for name, a in taps.items():
        h = entropy(a, axis=-1)  # (N, *locations)
        locations = math.prod(h.shape[1:])
        term = jnp.exp(h) if perplexity else h
        weight = 1.0 / locations if lams[name] == "auto" else float(lams[name])
        total = total - weight * term.reshape(h.shape[0], -1).sum(1).mean()
    return total


def nas_penalty(taps: Mapping[str, jax.Array], lam: Any = "auto") -> jax.Array:
    """``-Σ_i λ_i Σ_k mean_n exp(H_{n,k}^i)`` (2021 paper Eq. 7): rewards dense activations.

    Args:
        taps: ``{layer: pre-activation (N, *locations, D)}``, channels last (as
            :func:`nasprobe_jax.taps.forward_with_taps` gives them).
        lam: ``"auto"`` (``λ_i = 1/r_i``, ``r_i`` the locations of layer ``i``), a float for
            every layer, or ``{layer: float | "auto"}``.

    Returns:
        A scalar (float32, or float64 for float64 taps), differentiable.
    """
    return _activation_penalty(taps, lam, perplexity=True)


def sparsity_penalty(taps: Mapping[str, jax.Array], lam: Any = 0.001) -> jax.Array:
    """``-Σ_i λ_i Σ_k mean_n H_{n,k}^i`` (2020 paper Eq. 5); arguments as :func:`nas_penalty`."""
    return _activation_penalty(taps, lam, perplexity=False)


def filters(kernel: jax.Array) -> jax.Array:
    """A Flax kernel as ``(D, K)``: one flattened filter per output channel.

    Flax keeps output channels last: ``(kh, kw, C_in, D)`` for Conv and ConvTranspose,
    ``(D_in, D)`` for Linear.
    """
    return jnp.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)


def filter_correlations(f: jax.Array, centring: str = "paper") -> jax.Array:
    """Differentiable filter correlation matrix ``(D, D)`` of filters ``f`` ``(D, K)``.

    ``"paper"`` centres by the layer's mean filter, ``"pearson"`` by each filter's own mean;
    zero-norm filters give 0. Not clipped to ``[-1, 1]`` (that would cut gradients).
    """
    f = f.astype(jnp.promote_types(f.dtype, jnp.float32))
    if centring == "paper":
        u = f - f.mean(axis=0, keepdims=True)
    elif centring == "pearson":
        u = f - f.mean(axis=1, keepdims=True)
    else:
        raise ValueError(f"centring must be 'paper' or 'pearson', not {centring!r}")
    sq = (u * u).sum(axis=1)
    nonzero = sq > 0
    norm = jnp.sqrt(jnp.where(nonzero, sq, 1.0))  # no NaN gradient at zero filters
    c = (u @ u.T) / (norm[:, None] * norm[None, :])
    return jnp.where(nonzero[:, None] & nonzero[None, :], c, 0.0)


def decorr_penalty(kernels: Mapping[str, jax.Array], kappa: Any = 1.0, centring: str = "paper",
                   reduction: str = "signed") -> jax.Array:
    """``Σ_i κ_i Σ_{d<e} g(c_de^i)`` (2020 paper Eq. 6-7) over the layers' kernels.

    Args:
        kernels: ``{layer: Flax kernel}`` (see :func:`filters`; :func:`kernels_of`).
        kappa: ``κ`` for every layer, or ``{layer: float}``.
        centring: ``"paper"`` or ``"pearson"`` (:func:`filter_correlations`).
        reduction: ``g``: ``"signed"`` (the paper, ``c``), ``"abs"`` or ``"square"``.
    """
    if reduction not in ("signed", "abs", "square"):
        raise ValueError(f"reduction must be 'signed', 'abs' or 'square', not {reduction!r}")
    total = jnp.zeros((), jnp.float32)
    kappas = per_layer(kappa, list(kernels), "kappa")
    for name, kernel in kernels.items():
        c = filter_correlations(filters(kernel), centring)
        i, j = jnp.tril_indices(c.shape[0], k=-1)
        v = c[i, j]
        v = jnp.abs(v) if reduction == "abs" else v * v if reduction == "square" else v
        total = total + float(kappas[name]) * v.sum()
    return total


def kernels_of(model: nnx.Module, layers=None) -> dict[str, jax.Array]:
    """``{layer: kernel}`` of the Conv/Linear modules of ``model`` (all of them, or the paths
    listed in ``layers``), as arrays of the current trace (differentiable w.r.t. the model)."""
    found = linear_modules(model)
    names = list(found) if layers is None else list(layers)
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"no Conv/Linear module {missing} in the model (have {list(found)})")
    return {n: found[n].kernel[...] for n in names}


@dataclass(frozen=True)
class NASReg:
    """:func:`nas_penalty` with its ``lam`` fixed: ``NASReg()(taps)`` is the penalty."""

    lam: Any = "auto"

    def __call__(self, taps: Mapping[str, jax.Array]) -> jax.Array:
        """The penalty of ``taps`` (``{layer: (N, *locations, D)}``)."""
        return nas_penalty(taps, self.lam)


@dataclass(frozen=True)
class SparsityReg:
    """:func:`sparsity_penalty` with its ``lam`` fixed (default 0.001)."""

    lam: Any = 0.001

    def __call__(self, taps: Mapping[str, jax.Array]) -> jax.Array:
        """The penalty of ``taps`` (``{layer: (N, *locations, D)}``)."""
        return sparsity_penalty(taps, self.lam)


@dataclass(frozen=True)
class DecorrReg:
    """:func:`decorr_penalty` with ``kappa``, ``centring`` and ``reduction`` fixed."""

    kappa: Any = 1.0
    centring: str = "paper"
    reduction: str = "signed"

    def __call__(self, kernels: Mapping[str, jax.Array] | nnx.Module) -> jax.Array:
        """The penalty of ``{layer: kernel}``, or of every Conv/Linear kernel of a module."""
        if isinstance(kernels, nnx.Module):
            kernels = kernels_of(kernels)
        return decorr_penalty(kernels, self.kappa, self.centring, self.reduction)
