"""ONNX external data is read only from the checkpoint's folder, for every tensor that can carry
it: initializers, sparse initializers, Constant nodes and other tensor attributes, subgraphs of
If/Loop/Scan, and model-local functions. A location outside (``..``, absolute, a symbolic link
to elsewhere) is refused with exit 2 naming the file and the tensor; an existing store is left
unchanged; data inside the folder is read as before."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nasprobe
from tests.core import onnx_models as om
from tests.hostile import assert_refused, make_store, probe, tree_digest

SECRET = np.arange(4, dtype=np.float32)


def external(name: str, location: str) -> TensorProto:
    """A float tensor (4,) whose bytes are said to lie in ``location``."""
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def constant(output: str, tensor: TensorProto) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], name=f"const_{output}", value=tensor)


def hostile_model(kind: str, location: str) -> onnx.ModelProto:
    """The conv test model (valid, probed as usual) plus one tensor with external data at
    ``location``, placed where ``kind`` says; the extra nodes' outputs are unused."""
    model, _ = om.conv_bn_relu_net(np.random.default_rng(0))
    g = model.graph
    ext = external("stolen", location)
    if kind == "initializer":
        g.initializer.append(ext)
    elif kind == "sparse_initializer":
        indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "stolen_idx")
        g.sparse_initializer.append(helper.make_sparse_tensor(ext, indices, [8]))
    elif kind == "constant_node":
        g.node.append(constant("unused", ext))
    elif kind == "tensors_attribute":
        node = helper.make_node("Identity", ["x"], ["unused"], name="tagged")
        node.attribute.append(helper.make_attribute("extra", [ext]))
        g.node.append(node)
    elif kind in ("if_branch", "loop_body"):
        body_out = helper.make_tensor_value_info("b_out", TensorProto.FLOAT, [4])
        body = helper.make_graph([constant("b_out", ext)], "body", [], [body_out])
        cond = numpy_helper.from_array(np.array(True), "cond")
        g.initializer.append(cond)
        if kind == "if_branch":
            other = helper.make_graph([constant("b_out", numpy_helper.from_array(SECRET))],
                                      "else", [], [body_out])
            g.node.append(helper.make_node("If", ["cond"], ["unused"], name="branch",
                                           then_branch=body, else_branch=other))
        else:
            loop_body = helper.make_graph(
                [constant("b_out", ext), helper.make_node("Identity", ["c_in"], ["c_out"])],
                "loop", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                         helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])],
                [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), body_out])
            trip = numpy_helper.from_array(np.array(1, np.int64), "trip")
            g.initializer.append(trip)
            g.node.append(helper.make_node("Loop", ["trip", "cond"], ["unused"], name="loop",
                                           body=loop_body))
    elif kind == "function":
        fn = helper.make_function("local", "leak", [], ["o"], [constant("o", ext)],
                                  [helper.make_opsetid("", om.OPSET)])
        model.functions.append(fn)
        model.opset_import.append(helper.make_opsetid("local", 1))
        g.node.append(helper.make_node("leak", [], ["unused"], domain="local", name="leak"))
    else:
        raise ValueError(kind)
    return model


KINDS = ["initializer", "sparse_initializer", "constant_node", "tensors_attribute",
         "if_branch", "loop_body", "function"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("external")
    store, probe_path = make_store(tmp)
    (tmp / "secret.bin").write_bytes(SECRET.tobytes())
    return tmp, store, probe_path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(world, kind, how):
    tmp, store, probe_path = world
    run = tmp / f"{kind}_{how}"
    run.mkdir()
    location = {"dotdot": "../secret.bin", "absolute": str(tmp / "secret.bin"),
                "symlink": "inside.data"}[how]
    if how == "symlink":
        (run / "inside.data").symlink_to(tmp / "secret.bin")
    path = run / "epoch_001.onnx"
    onnx.save(hostile_model(kind, location), str(path))
    before = tree_digest(store)
    res = probe(run, "--probe", probe_path, "--out", store)
    assert_refused(res, path, "'stolen'", "outside its folder", "refused")
    assert tree_digest(store) == before


@pytest.mark.parametrize("problem, fragment", [
    ("missing", "missing or not a regular file"),
    ("beyond", "beyond the end"),
])
def test_bad_external_data_inside_the_folder_is_named(world, problem, fragment):
    tmp, store, probe_path = world
    run = tmp / f"inside_{problem}"
    run.mkdir()
    if problem == "beyond":
        (run / "w.data").write_bytes(b"\0" * 8)  # 8 bytes; the tensor wants 16
    path = run / "epoch_001.onnx"
    onnx.save(hostile_model("constant_node", "w.data"), str(path))
    before = tree_digest(store)
    res = probe(run, "--probe", probe_path, "--out", store)
    assert_refused(res, path, "'stolen'", fragment)
    assert tree_digest(store) == before


def test_external_data_inside_the_folder_is_read(tmp_path, labelled_probe):
    """A checkpoint saved with external data probes exactly like the same one without."""
    model, _ = om.conv_bn_relu_net(np.random.default_rng(5))
    (tmp_path / "inline").mkdir()
    (tmp_path / "ext").mkdir()
    onnx.save(model, str(tmp_path / "inline" / "epoch_001.onnx"))
    onnx.save(model, str(tmp_path / "ext" / "epoch_001.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.data", size_threshold=0)
    assert (tmp_path / "ext" / "weights.data").stat().st_size > 0
    a = nasprobe.open_store(nasprobe.probe([tmp_path / "inline"], probe=labelled_probe,
                                           out=tmp_path / "a.zarr", progress=False))
    b = nasprobe.open_store(nasprobe.probe([tmp_path / "ext"], probe=labelled_probe,
                                           out=tmp_path / "b.zarr", progress=False))
    np.testing.assert_array_equal(a["nas_median"].values, b["nas_median"].values)
