"""ONNX from Keras checkpoints equals Keras's own forward pass: outputs and both taps.

For every model and checkpoint format, the ONNX architecture gets the SECOND epoch's weights
through ``KerasSource.weights``; onnxruntime's final output, every linear-op output
(``tap="linear"``) and every nonlinearity input (``tap="preact"``) are compared with Keras
sub-models on the in-memory epoch-2 model.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from nasprobe_keras import KerasSource, make_source
from tests.keras.conftest import FORMATS

LINEAR_OPS = {"Conv", "Gemm", "MatMul"}
NONLINEAR_OPS = {"Relu", "Sigmoid", "Tanh", "Elu", "Selu", "Gelu", "Softplus", "Softmax",
                 "LeakyRelu", "Clip", "HardSigmoid", "Softsign", "Exp", "Mish", "LogSoftmax"}
ACTIVATION_LAYERS = ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax")


def meta(node) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def find_taps(model: onnx.ModelProto) -> tuple[dict, dict]:
    """{layer: (value, channel_axis)} for linear taps and for preact taps, from the graph."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    consts = {i.name for i in model.graph.initializer}
    linear, preact = {}, {}
    for n in model.graph.node:
        m = meta(n)
        if n.op_type in LINEAR_OPS and n.input[1] in consts:
            out = n.output[0]
            if n.op_type == "MatMul":
                adds = [c for c in consumers.get(out, []) if c.op_type == "Add"
                        and set(c.input) - {out} <= consts]
                out = adds[0].output[0] if adds else out
            linear[m["nasprobe.layer"]] = (out, int(m["nasprobe.channel_axis"]))
        if n.op_type in NONLINEAR_OPS and m["nasprobe.layer"] not in preact:
            preact[m["nasprobe.layer"]] = (n.input[0], int(m["nasprobe.channel_axis"]))
    return linear, preact


def with_weights(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Copy of ``model`` whose initializers are replaced by ``values`` (names must exist)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {i.name: i for i in out.graph.initializer}
    assert set(values) <= set(names)
    for name, arr in values.items():
        assert tuple(names[name].dims) == arr.shape, name
        names[name].CopyFrom(numpy_helper.from_array(arr, name))
    return out


def run_with_outputs(model: onnx.ModelProto, x: np.ndarray, extra: list[str]) -> dict:
    """Run ``model`` on ``x`` with ``extra`` values exposed as outputs; {name: array}."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in extra:
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                None))
            have.add(name)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))


def layer_input(model: keras.Model, layer, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.Model(model.inputs[0], layer.input)(x))


def linear_reference(model: keras.Model, name: str, x: np.ndarray) -> np.ndarray:
    """Keras's linear output of layer ``name`` (bias included, no BN/activation), NHWC."""
    if name.endswith("/depthwise"):  # the depthwise half of a SeparableConv
        sep = model.get_layer(name.rsplit("/", 1)[0])
        ref = keras.layers.DepthwiseConv2D(sep.kernel_size, strides=sep.strides,
                                           padding=sep.padding, dilation_rate=sep.dilation_rate,
                                           depth_multiplier=sep.depth_multiplier,
                                           use_bias=False)
        z = layer_input(model, sep, x)
        ref.build(z.shape)
        ref.set_weights([sep.depthwise_kernel.numpy()])
        return keras.ops.convert_to_numpy(ref(z))
    layer = model.get_layer(name)
    cfg = dict(layer.get_config(), activation="linear", name=f"{name}_ref")
    ref = type(layer).from_config(cfg)
    z = layer_input(model, layer, x)
    ref.build(z.shape)
    ref.set_weights(layer.get_weights())
    return keras.ops.convert_to_numpy(ref(z))


def preact_reference(model: keras.Model, name: str, x: np.ndarray) -> np.ndarray:
    """Keras's input of the nonlinearity of layer ``name``."""
    layer = model.get_layer(name)
    if type(layer).__name__ in ACTIVATION_LAYERS:
        return layer_input(model, layer, x)
    return linear_reference(model, name, x)


@pytest.fixture(scope="module", params=FORMATS)
def probed(request, saved, probe_x):
    """Source, epoch-2 ONNX outputs and taps for one model and one checkpoint format."""
    name, model, ckpts = saved
    source = make_source(ckpts[request.param])
    arch = source.architecture()
    linear, preact = find_taps(arch)
    onnx2 = with_weights(arch, source.weights(ckpts[request.param][1]))
    values = run_with_outputs(onnx2, probe_x, [v for v, _ in [*linear.values(),
                                                              *preact.values()]])
    return source, arch, linear, preact, values


@pytest.fixture(scope="module")
def references(saved, probe_x):
    """Keras's linear and preact tensors of every layer on the epoch-2 model, computed once."""
    _, model, _ = saved
    names = [layer.name for layer in model.layers]
    names += [f"{n}/depthwise" for n in names
              if type(model.get_layer(n)).__name__ == "SeparableConv2D"]
    linear, preact = {}, {}
    for n in names:
        kind = type(model.get_layer(n.split("/")[0])).__name__
        if "Conv" in kind or kind == "Dense":
            linear[n] = linear_reference(model, n, probe_x)
        if kind in ACTIVATION_LAYERS or (("Conv" in kind or kind == "Dense") and "/" not in n
                                         and model.get_layer(n).get_config()["activation"]
                                         != "linear"):
            preact[n] = preact_reference(model, n, probe_x)
    return linear, preact


def to_channels_last(t: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(t, axis, -1)


def test_source_and_output(probed, saved, probe_x):
    source, arch, _, _, values = probed
    _, model, _ = saved
    assert isinstance(source, KerasSource) and source.framework == "keras"
    out = values[arch.graph.output[0].name]
    np.testing.assert_allclose(out, model.predict(probe_x, verbose=0), atol=1e-4, rtol=1e-4)


def test_linear_taps(probed, saved, references):
    _, _, linear, _, values = probed
    name, model, _ = saved
    expected = {"cnn": {"c1", "c2", "d1", "d2"},
                "bn_net": {"conv", "dw", "sep", "sep/depthwise", "out"},
                "seq_net": {"conv1d", "td", "head"}}[name]
    assert set(linear) == expected == set(references[0])
    for layer, (value, axis) in linear.items():
        got = to_channels_last(values[value], axis)
        want = references[0][layer]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=layer)


def test_preact_taps(probed, saved, references):
    _, _, _, preact, values = probed
    name, model, _ = saved
    expected = {"cnn": {"c1", "c2", "d1"},
                "bn_net": {"act", "dw", "sep", "out"},
                "seq_net": {"conv1d", "td", "leaky", "head"}}[name]
    assert set(preact) == expected == set(references[1])
    for layer, (value, axis) in preact.items():
        got = to_channels_last(values[value], axis)
        want = references[1][layer]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=layer)


def test_bn_not_folded(probed, saved):
    """The linear tap of a Conv followed by BN is the Conv's output, BN stays a node."""
    _, arch, linear, preact, _ = probed
    if saved[0] != "bn_net":
        return
    producers = {o: n for n in arch.graph.node for o in n.output}
    assert producers[linear["conv"][0]].op_type == "Conv"
    bn = producers[preact["act"][0]]
    assert bn.op_type == "BatchNormalization" and bn.input[0] == linear["conv"][0]


def test_weights_stable_names(probed, saved):
    """weights() gives every weight initializer, in the architecture's shapes."""
    source, arch, _, _, _ = probed
    _, model, ckpts = saved
    inits = {i.name: tuple(i.dims) for i in arch.graph.initializer}
    w = source.weights(source.checkpoints[1])
    assert len(w) == len(model.weights)
    for n, a in w.items():
        assert "/" in n and inits[n] == a.shape and a.dtype == np.float32
