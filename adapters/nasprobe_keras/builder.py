"""The building blocks of the Keras → ONNX conversion, shared by the per-layer converters.

:class:`Builder` accumulates nodes and initializers; :class:`Tensor` is a symbolic value with
its Keras shape and stored layout; :class:`WeightRef` says where an initializer comes from in a
checkpoint. :mod:`nasprobe_keras.export` drives the conversion, :mod:`nasprobe_keras.layers`
and :mod:`nasprobe_keras.activations` convert one layer or activation each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nasprobe.contract import LAYER_KEY
from nasprobe.errors import NasprobeError

__all__ = ["BASE_OPSET", "UnsupportedLayerError", "TRANSFORMS", "WeightRef", "Tensor",
           "Builder"]

#: Default ONNX opset; raised to 20 when a ``Gelu`` node is needed.
BASE_OPSET = 18


class UnsupportedLayerError(NasprobeError):
    """A Keras layer (or op) that the ONNX converter does not know; the message names it."""


def _conv_kernel(k: np.ndarray) -> np.ndarray:
    """Keras conv kernel ``(*spatial, in/groups, out)`` → ONNX ``(out, in/groups, *spatial)``."""
    r = k.ndim
    return np.ascontiguousarray(np.transpose(k, (r - 1, r - 2, *range(r - 2))))


def _depthwise_kernel(k: np.ndarray) -> np.ndarray:
    """Keras depthwise kernel ``(*spatial, in, mult)`` → ONNX ``(in*mult, 1, *spatial)``.

    Keras orders the outputs ``c * mult + m``, as does ONNX's grouped conv with ``group=in``.
    """
    r = k.ndim
    t = np.transpose(k, (r - 2, r - 1, *range(r - 2)))
    return np.ascontiguousarray(t.reshape(t.shape[0] * t.shape[1], 1, *t.shape[2:]))


#: Named layout transforms from a Keras variable's array to its ONNX initializer.
TRANSFORMS = {
    "identity": lambda a: np.ascontiguousarray(a),
    "conv_kernel": _conv_kernel,
    "depthwise_kernel": _depthwise_kernel,
}


@dataclass(frozen=True)
class WeightRef:
    """Where an ONNX initializer comes from in a Keras checkpoint.

    Attributes:
        layer: Keras layer name.
        index: position of the variable in ``layer.weights`` (= its position in the checkpoint).
        variable: the variable's name (``kernel``, ``bias``, ``gamma``...).
        keras_shape: the variable's shape in Keras (checkpoint) layout.
        transform: key of :data:`TRANSFORMS` giving the ONNX layout.
    """

    layer: str
    index: int
    variable: str
    keras_shape: tuple[int, ...]
    transform: str = "identity"

    def to_onnx(self, array: np.ndarray) -> np.ndarray:
        """The checkpoint ``array`` (shape ``keras_shape``) as float32 in ONNX layout."""
        return TRANSFORMS[self.transform](np.asarray(array, dtype=np.float32))


@dataclass
class Tensor:
    """A symbolic ONNX value during conversion.

    Attributes:
        name: ONNX value name.
        shape: the Keras (channels-last) shape, batch first, ``None`` for unknown sizes.
        cf: True when the value is stored channels-first (``(N, C, *spatial)``) while Keras
            sees it channels-last; always False for rank <= 2.
    """

    name: str
    shape: tuple
    cf: bool = False

    @property
    def rank(self) -> int:
        """Number of axes, batch included."""
        return len(self.shape)

    @property
    def channel_axis(self) -> int:
        """Axis of the stored value holding the channels (1 when channels-first, else -1)."""
        return 1 if self.cf else self.rank - 1


class Builder:
    """Accumulates nodes and initializers; helpers used by the per-layer converters."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.weights: dict[str, WeightRef] = {}
        self.opset = BASE_OPSET
        self._names: set[str] = set()
        self._layout_cache: dict[tuple[str, bool], Tensor] = {}

    def fresh(self, base: str) -> str:
        """A value/node name not used yet, ``base`` if free."""
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def node(self, op: str, inputs: list[str], layer: str, role: str, *, out: str | None = None,
             channel_axis: int | None = None, **attrs) -> str:
        """Append one node with the nasprobe metadata; returns its (single) output name."""
        out = self.fresh(out or f"{layer}/{role}")
        n = helper.make_node(op, inputs, [out], name=out, **attrs)
        meta = {LAYER_KEY: layer, "nasprobe.role": role}
        if channel_axis is not None:
            meta["nasprobe.channel_axis"] = str(channel_axis)
        for k, v in meta.items():
            entry = n.metadata_props.add()
            entry.key, entry.value = k, v
        self.nodes.append(n)
        return out

    def const(self, layer: str, what: str, value) -> str:
        """A constant initializer (not a Keras variable) named ``<layer>/const/<what>``."""
        arr = np.asarray(value)
        name = self.fresh(f"{layer}/const/{what}")
        self.initializers[name] = numpy_helper.from_array(arr, name)
        return name

    def weight(self, layer, variable: str, transform: str = "identity") -> str:
        """Initializer for ``layer``'s Keras variable ``variable``, recorded as a WeightRef."""
        for index, var in enumerate(layer.weights):  # noqa: B007 (index is used after the loop)
            if var.name == variable:
                break
        else:
            raise UnsupportedLayerError(f"layer {layer.name!r} has no variable {variable!r}")
        ref = WeightRef(layer.name, index, variable, tuple(int(d) for d in var.shape), transform)
        name = f"{layer.name}/{variable}"
        if name in self._names:
            raise UnsupportedLayerError(f"weight name {name!r} is used twice (a layer shared "
                                        "or called twice is not supported)")
        self._names.add(name)
        self.initializers[name] = numpy_helper.from_array(
            ref.to_onnx(np.asarray(var.numpy() if hasattr(var, "numpy") else var)), name)
        self.weights[name] = ref
        return name

    def layout(self, t: Tensor, cf: bool, layer: str) -> Tensor:
        """``t`` stored channels-first (``cf``) or channels-last, adding a Transpose if needed."""
        cf = cf and t.rank > 2
        if t.cf == cf:
            return t
        key = (t.name, cf)
        if key not in self._layout_cache:
            r = t.rank
            perm = [0, r - 1, *range(1, r - 1)] if cf else [0, *range(2, r), 1]
            out = self.node("Transpose", [t.name], layer, "layout",
                            out=f"{t.name}/{'to_cf' if cf else 'to_cl'}", perm=perm)
            self._layout_cache[key] = Tensor(out, t.shape, cf)
        return self._layout_cache[key]
