"""Taps found in hand-built ONNX graphs, and in-graph NAS against numpy on the raw tensors."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from nasprobe.errors import GraphError
from nasprobe.measures.nas import nas
from nasprobe.onnxgraph.nas_graph import build_probe_graph
from nasprobe.onnxgraph.taps import find_taps
from tests.core import onnx_models as om


def _run(model, x, names):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, {model.graph.input[0].name: x})))


def _x(model, rng, n=5, scale=1.0):
    return (rng.normal(0, scale, (n, *om.input_shape(model)))).astype(np.float32)


@pytest.mark.parametrize("name", sorted(om.ALL))
@pytest.mark.parametrize("tap", ["linear", "preact"])
def test_taps_and_in_graph_nas_match_numpy(name, tap):
    rng = np.random.default_rng(1)
    model, expected = om.ALL[name](rng)
    taps = find_taps(model, tap=tap)
    want = {layer: (e[0], e[1]) if tap == "linear" else (e[2], e[3])
            for layer, e in expected.items()}
    want = {k: v for k, v in want.items() if v[0] is not None}
    assert {t.layer: (t.tensor, t.channel_axis) for t in taps} == want
    x = _x(model, rng)
    probe_graph = build_probe_graph(model, taps)
    got = _run(probe_graph, x, [t.output for t in taps])
    raw = _run(om.with_outputs(model, [t.tensor for t in taps]), x, [t.tensor for t in taps])
    for t in taps:
        ref = nas(raw[t.tensor].astype(np.float64), axis=t.channel_axis)
        assert got[t.output].shape == ref.shape
        np.testing.assert_allclose(got[t.output], ref, atol=1e-5, rtol=0)


def test_linear_tap_is_before_batchnorm_and_preact_after():
    rng = np.random.default_rng(2)
    model, _ = om.conv_bn_relu_net(rng)
    lin = {t.layer: t for t in find_taps(model, "linear")}
    pre = {t.layer: t for t in find_taps(model, "preact")}
    assert lin["conv1"].tensor == "c1" and pre["conv1"].tensor == "b1"
    assert "fc" in lin and "fc" not in pre  # logits reach no nonlinearity
    assert [t.depth for t in lin.values()] == [0, 1, 2]


def test_exclude_bias_subtracts_the_bias():
    rng = np.random.default_rng(3)
    model, _ = om.conv_bn_relu_net(rng)
    taps = find_taps(model, "linear")
    x = _x(model, rng)
    got = _run(build_probe_graph(model, taps, exclude_bias=True), x, [t.output for t in taps])
    raw = _run(om.with_outputs(model, [t.tensor for t in taps]), x, [t.tensor for t in taps])
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for t in taps:
        shape = [1] * raw[t.tensor].ndim
        shape[t.channel_axis] = t.channels
        ref = nas(raw[t.tensor].astype(np.float64) - inits[t.bias].reshape(shape), axis=t.channel_axis)
        np.testing.assert_allclose(got[t.output], ref, atol=1e-5)
    with pytest.raises(GraphError, match="exclude-bias"):
        build_probe_graph(model, find_taps(model, "preact"), exclude_bias=True)


def test_bias_add_behind_transposes_belongs_to_the_layer():
    model, _ = om.nhwc_net(np.random.default_rng(4))
    (t,) = find_taps(model, "linear")
    assert (t.tensor, t.channel_axis, t.bias) == ("a", 3, "bias")


def test_large_inputs_give_finite_nas():
    rng = np.random.default_rng(5)
    model, _ = om.conv1d_net(rng)
    taps = find_taps(model)
    x = _x(model, rng, scale=1e4)
    got = _run(build_probe_graph(model, taps), x, [taps[0].output])[taps[0].output]
    raw = _run(om.with_outputs(model, [taps[0].tensor]), x, [taps[0].tensor])[taps[0].tensor]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, nas(raw.astype(np.float64), axis=1), atol=1e-5)


def test_layers_regex_and_errors():
    model, _ = om.conv_bn_relu_net(np.random.default_rng(6))
    assert [t.layer for t in find_taps(model, layers="^conv")] == ["conv1", "conv2"]
    with pytest.raises(GraphError, match="matches none.*conv1, conv2, fc"):
        find_taps(model, layers="nothing", source="m.onnx")
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    g = helper.make_graph(nodes, "g", [om._vi("x", ["N", 3])], [om._vi("y", ["N", 3])])
    plain = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(GraphError, match=r"m\.onnx: no linear tap.*operators found: Relu"):
        find_taps(plain, source="m.onnx")


def test_layer_names_from_torch_scopes_and_old_exporter():
    from nasprobe.onnxgraph.layer_names import layer_name

    n = helper.make_node("Conv", ["x", "w"], ["y"], name="node_Conv_3")
    p = n.metadata_props.add()
    p.key, p.value = "pkg.torch.onnx.name_scopes", "['', 'features', 'features.0', 'conv2d']"
    p = n.metadata_props.add()
    p.key = "pkg.torch.onnx.class_hierarchy"
    p.value = "['m.Net', 'torch.nn.Sequential', 'torch.nn.Conv2d', 'aten.conv2d.default']"
    assert layer_name(n) == "features.0"
    assert layer_name(helper.make_node("Gemm", ["a"], ["b"], name="/classifier/fc1/Gemm")) == "classifier.fc1"
    assert layer_name(helper.make_node("Gemm", ["a"], ["b"], name="dense_3")) == "dense_3"


def test_old_opset_reductions():
    rng = np.random.default_rng(7)
    model, _ = om.conv1d_net(rng)
    model.opset_import[0].version = 13
    taps = find_taps(model)
    x = _x(model, rng)
    got = _run(build_probe_graph(model, taps), x, [taps[0].output])[taps[0].output]
    raw = _run(om.with_outputs(model, [taps[0].tensor]), x, [taps[0].tensor])[taps[0].tensor]
    np.testing.assert_allclose(got, nas(raw.astype(np.float64), axis=1), atol=1e-5)


def test_swish_written_out_is_a_nonlinearity():
    rng = np.random.default_rng(8)
    inits = [om._init("w", rng.normal(0, 1, (4, 3)))]
    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"], name="fc", transB=1),
             helper.make_node("Sigmoid", ["g"], ["s"]),
             helper.make_node("Mul", ["g", "s"], ["y"])]
    model = om._model(nodes, inits, om._vi("x", ["N", 3]), om._vi("y", ["N", 4]))
    (t,) = find_taps(model, "preact")
    assert t.tensor == "g"


def _big_reshape_net(rng):
    """Conv (64 filters: 1,728 weights) → Reshape by a shape initializer → MatMul 4096×10."""
    x = helper.make_tensor_value_info("x", 1, [None, 3, 8, 8])
    y = helper.make_tensor_value_info("y", 1, None)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (64, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
             numpy_helper.from_array(rng.normal(0, 1, (4096, 10)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("source", ["big_reshape", "mtcnn_pnet.onnx", "mtcnn_rnet.onnx",
                                    "magika_standard_v1.onnx"])
def test_shape_inference_on_the_weightless_view_infers_what_the_full_model_does(source):
    """Shape inference runs on a view whose large initializers keep only type and dims (a
    ResNet-50's in a tenth of the time); every inferred type equals the full model's, and
    the model itself is left as it was."""
    from pathlib import Path

    import onnx
    from onnx import shape_inference

    from nasprobe.onnxgraph.index import SHAPE_VALUES, shape_view

    if source == "big_reshape":
        model = _big_reshape_net(np.random.default_rng(0))
    else:
        model = onnx.load(str(Path(__file__).parent / "data" / "thirdparty" / source))
    before = model.SerializeToString()
    view = shape_view(model)
    assert model.SerializeToString() == before
    bare_view, bare_model = onnx.ModelProto(), onnx.ModelProto()  # all but the initializers
    bare_view.CopyFrom(view)
    bare_model.CopyFrom(model)
    for m in (bare_view, bare_model):
        del m.graph.initializer[:]
    assert bare_view.SerializeToString() == bare_model.SerializeToString()
    assert [t.name for t in view.graph.initializer] == [t.name for t in model.graph.initializer]
    stripped = [t for t in view.graph.initializer if np.prod(t.dims) > SHAPE_VALUES]
    assert stripped and all(not t.raw_data and not t.float_data for t in stripped)
    full = shape_inference.infer_shapes(model, strict_mode=False).graph
    light = shape_inference.infer_shapes(view, strict_mode=False).graph
    for part in ("value_info", "output"):
        want = {v.name: v.type.SerializeToString() for v in getattr(full, part)}
        assert want and {v.name: v.type.SerializeToString() for v in getattr(light, part)} == want
