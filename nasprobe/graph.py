"""Taps in an ONNX graph (docs/measures.md, "Which tensor is tapped").

:func:`find_taps` finds each layer's linear operator (Conv, ConvTranspose, Gemm, or MatMul with
a constant weight, plus its bias Add) and, for ``tap="preact"``, follows per-channel operators
(BatchNormalization, bias/scale arithmetic, Transpose, Identity, Dropout) to the input of the
nonlinearity. :func:`build_probe_graph` (in :mod:`nasprobe.nas_graph`, re-exported here)
appends, for every tap, a numerically stable entropy → NAS computation along the channel axis.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, shape_inference

from .errors import GraphError

__all__ = ["Tap", "find_taps", "build_probe_graph", "build_tap_graph", "layer_name", "NAS_PREFIX", "ACTIVATIONS"]

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ACTIVATIONS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "Tanh",
    "Gelu", "HardSwish", "Softplus", "Softsign", "Clip", "Mish", "ThresholdedRelu", "Swish",
})
#: Operators that keep each channel separate; the preact walk passes through them.
_PER_CHANNEL = frozenset({"BatchNormalization", "Add", "Sub", "Mul", "Div", "Transpose",
                          "Identity", "Dropout", "Cast"})
NAS_PREFIX = "nasprobe_nas::"


@dataclass
class Tap:
    """One layer's tapped tensor.

    Attributes:
        layer: layer name (the framework's own where the graph records it).
        kind: operator type of the linear op (Conv, ConvTranspose, Gemm, MatMul).
        node: the linear node's name.
        tensor: ONNX value whose NAS is measured (linear output, or the nonlinearity's input).
        channel_axis: non-negative channel axis of ``tensor``.
        rank: rank of ``tensor`` (batch axis included).
        channels: ``D``.
        weight: initializer name of the weight; ``weight_perm`` is applied first when the graph
            transposes it, and ``weight_layout`` says where the output channels are
            (``"out_first"``: ``(D, ...)``; ``"out_second"``: ConvTranspose ``(C, D/g, ...)``;
            ``"out_last"``: MatMul / Gemm without transB ``(K, D)``).
        bias: initializer name of the bias, or None.
        output: name of the NAS map output appended by :func:`build_probe_graph`.
    """

    layer: str
    kind: str
    node: str
    tensor: str
    channel_axis: int
    rank: int
    channels: int
    weight: str
    weight_layout: str
    weight_perm: tuple[int, ...] | None = None
    bias: str | None = None
    bias_only_path: bool = True
    depth: int = 0
    output: str = field(default="")

    def filters(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        """The layer's filters as ``(D, fan_in)`` float64, from ``weights`` (initializer → array)."""
        w = np.asarray(weights[self.weight], dtype=np.float64)
        if self.weight_perm is not None:
            w = np.transpose(w, self.weight_perm)
        if self.weight_layout == "out_second":
            w = np.swapaxes(w, 0, 1)
        elif self.weight_layout == "out_last":
            w = np.moveaxis(w, -1, 0)
        return w.reshape(w.shape[0], -1)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def layer_name(node: onnx.NodeProto) -> str:
    """Layer name of a node: metadata ``nasprobe.layer``, else the PyTorch exporter's module
    scope (``pkg.torch.onnx.name_scopes``), else the older exporter's ``/a/a.0/Conv`` scope,
    else the node name (or op type when unnamed)."""
    meta = {p.key: p.value for p in node.metadata_props}
    if meta.get("nasprobe.layer"):
        return meta["nasprobe.layer"]
    if "pkg.torch.onnx.name_scopes" in meta:
        try:
            scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
            classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
        except (ValueError, SyntaxError):
            scopes, classes = [], []
        for i in range(len(scopes) - 1, -1, -1):
            cls = classes[i] if i < len(classes) else ""
            if cls.startswith(("aten.", "prims.", "<built-in")) or not scopes[i]:
                continue
            return scopes[i]
    parts = [p for p in node.name.split("/") if p]
    if node.name.startswith("/") and len(parts) >= 2:
        return parts[-2]
    return node.name or node.op_type


class _Graph:
    """Index of a graph: producers, consumers, constants, ranks."""

    #: (model, its inferred copy) of the last index built: find_taps and the graph builders
    #: index the same architecture, whose shape inference is then done once
    last: tuple[onnx.ModelProto, onnx.ModelProto] | None = None

    def __init__(self, model: onnx.ModelProto):
        if _Graph.last is not None and _Graph.last[0] is model:
            inferred = _Graph.last[1]
        else:
            try:
                inferred = shape_inference.infer_shapes(model, strict_mode=False)
            except Exception:  # shape inference is best effort
                inferred = model
            _Graph.last = (model, inferred)
        g = inferred.graph
        self.model = model
        self.nodes = list(model.graph.node)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.consts = dict(self.inits)
        for n in self.nodes:
            if n.op_type == "Constant" and n.output:
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = a.t
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in model.graph.output}
        self.types: dict[str, onnx.TypeProto] = {}
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            self.types[vi.name] = vi.type

    def rank(self, name: str) -> int | None:
        t = self.types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return len(t.tensor_type.shape.dim)

    def elem_type(self, name: str) -> int:
        t = self.types.get(name)
        return t.tensor_type.elem_type if t is not None else onnx.TensorProto.FLOAT

    def const_source(self, name: str) -> tuple[str, tuple[int, ...] | None] | None:
        """(initializer, perm) when ``name`` is an initializer, possibly behind a Transpose."""
        if name in self.inits:
            return name, None
        node = self.producer.get(name)
        if node is not None and node.op_type in ("Identity", "Cast") and node.input[0] in self.inits:
            return node.input[0], None
        if node is not None and node.op_type == "Transpose" and node.input[0] in self.inits:
            perm = _attr(node, "perm")
            dims = len(self.inits[node.input[0]].dims)
            return node.input[0], tuple(perm) if perm else tuple(reversed(range(dims)))
        return None

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None


def _const_size(g: _Graph, name: str) -> int | None:
    t = g.consts.get(name)
    return int(np.prod(t.dims)) if t is not None else None


def _linear_tap(g: _Graph, node: onnx.NodeProto) -> Tap | None:
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        src = g.const_source(node.input[1]) if len(node.input) > 1 else None
        if src is None:
            return None
        w = g.inits[src[0]]
        wdims = list(w.dims) if src[1] is None else [w.dims[i] for i in src[1]]
        group = _attr(node, "group", 1)
        d = wdims[0] if op == "Conv" else wdims[1] * group
        layout = "out_first" if op == "Conv" else "out_second"
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in g.consts else None
        rank = g.rank(node.output[0]) or len(wdims)
        tap = Tap("", op, node.name, node.output[0], 1, rank, int(d), src[0], layout, src[1], bias)
    elif op == "Gemm":
        src = g.const_source(node.input[1])
        if src is None or _attr(node, "transA", 0):
            return None
        w = g.inits[src[0]]
        wdims = list(w.dims) if src[1] is None else [w.dims[i] for i in src[1]]
        trans_b = _attr(node, "transB", 0)
        d = wdims[0] if trans_b else wdims[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in g.consts else None
        tap = Tap("", op, node.name, node.output[0], 1, 2, int(d), src[0],
                  "out_first" if trans_b else "out_last", src[1], bias)
    elif op == "MatMul":
        src = g.const_source(node.input[1])
        if src is None:
            return None
        w = g.inits[src[0]]
        wdims = list(w.dims) if src[1] is None else [w.dims[i] for i in src[1]]
        if len(wdims) != 2:
            return None
        rank = g.rank(node.output[0]) or g.rank(node.input[0]) or 2
        tap = Tap("", op, node.name, node.output[0], rank - 1, rank, int(wdims[1]), src[0],
                  "out_last", src[1], None)
    else:
        return None
    # A bias Add that follows a linear op without its own bias belongs to the layer, also
    # behind layout Transposes (channels-last exports: Conv -> Transpose -> Add(bias)).
    name, axis = tap.tensor, tap.channel_axis
    while tap.bias is None:
        nxt = g.sole_consumer(name)
        if nxt is None:
            break
        if nxt.op_type == "Transpose" and _attr(nxt, "perm") is not None:
            name, axis = nxt.output[0], list(_attr(nxt, "perm")).index(axis)
            continue
        if nxt.op_type == "Add":
            other = nxt.input[1] if nxt.input[0] == name else nxt.input[0]
            if other in g.inits and _const_size(g, other) == tap.channels:
                tap.bias, tap.tensor, tap.channel_axis = other, nxt.output[0], axis
        break
    return tap


def _is_swish(g: _Graph, name: str) -> bool:
    """``x * sigmoid(x)`` (SiLU/swish written out): x feeds exactly a Sigmoid and the Mul."""
    users = g.consumers.get(name, [])
    if len(users) != 2 or name in g.graph_outputs:
        return False
    sig = [u for u in users if u.op_type == "Sigmoid"]
    mul = [u for u in users if u.op_type == "Mul"]
    return len(sig) == 1 and len(mul) == 1 and sig[0].output[0] in mul[0].input


def _preact(g: _Graph, tap: Tap) -> tuple[str, int] | None:
    """Follow per-channel ops from the linear output to a nonlinearity's input."""
    name, axis, bias_only = tap.tensor, tap.channel_axis, True
    for _ in range(32):
        if _is_swish(g, name):
            tap.bias_only_path = bias_only
            return name, axis
        nxt = g.sole_consumer(name)
        if nxt is None:
            return None
        if nxt.op_type in ACTIVATIONS:
            tap.bias_only_path = bias_only
            return name, axis
        if nxt.op_type not in _PER_CHANNEL:
            return None
        if nxt.op_type in ("Add", "Sub", "Mul", "Div"):
            other = nxt.input[1] if nxt.input[0] == name else nxt.input[0]
            size = _const_size(g, other)
            if size is None or size not in (1, tap.channels):
                return None  # e.g. a residual Add: not per-channel
            bias_only = False
        elif nxt.op_type == "BatchNormalization":
            if axis != 1:
                return None
            bias_only = False
        elif nxt.op_type == "Transpose":
            perm = _attr(nxt, "perm")
            if perm is None:
                return None
            axis = list(perm).index(axis)
        name = nxt.output[0]
    return None


def find_taps(model: onnx.ModelProto, tap: str = "linear", layers: str | None = None,
              source: str = "<model>") -> list[Tap]:
    """Every tappable layer of ``model`` in graph order.

    Args:
        model: an ONNX model.
        tap: ``"linear"`` (output of the linear op, bias included, before BatchNorm and the
            nonlinearity) or ``"preact"`` (input of the nonlinearity; layers that reach no
            nonlinearity through per-channel ops, e.g. the logits layer, have no preact tap).
        layers: optional regex; only layers whose name it matches (``re.search``) are kept.
        source: file name used in error messages.

    Raises:
        GraphError: no tap at all, or none matching ``layers`` (the message lists what was found).
    """
    if tap not in ("linear", "preact"):
        raise GraphError(source, f"tap must be 'linear' or 'preact', not {tap!r}")
    g = _Graph(model)
    taps: list[Tap] = []
    seen: dict[str, int] = {}
    for node in g.nodes:
        if node.op_type not in LINEAR_OPS:
            continue
        t = _linear_tap(g, node)
        if t is None:
            continue
        base = layer_name(node)
        seen[base] = seen.get(base, 0) + 1
        t.layer = base if seen[base] == 1 else f"{base}#{seen[base]}"
        if tap == "preact":
            found = _preact(g, t)
            if found is None:
                continue
            t.tensor, t.channel_axis = found
        taps.append(t)
    if not taps:
        ops = sorted({n.op_type for n in g.nodes})
        raise GraphError(source, f"no {tap} tap found: the graph has no Conv, ConvTranspose, "
                         f"Gemm or MatMul with a constant weight{' feeding a nonlinearity' if tap == 'preact' else ''}; "
                         f"operators found: {', '.join(ops) or 'none'}")
    if layers:
        try:
            rx = re.compile(layers)
        except re.error as exc:
            raise GraphError(source, f"--layers {layers!r}: not a valid regular expression "
                             f"({exc})") from None
        kept = [t for t in taps if rx.search(t.layer)]
        if not kept:
            raise GraphError(source, f"--layers {layers!r} matches none of the layers: "
                             f"{', '.join(t.layer for t in taps)}")
        taps = kept
    for i, t in enumerate(taps):
        t.depth = i
        t.output = NAS_PREFIX + t.layer
    return taps


# The NAS computation appended to a tapped graph lives in its own module.
from .nas_graph import build_probe_graph, build_tap_graph  # noqa: E402
