"""Training-time regularisers of the papers for Keras 3 (any backend; math in ``keras.ops``).

Same definitions as :mod:`nasprobe_torch.regularizers` (docs/measures.md):

    NASReg       L = -Σ_i λ_i Σ_k mean_n ρ_{n,k}^i     λ_i = 1/r_i ("auto")
    SparsityReg  L = -Σ_i λ_i Σ_k mean_n H_{n,k}^i     λ_i = 0.001
    DecorrReg    L =  Σ_i κ_i Σ_{d<e} c_de^i            filter correlations of the kernels

**Taps** are captured by :class:`nasprobe_keras.taps.TapCapture` (``tap="linear"`` or
``"preact"``, see :mod:`nasprobe_keras.taps`).

**Training.** Wrap the model: ``Regularized(model, [NASReg(model), DecorrReg(model)])`` is a
``keras.Model`` whose training ``call`` runs ``model`` with the taps and ``add_loss``-es the
summed penalty (Keras' own mechanism for activity regularisers, on every backend), so
``compile``/``fit`` include it in the reported ``loss``; ``val_loss`` stays the plain loss.
Save the inner ``model``, not the wrapper.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import keras
import numpy as np
from keras import ops

from nasprobe.contract import per_layer

from .taps import TRANSPOSE_TYPES, TapCapture, entropy, float32_or_64, select_layers

__all__ = ["NASReg", "SparsityReg", "DecorrReg", "Regularized", "NASMonitor", "entropy", "filter_correlations",
           "select_layers"]

def _mean(x, axis=None, keepdims=False):
    """Mean of ``x`` along ``axis``, computed in ``x``'s dtype: ``ops.mean`` computes float64
    input in float32 (Keras' dtype promotion on the torch backend), so sum / count here."""
    total = ops.sum(x, axis=axis, keepdims=keepdims)
    count = ops.cast(ops.size(x), x.dtype) / ops.cast(ops.size(total), x.dtype)
    return total / count


class NASMonitor:
    """NAS maps of a model's taps, without a penalty.

    The same methods as the PyTorch adapter's ``NASMonitor``: :meth:`measure` runs probe
    inputs and returns their maps; :meth:`last_nas` reads the maps of the last forward pass
    the monitor saw (Keras layers are tapped only inside :meth:`measure`).

    Args:
        model, layers, tap, exclude_bias: as :class:`NASReg`.

    Attributes:
        layers: the tapped layers' names (str).
    """

    def __init__(self, model, layers=None, tap="linear", exclude_bias=False):
        self.model = model
        self._taps = TapCapture(model, layers, tap, exclude_bias)
        self.layers = self._taps.layers

    def measure(self, x, batch_size=None) -> dict:
        """``{layer name: NAS maps (N, *locations)}`` of ``x`` (float32 numpy, values in
        ``[0, 1 - 1/D]``), ``batch_size`` images per forward pass (default all), in inference
        mode."""
        n = len(x)
        batch_size = batch_size or max(n, 1)
        out = {name: [] for name in self.layers}
        for i in range(0, n, batch_size):
            with self._taps.capturing():
                self.model(x[i:i + batch_size], training=False)
            for name, m in self._taps.last_nas().items():
                out[name].append(m)
        return {name: np.concatenate(v).astype(np.float32) for name, v in out.items()}

    def last_nas(self) -> dict:
        """``{layer name: NAS map (N, *locations)}`` (numpy, float32) of the last forward pass
        (the last batch of :meth:`measure`)."""
        return self._taps.last_nas()

    def nas(self, x, batch_size=None) -> dict:
        """Deprecated name of :meth:`measure`."""
        warnings.warn("NASMonitor.nas(x) is deprecated: use NASMonitor.measure(x)",
                      DeprecationWarning, stacklevel=2)
        return self.measure(x, batch_size)


class _Reg:
    """Base class: ``penalty(x)``; subclasses define ``_penalty()`` from the last capture."""

    _taps = None

    def _context(self):
        return self._taps.capturing() if self._taps is not None else contextlib.nullcontext()

    def penalty(self, x=None, training: bool = False):
        """The penalty (scalar backend tensor) for a forward pass of ``x`` (or, with ``x=None``,
        the last regularised forward pass)."""
        if x is not None:
            with self._context():
                self.model(x, training=training)
        return self._penalty()


class _ActivationReg(_Reg):
    def __init__(self, model, layers, lam, tap, exclude_bias):
        self.model = model
        self._taps = TapCapture(model, layers, tap, exclude_bias)
        self.layers = self._taps.layers
        self.lam = per_layer(lam, self.layers, "lam")

    def _penalty(self):
        total = 0.0
        for name in self.layers:
            h, _ = self._taps.record(name)
            r = math.prod(h.shape[1:])
            lam = 1.0 / r if self.lam[name] == "auto" else float(self.lam[name])
            per_sample = ops.sum(ops.reshape(self._term(h), (-1, r)), axis=1)
            total = total - lam * _mean(per_sample)
        return total

    def last_nas(self) -> dict:
        """``{layer name: NAS map (N, *locations)}`` (numpy, float32) of the last forward pass."""
        return self._taps.last_nas()


class NASReg(_ActivationReg):
    """Perplexity regulariser (2021 paper Eq. 7) for a built Keras model.

    Args:
        model: a built ``keras.Model`` (functional, Sequential or nested).
        layers: layer names, a regex (``re.search``), or ``None`` = every Conv/Dense but the last.
        lam: ``"auto"`` (``1/r_i``), a float, or ``{layer name: float | "auto"}``.
        tap: ``"linear"`` or ``"preact"`` (module docstring).
        exclude_bias: subtract the layer's bias from the tap.
    """

    def __init__(self, model, layers=None, lam="auto", tap="linear", exclude_bias=False):
        super().__init__(model, layers, lam, tap, exclude_bias)

    def _term(self, h):
        return ops.exp(h)


class SparsityReg(_ActivationReg):
    """Entropy regulariser (2020 paper Eq. 5); arguments as :class:`NASReg`, ``lam=0.001``."""

    def __init__(self, model, layers=None, lam=0.001, tap="linear", exclude_bias=False):
        super().__init__(model, layers, lam, tap, exclude_bias)

    def _term(self, h):
        return h


def filter_correlations(f, centring: str = "paper"):
    """Differentiable ``(D, D)`` filter correlations of ``f`` ``(D, K)`` (see
    :func:`nasprobe.measures.correlation.filter_correlations`; zero-norm filters give 0; not clipped)."""
    f = float32_or_64(f)
    if centring == "paper":
        u = f - _mean(f, axis=0, keepdims=True)
    elif centring == "pearson":
        u = f - _mean(f, axis=1, keepdims=True)
    else:
        raise ValueError(f"centring must be 'paper' or 'pearson', not {centring!r}")
    norm = ops.sqrt(ops.sum(u * u, axis=1))
    nonzero = norm > 0
    safe = ops.where(nonzero, norm, ops.ones_like(norm))
    # ops.einsum, not ops.matmul: the latter computes float64 operands in float32 (torch backend).
    c = ops.einsum("dk,ek->de", u, u) / (safe[:, None] * safe[None, :])
    return ops.where(ops.logical_and(nonzero[:, None], nonzero[None, :]), c, ops.zeros_like(c))


def _filters(layer):
    """A Conv/Dense kernel as ``(D, K)``: Conv ``(..., in, out)`` / Dense ``(in, out)`` have the
    filters on the last axis, ConvTranspose ``(..., out, in)`` on the one before. The order of the
    K components differs from PyTorch's, which leaves correlations unchanged."""
    k = layer.kernel
    axis = len(k.shape) - 2 if isinstance(layer, TRANSPOSE_TYPES) else len(k.shape) - 1
    k = ops.moveaxis(k, axis, 0)
    return ops.reshape(k, (k.shape[0], -1))


class DecorrReg(_Reg):
    """Filter-decorrelation regulariser (2020 paper Eq. 6-7) on the kernels; needs no forward.

    Args:
        model: a built Keras model.
        layers: as :class:`NASReg`.
        kappa: κ for all layers or ``{layer name: float}``.
        centring: ``"paper"`` (mean filter) or ``"pearson"``.
        reduction: ``"signed"`` (paper), ``"abs"`` or ``"square"`` of each ``c_de``, ``d < e``.
    """

    def __init__(self, model, layers=None, kappa=1.0, centring="paper", reduction="signed"):
        if reduction not in ("signed", "abs", "square"):
            raise ValueError(f"reduction must be 'signed', 'abs' or 'square', not {reduction!r}")
        if centring not in ("paper", "pearson"):
            raise ValueError(f"centring must be 'paper' or 'pearson', not {centring!r}")
        self.model = model
        self._layers = select_layers(model, layers)
        self.layers = [l.name for l in self._layers]
        self.kappa = per_layer(kappa, self.layers, "kappa")
        self.centring, self.reduction = centring, reduction

    def correlations(self) -> dict:
        """``{layer name: c (D, D)}`` as numpy arrays."""
        return {l.name: ops.convert_to_numpy(filter_correlations(_filters(l), self.centring))
                for l in self._layers}

    def _penalty(self):
        total = 0.0
        for layer in self._layers:
            c = filter_correlations(_filters(layer), self.centring)
            d = c.shape[0]
            lower = ops.tril(ops.ones((d, d), dtype=c.dtype), k=-1)
            v = c
            if self.reduction == "abs":
                v = ops.abs(c)
            elif self.reduction == "square":
                v = c * c
            total = total + float(self.kappa[layer.name]) * ops.sum(v * lower)
        return total


class Regularized(keras.Model):
    """``keras.Model`` wrapper whose training forward pass adds the regularisers' penalty.

    Args:
        model: the built model to train (its layers are shared, not copied).
        regularizers: :class:`NASReg`/:class:`SparsityReg`/:class:`DecorrReg` built on ``model``.

    ``compile``/``fit`` the wrapper. In a training forward pass (``training=True``, as in
    ``fit``) ``call`` runs ``model`` with the taps and ``add_loss``-es the summed penalty, so the
    reported ``loss`` is the compiled loss plus the penalty of each batch; the penalty alone is
    logged as ``penalty`` (a mean over the epoch's batches). Inference passes (``evaluate``,
    ``predict``, ``val_loss``) add nothing: ``val_loss`` is the plain compiled loss, the papers'
    test loss. ``inner`` is the wrapped model (save that one).
    """

    def __init__(self, model, regularizers, **kwargs):
        super().__init__(**kwargs)
        self.inner = model
        self._nasprobe_regs = tuple(regularizers)
        if not self._nasprobe_regs:
            raise ValueError("Regularized needs at least one regulariser")
        self.penalty_tracker = keras.metrics.Mean(name="penalty")

    def call(self, inputs, training=None):
        """The inner model's output; in training, with the penalty added as a loss."""
        if not training:
            return self.inner(inputs, training=training)
        with contextlib.ExitStack() as stack:
            for reg in self._nasprobe_regs:
                stack.enter_context(reg._context())
            y = self.inner(inputs, training=training)
        penalty = sum((reg._penalty() for reg in self._nasprobe_regs[1:]),
                      self._nasprobe_regs[0]._penalty())
        self.add_loss(penalty)
        if not keras.backend.is_keras_tensor(penalty):
            self.penalty_tracker.update_state(ops.stop_gradient(penalty))
        return y
