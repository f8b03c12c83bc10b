"""The NAS computation appended to an ONNX graph, one subgraph per tap (docs/measures.md).

Only NAS maps — ``D`` times smaller than the tap tensors — leave onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nasprobe.errors import GraphError

from .index import GraphIndex, opset_of
from .taps import Tap

__all__ = ["build_probe_graph", "build_tap_graph", "ACT_PREFIX"]

#: Prefix of the unit-activity outputs ``(N, D)`` of :func:`build_probe_graph`.
ACT_PREFIX = "nasprobe_act::"


class _Builder:
    """Appends nodes and initializers to a copy of ``model``; shared by both graph builders."""

    def __init__(self, model: onnx.ModelProto, source: str):
        opset = opset_of(model) or 13
        if opset < 13:  # OnnxSource upgrades old files first (nasprobe.onnxgraph.prepare)
            raise GraphError(source, f"opset {opset} is too old for the NAS graph (>= 13); "
                             "upgrade it with nasprobe.onnxgraph.prepare.prepare_model")
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.index = GraphIndex(model)
        self.opset = opset
        self.source = source
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def tap_input(self, t: Tap, exclude_bias: bool) -> str:
        """The float32 tensor whose NAS is measured: the tap, cast, less its bias if asked."""
        p = f"nasprobe/{t.depth}/"
        x = t.tensor
        if self.index.elem_type(x) != onnx.TensorProto.FLOAT:
            self.nodes.append(helper.make_node("Cast", [x], [p + "f32"], to=onnx.TensorProto.FLOAT))
            x = p + "f32"
        if exclude_bias and t.bias is not None:
            if not t.bias_only_path:
                raise GraphError(self.source, f"layer {t.layer}: --exclude-bias cannot be applied "
                                 "to a preact tap behind BatchNorm or scaling; use --tap linear")
            shape = [1] * t.rank
            shape[t.channel_axis] = t.channels
            self.nodes.append(helper.make_node(
                "Reshape", [t.bias, self.const(p + "bshape", np.array(shape, np.int64))], [p + "b"]))
            b = p + "b"
            if self.index.elem_type(t.bias) != onnx.TensorProto.FLOAT:
                self.nodes.append(helper.make_node("Cast", [b], [p + "bf"], to=onnx.TensorProto.FLOAT))
                b = p + "bf"
            self.nodes.append(helper.make_node("Sub", [x, b], [p + "nobias"]))
            x = p + "nobias"
        return x

    def activity(self, t: Tap) -> str:
        """Per image and channel, how many values of the nonlinearity's input are above zero:
        ``(N, D)`` float32 (exact below 2^24 locations), named ``ACT_PREFIX + layer``."""
        p = f"nasprobe/{t.depth}/act/"
        x = t.act_tensor
        name = ACT_PREFIX + t.layer
        rank = self.index.rank(x) or t.rank
        if t.act_axis == 0 or rank < 2:
            raise GraphError(self.source, f"layer {t.layer}: the nonlinearity's input has its "
                             "channels on the batch axis; no unit activity")
        zero = self.const(p + "zero", np.zeros((), onnx.helper.tensor_dtype_to_np_dtype(
            self.index.elem_type(x) or onnx.TensorProto.FLOAT)))
        self.nodes += [helper.make_node("Greater", [x, zero], [p + "gt"]),
                       helper.make_node("Cast", [p + "gt"], [p + "f"], to=onnx.TensorProto.FLOAT)]
        axes = [a for a in range(1, rank) if a != t.act_axis]
        out = p + "f"
        if axes:
            self.nodes.append(helper.make_node(
                "ReduceSum", [out, self.const(p + "axes", np.array(axes, np.int64))], [p + "s"],
                keepdims=0))
            out = p + "s"
        self.nodes.append(helper.make_node("Identity", [out], [name]))
        return name

    def finish(self, outputs: list) -> onnx.ModelProto:
        g = self.model.graph
        g.node.extend(self.nodes)
        g.initializer.extend(self.inits)
        del g.output[:]
        g.output.extend(outputs)
        return self.model


def build_tap_graph(model: onnx.ModelProto, taps: list[Tap], *, exclude_bias: bool = False,
                    keep_outputs: bool = True, source: str = "<model>", activity: bool = False
                    ) -> tuple[onnx.ModelProto, list[str]] | tuple[onnx.ModelProto, list[str],
                                                                    list[str | None]]:
    """A copy of ``model`` whose outputs are the raw tap tensors (float32, bias removed when
    ``exclude_bias``), for NAS computed outside onnxruntime by :func:`nasprobe.measures.kernels.nas_map`.

    Returns:
        The graph, and per tap the name of its output (shape of the tap, e.g. ``(N, D, H, W)``),
        after the model's own outputs when ``keep_outputs``. With ``activity`` also, per tap,
        where its unit activity is counted: ``""`` in the tap output itself (the tap is the
        nonlinearity's input), the name of an extra output holding the nonlinearity's input
        (float32; behind BatchNorm, or when the bias was removed), or None (no nonlinearity).
    """
    bld = _Builder(model, source)
    outputs = [o for o in bld.model.graph.output] if keep_outputs else []
    have = {o.name for o in outputs}
    names, acts = [], []
    for t in taps:
        x = bld.tap_input(t, exclude_bias)
        names.append(x)
        if x not in have:
            have.add(x)
            outputs.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None))
    for t, x in zip(taps, names):
        if t.act_tensor is None:
            acts.append(None)
        elif t.act_tensor == x:
            acts.append("")
        else:
            a = t.act_tensor
            if bld.index.elem_type(a) != onnx.TensorProto.FLOAT:
                bld.nodes.append(helper.make_node("Cast", [a], [f"nasprobe/{t.depth}/actf"],
                                                  to=onnx.TensorProto.FLOAT))
                a = f"nasprobe/{t.depth}/actf"
            acts.append(a)
            if a not in have:
                have.add(a)
                outputs.append(helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT, None))
    if activity:
        return bld.finish(outputs), names, acts
    return bld.finish(outputs), names


def build_probe_graph(model: onnx.ModelProto, taps: list[Tap], *, exclude_bias: bool = False,
                      keep_outputs: bool = True, source: str = "<model>",
                      activity: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are, per tap, the NAS map ``(N, *locations)`` (float32,
    named ``tap.output``), plus the model's own outputs when ``keep_outputs``.

    NAS is computed along the channel axis as ``H = ln S - Σ e z / S`` with ``z = a - max(a)``,
    ``e = exp(z)``, ``S = Σ e``, then ``s = 1 - exp(H) / D`` clipped to ``[0, 1 - 1/D]``
    against rounding — finite for inputs of ±1e4.
    ``exclude_bias`` subtracts the layer's bias first (linear taps, or preact taps whose path
    from the linear op holds no BatchNorm or scaling). With ``activity``, each tap that reaches
    a nonlinearity also gets an output ``ACT_PREFIX + layer``: ``(N, D)`` float32, per image
    and channel the number of locations where the nonlinearity's input is above zero.
    """
    bld = _Builder(model, source)
    opset, nodes, c = bld.opset, bld.nodes, bld.const
    outputs = [o for o in bld.model.graph.output] if keep_outputs else []
    for t in taps:
        p = f"nasprobe/{t.depth}/"
        x = bld.tap_input(t, exclude_bias)
        axes = c(p + "axes", np.array([t.channel_axis], np.int64))
        if opset >= 18:
            nodes.append(helper.make_node("ReduceMax", [x, axes], [p + "max"], keepdims=1))
        else:
            nodes.append(helper.make_node("ReduceMax", [x], [p + "max"], axes=[t.channel_axis], keepdims=1))
        nodes += [
            helper.make_node("Sub", [x, p + "max"], [p + "z"]),
            helper.make_node("Exp", [p + "z"], [p + "e"]),
            helper.make_node("ReduceSum", [p + "e", axes], [p + "S"], keepdims=0),
            helper.make_node("Mul", [p + "e", p + "z"], [p + "ez"]),
            helper.make_node("ReduceSum", [p + "ez", axes], [p + "Sez"], keepdims=0),
            helper.make_node("Log", [p + "S"], [p + "logS"]),
            helper.make_node("Div", [p + "Sez", p + "S"], [p + "mean_z"]),
            helper.make_node("Sub", [p + "logS", p + "mean_z"], [p + "H"]),
            helper.make_node("Exp", [p + "H"], [p + "rho"]),
            helper.make_node("Div", [p + "rho", c(p + "D", np.array(t.channels, np.float32))], [p + "tau"]),
            helper.make_node("Sub", [c(p + "one", np.array(1.0, np.float32)), p + "tau"], [p + "s"]),
            # clamp to [0, 1 - 1/D] against rounding (exp(ln D) / D may exceed 1 by an ulp)
            helper.make_node("Clip", [p + "s", c(p + "lo", np.array(0.0, np.float32)),
                                      c(p + "hi", np.array(1 - 1 / t.channels, np.float32))],
                             [t.output]),
        ]
        outputs.append(helper.make_tensor_value_info(t.output, onnx.TensorProto.FLOAT, None))
        if activity and t.act_tensor is not None:
            outputs.append(helper.make_tensor_value_info(bld.activity(t), onnx.TensorProto.FLOAT,
                                                         None))
    return bld.finish(outputs)
