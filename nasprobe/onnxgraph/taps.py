"""Taps in an ONNX graph (docs/measures.md, "Which tensor is tapped"; docs/onnx.md).

:func:`find_taps` finds each layer's linear operator (Conv/ConvTranspose of any rank, Gemm, or
MatMul with a constant weight on either side, plus its bias Add; weights may sit behind
Transpose, Cast or ``DequantizeLinear``) and, for ``tap="preact"``, follows per-channel
operators (BatchNormalization, bias/scale arithmetic, Transpose, Identity, Dropout, Cast,
Quantize/DequantizeLinear) to the input of the nonlinearity. :func:`untappable` lists the
linear layers no tap can reach (inside If/Loop/Scan subgraphs, or integer-quantised operators).
The NAS computation appended to a tapped graph lives in :mod:`nasprobe.onnxgraph.nas_graph`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from nasprobe.contract import unique_layer_name
from nasprobe.errors import GraphError

from .index import CONTROL_FLOW, GraphIndex, attr
from .layer_names import layer_name

__all__ = ["Tap", "find_taps", "untappable", "NAS_PREFIX", "ACTIVATIONS",
           "QUANTISED_OPS"]

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Integer-quantised linear operators: their outputs are integers (re-quantised, possibly
#: already clipped by a fused nonlinearity), so no honest linear tap exists; they are refused.
QUANTISED_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                           "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
ACTIVATIONS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "Tanh",
    "Gelu", "HardSwish", "Softplus", "Softsign", "Clip", "Mish", "ThresholdedRelu", "Swish",
})
#: Operators that keep each channel separate; the preact walk passes through them.
_PER_CHANNEL = frozenset({"BatchNormalization", "Add", "Sub", "Mul", "Div", "Transpose",
                          "Identity", "Dropout", "Cast", "QuantizeLinear", "DequantizeLinear"})
NAS_PREFIX = "nasprobe_nas::"


@dataclass
class Tap:
    """One layer's tapped tensor.

    Attributes:
        layer: layer name (see :func:`nasprobe.onnxgraph.layer_names.layer_name`).
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
        dequant: for a quantised weight (QDQ graphs), the initializer names of its scale and
            zero point (or None) and the quantisation axis of the stored weight.
        bias: name of the bias tensor, or None.
        output: name of the NAS map output appended by :func:`nasprobe.onnxgraph.nas_graph.build_probe_graph`.
        nonlinearity: the operator that follows the layer through per-channel ops (``Relu``,
            ``Gelu``, ``Swish`` for ``x * sigmoid(x)``, ...), or ``""`` when it reaches none
            (e.g. the logits layer): see docs/measures.md, "Dead units".
        act_tensor, act_axis: the nonlinearity's input (after BatchNorm where there is one)
            and its channel axis, whose share of values above zero per channel is the layer's
            unit activity; None without a nonlinearity.
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
    dequant: tuple[str, str | None, int] | None = None
    nonlinearity: str = ""
    act_tensor: str | None = None
    act_axis: int = 1

    def filters(self, weights: dict[str, np.ndarray]) -> np.ndarray:
        """The layer's filters as ``(D, fan_in)`` float64, from ``weights`` (initializer → array);
        a quantised weight is dequantised first, ``(q - zero_point) * scale``."""
        w = np.asarray(weights[self.weight], dtype=np.float64)
        if self.dequant is not None:
            scale_name, zp_name, axis = self.dequant
            scale = np.asarray(weights[scale_name], dtype=np.float64)
            zp = np.asarray(weights[zp_name], dtype=np.float64) if zp_name else np.zeros(1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * w.ndim
                shape[axis % w.ndim] = scale.size
                scale, zp = scale.reshape(shape), zp.reshape(shape) if zp.size > 1 else zp
            w = (w - zp) * scale
        if self.weight_perm is not None:
            w = np.transpose(w, self.weight_perm)
        if self.weight_layout == "out_second":
            w = np.swapaxes(w, 0, 1)
        elif self.weight_layout == "out_last":
            w = np.moveaxis(w, -1, 0)
        return w.reshape(w.shape[0], -1)


def _weight(g: GraphIndex, name: str):
    """(initializer, dims as the op sees them, perm, dequant) of a constant weight, or None."""
    src = g.const_source(name)
    if src is None:
        return None
    init_name, perm, deq = src
    w = g.inits[init_name]
    dims = list(w.dims) if perm is None else [w.dims[i] for i in perm]
    dequant = None
    if deq is not None:
        zp = deq.input[2] if len(deq.input) > 2 and deq.input[2] else None
        if deq.input[1] not in g.inits or (zp is not None and zp not in g.inits):
            return None
        dequant = (deq.input[1], zp, int(attr(deq, "axis", 1)))
    return init_name, dims, perm, dequant


def _bias(g: GraphIndex, node: onnx.NodeProto, index: int) -> str | None:
    if len(node.input) > index and node.input[index] and g.const_size(node.input[index]):
        return node.input[index]
    return None


def _linear_tap(g: GraphIndex, node: onnx.NodeProto) -> Tap | None:
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        found = _weight(g, node.input[1]) if len(node.input) > 1 else None
        if found is None:
            return None
        init, wdims, perm, deq = found
        d = wdims[0] if op == "Conv" else wdims[1] * attr(node, "group", 1)
        layout = "out_first" if op == "Conv" else "out_second"
        rank = g.rank(node.output[0]) or len(wdims)
        tap = Tap("", op, node.name, node.output[0], 1, rank, int(d), init, layout, perm,
                  _bias(g, node, 2), dequant=deq)
    elif op == "Gemm":
        found = _weight(g, node.input[1])
        if found is None:  # a constant A with a variable B puts the batch on the columns
            return None
        init, wdims, perm, deq = found
        trans_b = attr(node, "transB", 0)
        d = wdims[0] if trans_b else wdims[1]
        tap = Tap("", op, node.name, node.output[0], 1, 2, int(d), init,
                  "out_first" if trans_b else "out_last", perm, _bias(g, node, 2), dequant=deq)
    elif op == "MatMul":
        right = _weight(g, node.input[1])
        left = None if right is not None else _weight(g, node.input[0])
        found = right or left
        if found is None or len(found[1]) != 2:
            return None
        init, wdims, perm, deq = found
        rank = g.rank(node.output[0]) or g.rank(node.input[1 if left else 0]) or 2
        if right is not None:  # x @ W: channels last
            tap = Tap("", op, node.name, node.output[0], rank - 1, rank, int(wdims[1]), init,
                      "out_last", perm, None, dequant=deq)
        else:  # W @ x with x (..., K, L): channels on the second-to-last axis
            if rank < 3:
                return None  # (D, K) @ (K, N) would put the batch on the columns
            tap = Tap("", op, node.name, node.output[0], rank - 2, rank, int(wdims[0]), init,
                      "out_first", perm, None, dequant=deq)
    else:
        return None
    # A bias Add that follows a linear op without its own bias belongs to the layer, also
    # behind layout Transposes (channels-last exports: Conv -> Transpose -> Add(bias)).
    name, axis = tap.tensor, tap.channel_axis
    while tap.bias is None:
        nxt = g.sole_consumer(name)
        if nxt is None:
            break
        if nxt.op_type == "Transpose" and attr(nxt, "perm") is not None:
            name, axis = nxt.output[0], list(attr(nxt, "perm")).index(axis)
            continue
        if nxt.op_type == "Add":
            other = nxt.input[1] if nxt.input[0] == name else nxt.input[0]
            if g.const_size(other) == tap.channels and _bias_shape_ok(g, other, axis, tap.rank):
                tap.bias, tap.tensor, tap.channel_axis = other, nxt.output[0], axis
        break
    return tap


def _bias_shape_ok(g: GraphIndex, name: str, axis: int, rank: int) -> bool:
    """A constant of D elements adds per channel when its shape broadcasts along ``axis``."""
    t = g.consts.get(name)
    if t is None:
        return True  # behind DequantizeLinear: a 1-D vector
    dims = list(t.dims)
    if len(dims) <= 1:
        return axis == rank - 1 or len(dims) == 0
    full = [1] * (rank - len(dims)) + dims
    return len(full) == rank and all(d == 1 for i, d in enumerate(full) if i != axis)


def _is_gated(g: GraphIndex, name: str) -> bool:
    """``x * sigmoid(x)`` / ``x * hardsigmoid(x)`` (SiLU / hard swish written out): x feeds
    exactly one Sigmoid (or HardSigmoid) and the Mul that multiplies by it."""
    users = g.consumers.get(name, [])
    if len(users) != 2 or name in g.graph_outputs:
        return False
    gate = [u for u in users if u.op_type in ("Sigmoid", "HardSigmoid")]
    mul = [u for u in users if u.op_type == "Mul"]
    return len(gate) == 1 and len(mul) == 1 and gate[0].output[0] in mul[0].input


def _gate_name(g: GraphIndex, name: str) -> str:
    """``Swish`` for ``x * sigmoid(x)``, ``HardSwish`` for ``x * hardsigmoid(x)``."""
    gate = [u for u in g.consumers.get(name, []) if u.op_type in ("Sigmoid", "HardSigmoid")]
    return "HardSwish" if gate and gate[0].op_type == "HardSigmoid" else "Swish"


def _preact(g: GraphIndex, tap: Tap) -> tuple[str, int, str] | None:
    """Follow per-channel ops from the linear output to a nonlinearity's input: that tensor,
    its channel axis and the nonlinearity's name (sets ``tap.bias_only_path``)."""
    name, axis, bias_only = tap.tensor, tap.channel_axis, True
    for _ in range(32):
        if _is_gated(g, name):
            tap.bias_only_path = bias_only
            return name, axis, _gate_name(g, name)
        nxt = g.sole_consumer(name)
        if nxt is None:
            return None
        if nxt.op_type in ACTIVATIONS:
            tap.bias_only_path = bias_only
            return name, axis, nxt.op_type
        if nxt.op_type not in _PER_CHANNEL:
            return None
        if nxt.op_type in ("Add", "Sub", "Mul", "Div"):
            other = nxt.input[1] if nxt.input[0] == name else nxt.input[0]
            size = g.const_size(other)
            if size is None or size not in (1, tap.channels):
                return None  # e.g. a residual Add: not per-channel
            bias_only = False
        elif nxt.op_type in ("BatchNormalization", "QuantizeLinear", "DequantizeLinear"):
            if nxt.op_type == "BatchNormalization" and axis != 1:
                return None
            bias_only = False
        elif nxt.op_type == "Transpose":
            perm = attr(nxt, "perm")
            if perm is None:
                return None
            axis = list(perm).index(axis)
        name = nxt.output[0]
    return None


def _inner_linear(graph: onnx.GraphProto, where: str, out: dict[str, str]) -> None:
    for n in graph.node:
        if n.op_type in LINEAR_OPS or n.op_type in QUANTISED_OPS:
            out[layer_name(n)] = f"{n.op_type} inside {where}: taps inside control flow are " \
                                 "not supported"
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _inner_linear(sub, f"{where} > {n.op_type} {n.name!r}", out)


def untappable(model: onnx.ModelProto) -> dict[str, str]:
    """Linear layers that no tap can reach, name → reason: those inside If/Loop/Scan subgraphs
    (onnxruntime cannot expose a subgraph's tensors) and integer-quantised operators
    (:data:`QUANTISED_OPS`). The rest of the graph is probed as usual."""
    out: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type in QUANTISED_OPS:
            out[layer_name(n)] = (f"{n.op_type} is integer-quantised (its output is re-quantised, "
                                  "so no float linear output exists); quantise in QDQ format "
                                  "to probe it")
        if n.op_type in CONTROL_FLOW:
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    _inner_linear(sub, f"{n.op_type} {n.name!r}", out)
    return out


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
        GraphError: no tap at all, or none matching ``layers`` (the message lists what was
            found and what :func:`untappable` refused).
    """
    if tap not in ("linear", "preact"):
        raise GraphError(source, f"tap must be 'linear' or 'preact', not {tap!r}")
    g = GraphIndex(model)
    taps: list[Tap] = []
    # A repeated name gets "#2", "#3"...: never another layer's own name (unique_layer_name).
    linear = [(node, t) for node in g.nodes if node.op_type in LINEAR_OPS
              for t in [_linear_tap(g, node)] if t is not None]
    bases = {layer_name(node, t.weight) for node, t in linear}
    used: set[str] = set()
    for node, t in linear:
        t.layer = unique_layer_name(layer_name(node, t.weight), used, bases)
        used.add(t.layer)
        only = t.bias_only_path
        found = _preact(g, t)
        if found is not None:
            t.act_tensor, t.act_axis, t.nonlinearity = found
        if tap == "preact":
            if found is None:
                continue
            t.tensor, t.channel_axis = found[:2]
        else:
            t.bias_only_path = only  # the preact walk's verdict is about preact taps
        taps.append(t)
    refused = untappable(model)
    why = "".join(f"; {k}: {v}" for k, v in list(refused.items())[:4])
    if not taps and refused:
        raise GraphError(source, f"no {tap} tap found: the {len(refused)} linear layers cannot be "
                         "tapped" + "".join(f"; {k}: {v}" for k, v in list(refused.items())[:3]))
    if not taps:
        ops = sorted({n.op_type for n in g.nodes})
        raise GraphError(source, f"no {tap} tap found: the graph has no Conv, ConvTranspose, "
                         f"Gemm or MatMul with a constant weight"
                         f"{' feeding a nonlinearity' if tap == 'preact' else ''}; "
                         f"operators found: {', '.join(ops) or 'none'}{why}")
    if layers:
        try:
            rx = re.compile(layers)
        except re.error as exc:
            raise GraphError(source, f"--layers {layers!r}: not a valid regular expression "
                             f"({exc})") from None
        kept = [t for t in taps if rx.search(t.layer)]
        if not kept:
            inner = [k for k in refused if rx.search(k)]
            raise GraphError(source, f"--layers {layers!r} matches none of the layers: "
                             f"{', '.join(t.layer for t in taps)}"
                             + "".join(f"; {k}: {refused[k]}" for k in inner[:4]))
        taps = kept
    for i, t in enumerate(taps):
        t.depth = i
        t.output = NAS_PREFIX + t.layer
    return taps
