"""Small ONNX graphs built by hand for the core tests (no framework needed).

Each builder returns ``(model, expected)`` where ``expected`` maps layer name → (linear tensor,
linear channel axis, preact tensor or None, preact channel axis) so that tests can expose the
raw tap tensors and compare them with the in-graph NAS.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _model(nodes, inits, inp, out, opset=OPSET, layer_meta=None):
    graph = helper.make_graph(nodes, "g", [inp], [out], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    for node in m.graph.node:
        if layer_meta and node.name in layer_meta:
            p = node.metadata_props.add()
            p.key, p.value = "nasprobe.layer", layer_meta[node.name]
    onnx.checker.check_model(m)
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_bn_relu_net(rng, c_in=3, size=8, widths=(6, 5), classes=4, scale=1.0):
    """conv1 -> BN -> Relu -> conv2 (+Relu) -> GlobalAveragePool -> Flatten -> Gemm fc."""
    c1, c2 = widths
    inits = [
        _init("conv1.weight", rng.normal(0, scale, (c1, c_in, 3, 3))),
        _init("conv1.bias", rng.normal(0, 0.1, c1)),
        _init("bn.scale", rng.uniform(0.5, 1.5, c1)), _init("bn.bias", rng.normal(0, 0.1, c1)),
        _init("bn.mean", rng.normal(0, 0.1, c1)), _init("bn.var", rng.uniform(0.5, 1.5, c1)),
        _init("conv2.weight", rng.normal(0, scale, (c2, c1, 3, 3))),
        _init("conv2.bias", rng.normal(0, 0.1, c2)),
        _init("fc.weight", rng.normal(0, scale, (classes, c2))),
        _init("fc.bias", rng.normal(0, 0.1, classes)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"], name="bn"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[0, 0, 0, 0]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    m = _model(nodes, inits, _vi("x", ["N", c_in, size, size]), _vi("y", ["N", classes]),
               layer_meta={"conv1": "conv1", "bn": "conv1", "conv2": "conv2", "fc": "fc"})
    expected = {"conv1": ("c1", 1, "b1", 1), "conv2": ("c2", 1, "c2", 1), "fc": ("y", 1, None, None)}
    return m, expected


def matmul_add_net(rng, d_in=10, hidden=7, classes=3):
    """MatMul + bias Add -> Tanh -> MatMul (no bias) -> output."""
    inits = [_init("w1", rng.normal(0, 1, (d_in, hidden))), _init("b1", rng.normal(0, 0.1, hidden)),
             _init("w2", rng.normal(0, 1, (hidden, classes)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="dense1/MatMul"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="dense1/Add"),
             helper.make_node("Tanh", ["a1"], ["t1"], name="dense1/Tanh"),
             helper.make_node("MatMul", ["t1", "w2"], ["y"], name="dense2/MatMul")]
    m = _model(nodes, inits, _vi("x", ["N", d_in]), _vi("y", ["N", classes]))
    return m, {"dense1/MatMul": ("a1", 1, "a1", 1), "dense2/MatMul": ("y", 1, None, None)}


def sequence_dense_net(rng, t=5, d_in=6, hidden=4):
    """A dense layer applied to (N, T, D) sequences: MatMul + Add on the last axis, Relu."""
    inits = [_init("w", rng.normal(0, 1, (d_in, hidden))), _init("b", rng.normal(0, 0.1, hidden))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="seq_dense"),
             helper.make_node("Add", ["m", "b"], ["a"], name="seq_bias"),
             helper.make_node("Relu", ["a"], ["y"], name="seq_relu")]
    m = _model(nodes, inits, _vi("x", ["N", t, d_in]), _vi("y", ["N", t, hidden]),
               layer_meta={"seq_dense": "dense", "seq_bias": "dense"})
    return m, {"dense": ("a", 2, "a", 2)}


def nhwc_net(rng, size=6, c_in=3, c_out=5):
    """Channels-last model: Transpose(NHWC->NCHW) -> Conv (no bias) -> Transpose back ->
    bias Add -> Relu, as channels-last exporters write it."""
    inits = [_init("k", rng.normal(0, 1, (c_out, c_in, 3, 3))), _init("bias", rng.normal(0, 0.1, c_out))]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "k"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["ct"], perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["ct", "bias"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    m = _model(nodes, inits, _vi("x", ["N", size, size, c_in]), _vi("y", ["N", size, size, c_out]),
               layer_meta={"conv": "conv2d"})
    return m, {"conv2d": ("a", 3, "a", 3)}


def residual_depthwise_net(rng, size=6, c=4):
    """Depthwise conv (group = C) -> Relu -> pointwise conv -> residual Add -> Relu."""
    inits = [_init("dw.w", rng.normal(0, 1, (c, 1, 3, 3))), _init("dw.b", rng.normal(0, 0.1, c)),
             _init("pw.w", rng.normal(0, 1, (c, c, 1, 1))), _init("pw.b", rng.normal(0, 0.1, c))]
    nodes = [helper.make_node("Conv", ["x", "dw.w", "dw.b"], ["d"], name="depthwise", group=c, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["dr"]),
             helper.make_node("Conv", ["dr", "pw.w", "pw.b"], ["p"], name="pointwise"),
             helper.make_node("Add", ["p", "x"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    m = _model(nodes, inits, _vi("x", ["N", c, size, size]), _vi("y", ["N", c, size, size]))
    # The pointwise conv feeds a residual Add, not a nonlinearity: no preact tap.
    return m, {"depthwise": ("d", 1, "d", 1), "pointwise": ("p", 1, None, None)}


def conv1d_net(rng, length=9, c_in=2, c_out=5):
    """Conv1d -> Sigmoid."""
    inits = [_init("w", rng.normal(0, 1, (c_out, c_in, 3))), _init("b", rng.normal(0, 0.1, c_out))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv1d", pads=[1, 1]),
             helper.make_node("Sigmoid", ["c"], ["y"])]
    m = _model(nodes, inits, _vi("x", ["N", c_in, length]), _vi("y", ["N", c_out, length]))
    return m, {"conv1d": ("c", 1, "c", 1)}


ALL = {"conv_bn_relu": conv_bn_relu_net, "matmul_add": matmul_add_net,
       "sequence_dense": sequence_dense_net, "nhwc": nhwc_net,
       "residual_depthwise": residual_depthwise_net, "conv1d": conv1d_net}


def input_shape(model) -> tuple[int, ...]:
    """Concrete input shape of a builder's model with batch size 1 replaced later."""
    return tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])


def with_outputs(model, names):
    """A copy of ``model`` that also outputs the tensors ``names``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    return m


def reweighted(model, rng, scale=1.0):
    """A copy of ``model`` with every float initializer redrawn (a later "epoch")."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, t in enumerate(m.graph.initializer):
        arr = numpy_helper.to_array(t)
        if "var" in t.name:
            new = rng.uniform(0.5, 1.5, arr.shape)
        else:
            new = rng.normal(0, scale, arr.shape)
        m.graph.initializer[i].CopyFrom(numpy_helper.from_array(new.astype(arr.dtype), t.name))
    return m
