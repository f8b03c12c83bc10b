"""The NAS computation appended to an ONNX graph, one subgraph per tap (DESIGN.md §2).

Only NAS maps — ``D`` times smaller than the tap tensors — leave onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import GraphError
from .graph import Tap, _Graph

__all__ = ["build_probe_graph"]


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 13


def build_probe_graph(model: onnx.ModelProto, taps: list[Tap], *, exclude_bias: bool = False,
                      keep_outputs: bool = True, source: str = "<model>") -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are, per tap, the NAS map ``(N, *locations)`` (float32,
    named ``tap.output``), plus the model's own outputs when ``keep_outputs``.

    NAS is computed along the channel axis as ``H = ln S - Σ e z / S`` with ``z = a - max(a)``,
    ``e = exp(z)``, ``S = Σ e``, then ``s = 1 - exp(H) / D`` — finite for inputs of ±1e4.
    ``exclude_bias`` subtracts the layer's bias first (linear taps, or preact taps whose path
    from the linear op holds no BatchNorm or scaling).
    """
    if _opset(model) < 13:
        raise GraphError(source, f"opset {_opset(model)} is too old; nasprobe needs opset >= 13")
    new = onnx.ModelProto()
    new.CopyFrom(model)
    g = new.graph
    g_index = _Graph(model)
    opset = _opset(model)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outputs = [o for o in g.output] if keep_outputs else []

    def c(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    for t in taps:
        p = f"nasprobe/{t.depth}/"
        x = t.tensor
        if g_index.elem_type(x) != onnx.TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [x], [p + "f32"], to=onnx.TensorProto.FLOAT))
            x = p + "f32"
        if exclude_bias:
            if t.bias is None:
                pass  # no bias: nothing to subtract
            elif not t.bias_only_path:
                raise GraphError(source, f"layer {t.layer}: --exclude-bias cannot be applied to a "
                                 "preact tap behind BatchNorm or scaling; use --tap linear")
            else:
                shape = [1] * t.rank
                shape[t.channel_axis] = t.channels
                nodes.append(helper.make_node("Reshape", [t.bias, c(p + "bshape", np.array(shape, np.int64))], [p + "b"]))
                b = p + "b"
                if g_index.elem_type(t.bias) != onnx.TensorProto.FLOAT:
                    nodes.append(helper.make_node("Cast", [b], [p + "bf"], to=onnx.TensorProto.FLOAT))
                    b = p + "bf"
                nodes.append(helper.make_node("Sub", [x, b], [p + "nobias"]))
                x = p + "nobias"
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
            helper.make_node("Sub", [c(p + "one", np.array(1.0, np.float32)), p + "tau"], [t.output]),
        ]
        outputs.append(helper.make_tensor_value_info(t.output, onnx.TensorProto.FLOAT, None))
    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend(outputs)
    return new
