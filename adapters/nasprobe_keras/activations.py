"""Keras activations → ONNX nonlinearity nodes (role ``activation``).

The input of the node emitted here is the ``preact`` tap; ``linear`` gives no node.
"""

from __future__ import annotations

import numpy as np

from .builder import Builder, Tensor, UnsupportedLayerError

__all__ = ["activation", "ACTIVATIONS"]

# Keras 3's SELU constants (keras.activations.selu), not ONNX's defaults.
_SELU_ALPHA, _SELU_SCALE = 1.67326324, 1.05070098


def _simple(op: str, **attrs):
    def emit(b: Builder, x: Tensor, layer: str, cfg: dict) -> str:
        return b.node(op, [x.name], layer, "activation", **attrs)
    return emit


def _softmax(op: str):
    def emit(b: Builder, x: Tensor, layer: str, cfg: dict) -> str:
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if not isinstance(axis, int):
            raise UnsupportedLayerError(f"layer {layer!r}: softmax over axes {axis}")
        axis %= x.rank
        if x.cf:
            axis = 1 if axis == x.rank - 1 else (axis + 1 if axis else 0)
        return b.node(op, [x.name], layer, "activation", axis=axis)
    return emit


def _clip(lo: float, hi: float | None):
    def emit(b: Builder, x: Tensor, layer: str, cfg: dict) -> str:
        ins = [x.name, b.const(layer, "min", np.float32(lo))]
        if hi is not None:
            ins.append(b.const(layer, "max", np.float32(hi)))
        return b.node("Clip", ins, layer, "activation")
    return emit


def _swish(b: Builder, x: Tensor, layer: str, cfg: dict) -> str:
    s = b.node("Sigmoid", [x.name], layer, "activation")
    return b.node("Mul", [x.name, s], layer, "activation")


def _gelu(b: Builder, x: Tensor, layer: str, cfg: dict) -> str:
    b.opset = max(b.opset, 20)
    return b.node("Gelu", [x.name], layer, "activation",
                  approximate="tanh" if cfg.get("approximate") else "none")


#: Keras activation name → emitter ``(builder, x, layer_name, config) -> output name``.
ACTIVATIONS = {
    "relu": _simple("Relu"),
    "sigmoid": _simple("Sigmoid"),
    "tanh": _simple("Tanh"),
    "elu": _simple("Elu", alpha=1.0),
    "selu": _simple("Selu", alpha=_SELU_ALPHA, gamma=_SELU_SCALE),
    "gelu": _gelu,
    "softplus": _simple("Softplus"),
    "softsign": _simple("Softsign"),
    "leaky_relu": _simple("LeakyRelu", alpha=0.2),
    "relu6": _clip(0.0, 6.0),
    "hard_sigmoid": _simple("HardSigmoid", alpha=1.0 / 6.0, beta=0.5),
    "exponential": _simple("Exp"),
    "mish": _simple("Mish"),
    "silu": _swish,
    "swish": _swish,
    "softmax": _softmax("Softmax"),
    "log_softmax": _softmax("LogSoftmax"),
}


def _layer_activation(layer) -> tuple[str, dict]:
    """(activation name, options) of a layer with an activation argument or an activation
    layer (ReLU, LeakyReLU, ELU, Softmax)."""
    kind = type(layer).__name__
    cfg = layer.get_config()
    if kind == "ReLU":
        slope, hi, thr = cfg.get("negative_slope", 0.0), cfg.get("max_value"), cfg.get(
            "threshold", 0.0)
        if thr:
            raise UnsupportedLayerError(f"layer {layer.name!r}: ReLU with a threshold")
        if hi is None:
            return ("leaky", {"alpha": slope}) if slope else ("relu", {})
        if slope:
            raise UnsupportedLayerError(f"layer {layer.name!r}: ReLU with max_value and slope")
        return "clip", {"max": float(hi)}
    if kind == "LeakyReLU":
        return "leaky", {"alpha": cfg.get("negative_slope", cfg.get("alpha", 0.3))}
    if kind == "ELU":
        return "elu_alpha", {"alpha": cfg.get("alpha", 1.0)}
    if kind == "Softmax":
        return "softmax", {"axis": cfg.get("axis", -1)}
    act = cfg.get("activation", "linear")
    if isinstance(act, dict):  # a serialized function object
        act = act.get("config", act).get("name", act.get("class_name"))
    if act is None or act == "linear":
        return "linear", {}
    return str(act), {}


def activation(b: Builder, layer, x: Tensor) -> Tensor:
    """Append ``layer``'s activation after ``x``; returns ``x`` itself for ``linear``."""
    name, cfg = _layer_activation(layer)
    if name == "linear":
        return x
    first = len(b.nodes)
    if name == "leaky":
        out = b.node("LeakyRelu", [x.name], layer.name, "activation", alpha=float(cfg["alpha"]))
    elif name == "elu_alpha":
        out = b.node("Elu", [x.name], layer.name, "activation", alpha=float(cfg["alpha"]))
    elif name == "clip":
        out = _clip(0.0, cfg["max"])(b, x, layer.name, cfg)
    elif name in ACTIVATIONS:
        out = ACTIVATIONS[name](b, x, layer.name, cfg)
    else:
        raise UnsupportedLayerError(
            f"layer {layer.name!r}: activation {name!r} is not supported (supported: "
            f"linear, {', '.join(sorted(ACTIVATIONS))})")
    for node in b.nodes[first:]:  # where the channels are, for the preact tap
        entry = node.metadata_props.add()
        entry.key, entry.value = "nasprobe.channel_axis", str(x.channel_axis)
    return Tensor(out, x.shape, x.cf)
