"""Layer names that collide or are paths: a repeated name gets a ``#N`` suffix that is no other
layer's real name, and every layer has its own heatmap group (``a/b`` and ``a_b`` apart, ``..``
and ``__x`` no paths or reserved names), named back by its ``layer`` attribute."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import nasprobe
from nasprobe.contract import unique_layer_name
from nasprobe.store.layout import group_name
from tests.hostile import probe

NAMES = ["conv", "conv", "conv#2", "a/b", "a_b", "..", "__x", "50%/x"]


def chain(names) -> onnx.ModelProto:
    """MatMul + Relu layers on (N, 4) inputs, each tagged with a layer name from ``names``."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, name in enumerate(names):
        inits.append(numpy_helper.from_array(rng.normal(0, 1, (4, 4)).astype(np.float32), f"w{i}"))
        node = helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}")
        meta = node.metadata_props.add()
        meta.key, meta.value = "nasprobe.layer", name
        nodes += [node, helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        prev = f"r{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", 4])],
                              initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m


def test_unique_layer_name():
    used = {"conv"}
    assert unique_layer_name("conv", used, {"conv", "conv#2"}) == "conv#3"
    assert unique_layer_name("x", used) == "x"


def test_colliding_and_path_like_layer_names(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    onnx.save(chain(NAMES), str(run / "epoch_001.onnx"))
    np.save(tmp_path / "p.npy", np.random.default_rng(1).normal(0, 1, (5, 4)).astype(np.float32))
    res = probe(run, "--probe", tmp_path / "p.npy", "--out", tmp_path / "s.zarr")
    assert res.exit_code == 0, (res.output, res.exception)
    dt = nasprobe.open_store(tmp_path / "s.zarr")
    layers = [str(v) for v in dt.to_dataset()["layer"].values]
    assert layers == ["conv", "conv#3", "conv#2", "a/b", "a_b", "..", "__x", "50%/x"]
    groups = dt["heatmaps"].children
    assert len(groups) == len(layers)
    assert sorted(str(g.attrs["layer"]) for g in groups.values()) == sorted(layers)
    assert set(groups) == {group_name(name) for name in layers}
    assert all(not g.startswith((".", "__")) and "/" not in g for g in groups)
    fig = dt.nas.heatmaps()  # the figures find every layer's group: one row of cells each
    (cells,) = [a for a in fig.axes if a.get_label() == "nas"]
    assert [t.get_text() for t in cells.get_yticklabels()] == layers
    (image,) = cells.get_images()
    pixels = np.ma.filled(image.get_array(), np.nan)  # a band of pixel rows per layer
    bands = pixels.reshape(len(layers), -1)
    assert np.isfinite(bands).any(axis=1).all()  # every layer's band shows its map
