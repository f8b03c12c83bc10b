"""Taps of a Flax NNX module during its own forward pass, for training-time regularisers.

A *tap* is a layer's pre-activation with its channels on the last axis (Flax's layout):

* ``tap="linear"``: the output of the ``nnx.Conv`` / ``nnx.ConvTranspose`` / ``nnx.Linear``
  module itself (bias included; ``exclude_bias=True`` subtracts it);
* ``tap="preact"``: the output of the ``nnx.BatchNorm`` that takes the layer's output as its
  input, when there is one; else the layer's output. (Activations are plain functions in
  Flax, ``nnx.relu``, so their inputs cannot be intercepted; a BatchNorm whose output meets a
  residual sum before the nonlinearity still counts here, whereas ``nasprobe probe`` finds no
  preact tap there.)

:func:`forward_with_taps` runs the module once and returns its output together with the taps,
as arrays of the same trace: inside ``nnx.jit`` / ``jax.grad`` they are tracers, so a penalty
computed from them (:mod:`nasprobe_jax.regularizers`) is part of the jitted, differentiated
train step. Layers called several times per forward pass keep the last call.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["LINEAR_TYPES", "entropy", "nas_map", "forward_with_taps", "linear_modules"]

#: Module types whose outputs are taps.
LINEAR_TYPES = (nnx.Conv, nnx.ConvTranspose, nnx.Linear)
_RECORDED = LINEAR_TYPES + (nnx.BatchNorm,)


def entropy(a: jax.Array, axis: int = -1) -> jax.Array:
    """Softmax entropy ``H`` (nats) of ``a`` along ``axis``; differentiable and stable.

    ``H = logsumexp(z) - Σ softmax(z)·z`` with ``z = a - max(a)`` (the shift is constant for
    the gradient). Computed in float32 at least (float64 stays float64). ``axis``: the channel
    axis, default -1 where Flax keeps channels; the same argument as ``nasprobe.entropy`` and
    the PyTorch and Keras adapters' ``entropy``.

    Returns:
        ``a``'s shape without ``axis``, values in ``[0, ln D]``.
    """
    a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
    z = a - jax.lax.stop_gradient(a.max(axis=axis, keepdims=True))
    lse = jax.nn.logsumexp(z, axis=axis, keepdims=True)
    p = jnp.exp(z - lse)
    h = jnp.squeeze(lse, axis) - (p * z).sum(axis=axis)
    return jnp.maximum(h, 0.0)


def nas_map(a: jax.Array, axis: int = -1) -> jax.Array:
    """NAS ``1 - exp(H)/D`` of ``a`` along its channel ``axis`` (docs/measures.md)."""
    return 1.0 - jnp.exp(entropy(a, axis)) / a.shape[axis]


def linear_modules(model: nnx.Module) -> dict[str, nnx.Module]:
    """``{module path: module}`` of the Conv/ConvTranspose/Linear modules of ``model``."""
    return {".".join(str(p) for p in path): m for path, m in nnx.iter_modules(model)
            if isinstance(m, LINEAR_TYPES)}


@contextlib.contextmanager
def _recording(model: nnx.Module, calls: list) -> Iterator[None]:
    """Append ``(path, module, input, output)`` of each Conv/Linear/BatchNorm call of ``model``'s
    modules to ``calls`` (their classes' ``__call__`` is wrapped meanwhile, as ``nnx.capture``
    does)."""
    modules = [(".".join(str(p) for p in path), m) for path, m in nnx.iter_modules(model)
               if isinstance(m, _RECORDED)]
    paths = {id(m): path for path, m in modules}
    # wrap each class that defines the __call__ a module runs (a subclass without its own
    # __call__ then records once, through its parent's)
    owners = {next(c for c in type(m).__mro__ if "__call__" in c.__dict__) for _, m in modules}
    saved = {}
    for cls in owners:
        saved[cls] = original = cls.__dict__["__call__"]

        def wrapped(self, *args, __original=original, **kwargs):
            out = __original(self, *args, **kwargs)
            if id(self) in paths:
                calls.append((paths[id(self)], self, args[0] if args else None, out))
            return out

        cls.__call__ = wrapped
    try:
        yield
    finally:
        for cls, original in saved.items():
            cls.__call__ = original


def forward_with_taps(model: nnx.Module, *args: Any, layers=None, tap: str = "linear",
                      exclude_bias: bool = False, **kwargs: Any
                      ) -> tuple[Any, dict[str, jax.Array]]:
    """Run ``model(*args, **kwargs)`` once and return ``(output, {layer: tap})``.

    Args:
        model: the NNX module (in train or eval mode, as the caller wants).
        *args: the module's positional inputs (the images).
        layers: ``None`` — every Conv/Linear module called, but the last one called (the
            prediction layer); a list of module paths; or a regex (``re.search``) over the
            paths of the Conv/Linear modules called.
        tap: ``"linear"`` or ``"preact"`` (module docstring).
        exclude_bias: subtract the layer's bias from a linear tap.
        **kwargs: the module's keyword inputs.

    Returns:
        The model's output and, per selected layer in call order, its tap: an array
        ``(N, *locations, D)`` in the model's dtype, part of the current trace.

    Raises:
        ValueError: an unknown tap kind, or layers that are not Conv/Linear modules called.
    """
    if tap not in ("linear", "preact"):
        raise ValueError(f"tap must be 'linear' or 'preact', not {tap!r}")
    calls: list = []
    with _recording(model, calls):
        out = model(*args, **kwargs)
    called: dict[str, tuple] = {}
    for path, module, _x, y in calls:
        if isinstance(module, LINEAR_TYPES):
            called.pop(path, None)  # keep call order of the last call
            called[path] = (module, y)
    if layers is None:
        chosen = list(called)[:-1]
    elif isinstance(layers, str):
        chosen = [p for p in called if re.search(layers, p)]
    else:
        chosen = list(layers)
        unknown = [p for p in chosen if p not in called]
        if unknown:
            raise ValueError(f"layers {unknown} are not Conv/Linear modules called in the "
                             f"forward pass (called: {list(called)})")
    if not chosen:
        raise ValueError(f"no layer selected by {layers!r} among {list(called)}")
    taps = {}
    for path in chosen:
        module, y = called[path]
        if tap == "preact":
            bn = [out_ for _, m, x, out_ in calls if isinstance(m, nnx.BatchNorm) and x is y]
            taps[path] = bn[-1] if bn else y
        elif exclude_bias and getattr(module, "bias", None) is not None:
            taps[path] = y - module.bias[...]
        else:
            taps[path] = y
    return out, taps
