"""Graph shapes other exporters write: quantised graphs, generic names, transposed or
left-hand weights, Conv1d/Conv3d, no bias — taps found and in-graph NAS checked against
the raw tensors (NAS in float64 numpy)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from nasprobe.errors import GraphError
from nasprobe.onnxgraph.layer_names import layer_name
from nasprobe.onnxgraph.nas_graph import build_probe_graph
from nasprobe.onnxgraph.taps import find_taps
from tests.core import onnx_models as om
from tests.core.test_onnx_prepare import nas64


def _f32(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _check_nas(model, x, taps):
    """In-graph NAS of every tap equals float64 NAS of the tensor exposed by hand."""
    tapped = build_probe_graph(model, taps)
    sess = ort.InferenceSession(tapped.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([t.output for t in taps], {model.graph.input[0].name: x})
    raw_model = om.with_outputs(model, [t.tensor for t in taps])
    raw = ort.InferenceSession(
        raw_model.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run([t.tensor for t in taps], {model.graph.input[0].name: x})
    for t, g, r in zip(taps, got, raw):
        np.testing.assert_allclose(g, nas64(r, t.channel_axis), atol=1e-5, rtol=0)


def _float_cnn(rng, path):
    inits = [
        _f32("conv1.weight", rng.normal(0, 0.5, (6, 3, 3, 3))),
        _f32("conv1.bias", rng.normal(0, 0.1, 6)),
        _f32("fc.weight", rng.normal(0, 0.5, (4, 6))),
        _f32("fc.bias", rng.normal(0, 0.1, 4)),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv1.weight", "conv1.bias"], ["c"], name="Conv_0", pads=[1] * 4
        ),
        helper.make_node("Relu", ["c"], ["r"], name="Relu_1"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="Pool_2"),
        helper.make_node("Flatten", ["g"], ["f"], name="Flatten_3"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="Gemm_4", transB=1),
    ]
    g = helper.make_graph(
        nodes, "cnn", [om._vi("x", ["N", 3, 8, 8])], [om._vi("y", ["N", 4])], inits
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return m


def _quantise(rng, tmp_path, fmt):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src, dst = tmp_path / "float.onnx", tmp_path / f"q_{fmt}.onnx"
    float_model = _float_cnn(rng, src)
    batches = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=getattr(QuantFormat, fmt),
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        per_channel=True,
    )
    return float_model, onnx.load(str(dst))


def test_qdq_graphs_tap_the_dequantised_linear_output(tmp_path):
    rng = np.random.default_rng(0)
    float_model, qdq = _quantise(rng, tmp_path, "QDQ")
    taps = find_taps(qdq, "linear")
    assert [(t.layer, t.kind) for t in taps] == [("conv1", "Conv"), ("fc", "Gemm")]
    assert taps[0].dequant is not None
    _check_nas(qdq, rng.normal(0, 1, (5, 3, 8, 8)).astype(np.float32), taps)
    # the dequantised filters are the float filters up to the int8 step
    weights = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    w_float = numpy_helper.to_array(float_model.graph.initializer[0]).reshape(6, -1)
    np.testing.assert_allclose(taps[0].filters(weights), w_float, atol=np.abs(w_float).max() / 100)
    # onnxruntime's quantiser folds the Relu into the output range: no nonlinearity is left
    with pytest.raises(GraphError, match="no preact tap"):
        find_taps(qdq, "preact")


def test_operator_quantised_graphs_are_refused_naming_the_operator(tmp_path):
    _, qop = _quantise(np.random.default_rng(1), tmp_path, "QOperator")
    assert "QLinearConv" in {n.op_type for n in qop.graph.node}
    with pytest.raises(GraphError, match=r"q\.onnx: .*QLinearConv is integer-quantised"):
        find_taps(qop, source="q.onnx")


def _node(op, name, weight):
    return helper.make_node(op, ["x", weight], ["y"], name=name)


@pytest.mark.parametrize(
    "node_name,weight,expected",
    [
        ("node_Conv_1", "conv2d_8/kernel:0", "conv2d_8"),
        ("Conv_0", "features.0.weight", "features.0"),
        ("", "encoder/block_1/conv/Conv2D/ReadVariableOp:0", "encoder/block_1/conv"),
        ("p2o.Conv.3", "conv2d_12.w_0_deepcopy_7", "conv2d_12"),
        ("Conv@0", "conv1_weights", "conv1"),
        ("Conv_7", "onnx::Conv_45", "Conv_7"),  # generic weight too: the node name
        ("Conv", "coefficient", "coefficient"),  # skl2onnx: the operator's type, then a count
        ("Conv1", "coefficient1", "coefficient1"),
        ("Conv12", "conv2d_3/kernel:0", "conv2d_3"),
        ("node_Conv_2", "kernel_oih_0", "node_Conv_2"),
        ("stem_conv", "features.0.weight", "stem_conv"),  # a real node name wins
        ("model/dense_1/Tensordot/MatMul", "w", "dense_1"),
        ("model/conv2d/StatefulPartitionedCall/Conv2D", "w", "conv2d"),
        # tf2onnx on Keras 3: the model is named functional_1, the op convolution
        ("StatefulPartitionedCall/functional_1/conv1d_1/convolution", "w", "conv1d_1"),
        ("StatefulPartitionedCall/sequential/conv2d/Conv2D", "w", "conv2d"),
        ("/model.2/cv1/conv/Conv", "w", "model.2.cv1.conv"),
        ("/features/features.0/Conv", "w", "features.0"),
    ],
)
def test_generic_names_fall_back_to_the_weight_name(node_name, weight, expected):
    assert layer_name(_node("Conv", node_name, weight), weight) == expected


def test_fallback_names_are_unique_and_stable():
    rng = np.random.default_rng(2)
    inits = [
        _f32("block/conv/kernel:0", rng.normal(0, 1, (3, 2, 3, 3))),
        _f32("w2", rng.normal(0, 1, (3, 3, 1, 1))),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["x", "block/conv/kernel:0"], ["a"], name="node_Conv_0", pads=[1] * 4
        ),
        helper.make_node("Conv", ["a", "w2"], ["b"], name="node_Conv_1"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="node_Conv_2"),
    ]
    g = helper.make_graph(nodes, "g", [om._vi("x", ["N", 2, 5, 5])], [om._vi("y", None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    names = [t.layer for t in find_taps(m)]
    assert names == ["block/conv", "w2", "w2#2"]
    assert names == [t.layer for t in find_taps(m)]


def test_exporter_layouts_give_the_right_channel_axis():
    """Conv3d and Conv1d without bias, MatMul with the weight on the left, Gemm with transA."""
    rng = np.random.default_rng(3)
    inits = [
        _f32("k3", rng.normal(0, 1, (4, 2, 2, 2, 2))),
        _f32("k1", rng.normal(0, 1, (5, 4, 3))),
        _f32("wl", rng.normal(0, 1, (6, 5))),
        _f32("wg", rng.normal(0, 1, (6, 3))),
        numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "k3"], ["c3"], name="conv3d"),  # (N, 4, 3, 3, 3)
        helper.make_node("Reshape", ["c3", "shape"], ["r"]),  # (N, 4, 27)
        helper.make_node("Conv", ["r", "k1"], ["c1"], name="conv1d"),  # (N, 5, 25)
        helper.make_node("MatMul", ["wl", "c1"], ["left"], name="left_dense"),  # (N, 6, 25)
        helper.make_node("Relu", ["left"], ["lr"]),
        helper.make_node("ReduceMean", ["lr"], ["m"], axes=[2], keepdims=0),  # (N, 6)
        helper.make_node("Transpose", ["m"], ["mt"], perm=[1, 0]),  # (6, N)
        helper.make_node("Gemm", ["mt", "wg"], ["y"], name="gemm_ta", transA=1),
    ]  # (N, 3)
    g = helper.make_graph(nodes, "g", [om._vi("x", ["N", 2, 4, 4, 4])], [om._vi("y", None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    taps = {t.layer: t for t in find_taps(m)}
    assert list(taps) == ["conv3d", "conv1d", "left_dense", "gemm_ta"]
    assert (taps["conv3d"].channel_axis, taps["conv3d"].channels, taps["conv3d"].rank) == (1, 4, 5)
    assert (taps["conv1d"].channel_axis, taps["conv1d"].channels, taps["conv1d"].bias) == (
        1,
        5,
        None,
    )
    assert (taps["left_dense"].channel_axis, taps["left_dense"].channels) == (1, 6)
    assert (taps["gemm_ta"].channel_axis, taps["gemm_ta"].channels) == (1, 3)
    w = numpy_helper.to_array(inits[2])
    np.testing.assert_array_equal(taps["left_dense"].filters({"wl": w}), w)
    _check_nas(m, rng.normal(0, 1, (6, 2, 4, 4, 4)).astype(np.float32), list(taps.values()))
