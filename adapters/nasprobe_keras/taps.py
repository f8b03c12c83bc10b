"""Tap capture for Keras 3 models (any backend; math in ``keras.ops``), reduced to entropy maps.

Keras puts the activation inside ``Conv*``/``Dense``; their ``call`` ends with
``self.activation(outputs)``. During a regularised forward pass the layer's ``activation``
attribute is *temporarily* replaced by a function that records its input (the linear output,
bias included) and then applies the original activation, so the tap costs no extra compute
and the model is left untouched (saving it is unaffected). ``tap="linear"``: that linear
output. ``tap="preact"``: for a layer with a non-linear activation, the same tensor; for a
layer with a linear activation, the input of the first activation layer (``Activation``,
``ReLU``, ``LeakyReLU``, ``ELU``, ``PReLU``, ``Softmax``) after it in layer order and before the
next Conv/Dense layer (after BatchNormalization where there is one; its ``call`` is wrapped
likewise). The channel axis is ``-1`` (``channels_last``; ``1`` for ``channels_first`` convs).

Only the ``(N, *locations)`` entropy map of each tap is kept (D times smaller than the tap).
"""

from __future__ import annotations

import contextlib
import re
import warnings

import keras
from keras import ops

__all__ = ["TapCapture", "entropy", "select_layers", "all_layers", "channel_axis",
           "is_linear_activation", "float32_or_64", "LINEAR_TYPES", "TRANSPOSE_TYPES",
           "ACTIVATION_LAYER_TYPES"]

#: Layer types whose outputs are taps (the linear operators).
LINEAR_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                keras.layers.Conv3DTranspose, keras.layers.Dense)
#: Transposed convolutions (their kernels hold the output channels on the other axis).
TRANSPOSE_TYPES = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                   keras.layers.Conv3DTranspose)
#: Activation layers that ``tap="preact"`` looks for after a layer with a linear activation.
ACTIVATION_LAYER_TYPES = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                          keras.layers.ELU, keras.layers.PReLU, keras.layers.Softmax)


def entropy(a, axis: int = -1):
    """Softmax entropy (nats) along ``axis``, ``H = logsumexp(z) - Σ softmax(z)·z``, ``z = a - max a``.

    ``a``: any shape, float32 (float64 stays float64; other dtypes become float32). ``axis``:
    the channel axis, default -1 where Keras keeps channels (``channels_last``); the same
    argument as ``nasprobe.entropy`` and the PyTorch and JAX adapters' ``entropy``. Returns
    ``a``'s shape without ``axis``, values in ``[0, ln D]``; differentiable, finite for |a| ~ 1e4.
    """
    a = float32_or_64(a)
    z = a - ops.stop_gradient(ops.max(a, axis=axis, keepdims=True))
    lse = ops.logsumexp(z, axis=axis, keepdims=True)
    p = ops.exp(z - lse)
    h = ops.squeeze(lse, axis=axis) - ops.sum(p * z, axis=axis)
    # Not ops.maximum: Keras' dtype promotion (result_type) turns float64 into float32 on the
    # torch backend, even for two float64 operands. ops.where keeps the operands' dtype.
    return ops.where(h < 0, ops.zeros_like(h), h)


def float32_or_64(x):
    """``x`` unchanged if it is float64, else cast to float32.

    Dtypes are compared through ``keras.backend.standardize_dtype``: a backend tensor's
    ``dtype`` is a backend object (``torch.float64``), never equal to the string ``"float64"``.
    """
    if keras.backend.standardize_dtype(x.dtype) == "float64":
        return x
    return ops.cast(x, "float32")


def all_layers(model):
    """Every layer of ``model``, nested models' layers included, in layer order."""
    return [l for l in model._flatten_layers(include_self=False, recursive=True)]


def select_layers(model, layers=None) -> list:
    """The tapped Keras layers, in layer order: ``None`` = every Conv/Dense but the last; a list
    of layer names; or a regex string (``re.search`` on the names of Conv/Dense layers)."""
    every = all_layers(model)
    linear = [l for l in every if isinstance(l, LINEAR_TYPES)]
    if layers is None:
        chosen = linear[:-1]
    elif isinstance(layers, str):
        chosen = [l for l in linear if re.search(layers, l.name)]
    else:
        by_name = {l.name: l for l in every}
        chosen = []
        for name in layers:
            if name not in by_name:
                raise ValueError(f"no layer {name!r} in the model")
            if not isinstance(by_name[name], LINEAR_TYPES):
                raise ValueError(f"layer {name!r} is a {type(by_name[name]).__name__}, not Conv/Dense")
            chosen.append(by_name[name])
    if not chosen:
        raise ValueError(f"no layer selected by {layers!r} among {[l.name for l in linear]}")
    return chosen


def channel_axis(layer) -> int:
    """The channel axis of ``layer``'s output: ``1`` for ``channels_first`` convs, else ``-1``."""
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else -1


def is_linear_activation(fn) -> bool:
    """Whether a layer's ``activation`` is the identity (``None`` or ``keras.activations.linear``)."""
    return fn is None or fn is keras.activations.linear


class TapCapture:
    """Records, per layer, the entropy map ``(N, *locations)`` of its tap during a forward pass
    run inside :meth:`capturing`.

    Args:
        model: a built Keras model.
        layers: see :func:`select_layers`.
        tap: ``"linear"`` or ``"preact"`` (module docstring).
        exclude_bias: subtract the layer's bias from the tap.

    Attributes:
        layers: the tapped layers' names (str), in layer order (as the PyTorch adapter's
            ``TapCapture.layers``).
        keras_layers: the tapped Keras layer objects, in the same order.
    """

    def __init__(self, model, layers=None, tap="linear", exclude_bias=False):
        if tap not in ("linear", "preact"):
            raise ValueError(f"tap must be 'linear' or 'preact', not {tap!r}")
        self.model, self.exclude_bias = model, exclude_bias
        self.keras_layers = select_layers(model, layers)
        self.layers = [l.name for l in self.keras_layers]
        self.plan = []  # (layer, where: the activation layer for "preact" on linear layers, or None)
        every = all_layers(model)
        for layer in self.keras_layers:
            where = None
            if tap == "preact" and is_linear_activation(layer.activation):
                for nxt in every[every.index(layer) + 1:]:
                    if isinstance(nxt, LINEAR_TYPES):
                        break
                    if isinstance(nxt, ACTIVATION_LAYER_TYPES):
                        where = nxt
                        break
                if where is None:
                    raise ValueError(f"tap='preact': no activation follows layer {layer.name!r} "
                                     "(linear activation, no Activation layer before the next Conv/Dense)")
            self.plan.append((layer, where))
        self.records: dict[str, tuple] = {}  # name -> (entropy map, D)

    def _record(self, layer, a):
        axis = channel_axis(layer)
        if self.exclude_bias and getattr(layer, "use_bias", False):
            shape = [1] * len(a.shape)
            shape[axis] = -1
            a = a - ops.reshape(ops.cast(layer.bias, a.dtype), shape)
        self.records[layer.name] = (entropy(a, axis), a.shape[axis])

    @contextlib.contextmanager
    def capturing(self):
        """Within this context every forward pass of the model records the taps."""
        restore = []
        try:
            for layer, where in self.plan:
                if where is None:
                    orig = layer.activation

                    def act(x, layer=layer, orig=orig):
                        self._record(layer, x)
                        return orig(x)
                    layer.activation = act
                    restore.append(lambda layer=layer, orig=orig: setattr(layer, "activation", orig))
                else:
                    orig_call = where.call

                    def call(x, *args, layer=layer, orig_call=orig_call, **kwargs):
                        self._record(layer, x)
                        return orig_call(x, *args, **kwargs)
                    object.__setattr__(where, "call", call)
                    restore.append(lambda where=where: where.__dict__.pop("call", None))
            yield self
        finally:
            for undo in reversed(restore):
                undo()

    @property
    def names(self) -> list[str]:
        """Deprecated: the layer names are :attr:`layers`."""
        warnings.warn("TapCapture.names is deprecated: use TapCapture.layers (layer names)",
                      DeprecationWarning, stacklevel=2)
        return self.layers

    def nas_maps(self) -> dict:
        """Deprecated name of :meth:`last_nas`."""
        warnings.warn("TapCapture.nas_maps() is deprecated: use last_nas()", DeprecationWarning,
                      stacklevel=2)
        return self.last_nas()

    def last_nas(self) -> dict:
        """``{layer name: NAS map (N, *locations)}`` of the last capture, numpy float32."""
        out = {}
        for name in self.layers:
            h, d = self.record(name)
            out[name] = (1.0 - ops.convert_to_numpy(ops.exp(ops.stop_gradient(h))) / d).astype("float32")
        return out

    def record(self, name):
        """``(entropy map, D)`` of ``name``'s tap in the last capture."""
        try:
            return self.records[name]
        except KeyError:
            raise RuntimeError(f"layer {name!r} has not run yet: call penalty(x) or the model first") from None
