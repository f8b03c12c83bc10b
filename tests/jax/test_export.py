"""The export itself: one jax2onnx graph whose initializers, filled per epoch by the source,
reproduce JAX's forward pass; module paths as layer names; a folded BatchNorm is refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from nasprobe.contract import Checkpoint, SourceOptions
from nasprobe.errors import GraphError
from nasprobe.onnxgraph.taps import find_taps
from nasprobe_jax.export import label_and_verify
from nasprobe_jax.source import JaxSource

from .conftest import EPOCHS, LINEAR, MODEL
from .models import small_cnn


@pytest.fixture(scope="module")
def source(jax_run):
    ckpts = [Checkpoint(jax_run["orbax"] / f"epoch_{e:03d}", e) for e in EPOCHS]
    src = JaxSource(ckpts, SourceOptions(model=MODEL))
    src.architecture()
    return src, ckpts


def _run(model: onnx.ModelProto, weights: dict, x: np.ndarray) -> np.ndarray:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_each_epochs_weights_reproduce_jax(source, jax_run):
    src, ckpts = source
    model, x = src.architecture(), jax_run["x"]
    for ckpt in ckpts:
        got = _run(model, src.weights(ckpt), x)
        want = np.asarray(jax_run["nets"][ckpt.epoch](x))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(ckpt.epoch))


def test_layers_and_batchnorm_nodes(source):
    src, _ = source
    model = src.architecture()
    assert src.layers() == list(LINEAR)
    assert [t.layer for t in find_taps(model, "linear")] == list(LINEAR)
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 2
    names = {i.name for i in model.graph.initializer}
    assert not any(name.startswith("conv1") for name in names)  # generic names, mapped


def test_a_folded_batchnorm_is_refused(source):
    src, _ = source
    exported = src.exported()
    graph = onnx.GraphProto()
    graph.CopyFrom(exported.model.graph)
    bn = next(n for n in graph.node if n.op_type == "BatchNormalization")
    for node in graph.node:  # bypass it, as a folding exporter would
        for i, name in enumerate(node.input):
            if name == bn.output[0]:
                node.input[i] = bn.input[0]
    graph.node.remove(bn)
    with pytest.raises(GraphError, match="BatchNorm 'bn1'"):
        label_and_verify(small_cnn(), graph, exported.layout, "test")
