"""Third-party ONNX files made probe-ready: old opsets, half precision, constants as weights,
integer inputs, functions, control flow — each probed end to end and checked against a float64
numpy forward pass on the same weights."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import nasprobe
from nasprobe.cli import main
from nasprobe.errors import GraphError
from nasprobe.job.probe_job import run_info
from nasprobe.onnxgraph.prepare import prepare_model
from nasprobe.onnxgraph.taps import find_taps, untappable


def nas64(a, axis):
    """NAS in float64 numpy, straight from the definition (logsumexp form of the entropy)."""
    a = np.moveaxis(np.asarray(a, np.float64), axis, -1)
    z = a - a.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    h = np.log(np.exp(z).sum(axis=-1)) - (p * z).sum(axis=-1)
    return 1.0 - np.exp(h) / a.shape[-1]


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _mlp(rng, opset, dtype=np.float32, elem=TensorProto.FLOAT, names=("fc1", "fc2")):
    """Gemm -> Relu -> Squeeze/Unsqueeze (axes attribute before opset 13) -> Gemm."""
    w1, b1 = rng.normal(0, 1, (6, 5)), rng.normal(0, 0.1, 6)
    w2, b2 = rng.normal(0, 1, (3, 6)), rng.normal(0, 0.1, 3)
    inits = [
        numpy_helper.from_array(w1.astype(dtype), "w1"),
        numpy_helper.from_array(b1.astype(dtype), "b1"),
        numpy_helper.from_array(w2.astype(dtype), "w2"),
        numpy_helper.from_array(b2.astype(dtype), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name=names[0], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Unsqueeze", ["r"], ["u"], axes=[2])
        if opset < 13
        else helper.make_node("Unsqueeze", ["r", "ax"], ["u"]),
        helper.make_node("Squeeze", ["u"], ["s"], axes=[2])
        if opset < 13
        else helper.make_node("Squeeze", ["u", "ax"], ["s"]),
        helper.make_node("Gemm", ["s", "w2", "b2"], ["y"], name=names[1], transB=1),
    ]
    if opset >= 13:
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "ax"))
    g = helper.make_graph(
        nodes, "mlp", [_vi("x", ["N", 5], elem)], [_vi("y", ["N", 3], elem)], inits
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    weights = {
        k: np.asarray(v, dtype).astype(np.float64)
        for k, v in {"w1": w1, "b1": b1, "w2": w2, "b2": b2}.items()
    }
    return m, weights


def _mlp_taps(weights, x):
    h = x @ weights["w1"].T + weights["b1"]
    return {"fc1": h, "fc2": np.maximum(h, 0) @ weights["w2"].T + weights["b2"]}


def _probe(tmp_path, model, x, name="run"):
    folder = tmp_path / name
    folder.mkdir()
    onnx.save(model, str(folder / "epoch_001.onnx"))
    np.save(tmp_path / "probe.npy", x)
    out = tmp_path / f"{name}.zarr"
    nasprobe.probe([folder], probe=tmp_path / "probe.npy", out=out, progress=False)
    return nasprobe.open_store(out), run_info(out)[name]


def _check(ds, refs):
    assert list(ds.layer.values) == list(refs)
    for layer, t in refs.items():
        s = nas64(t, axis=1)
        got = ds.sel(layer=layer).isel(run=0, epoch=0)
        assert abs(float(got.nas_median) - np.median(s)) < 1e-4
        assert abs(float(got.nas_mean) - s.mean()) < 1e-4


@pytest.mark.parametrize("opset", [7, 9, 11, 12])
def test_old_opsets_are_upgraded_and_probed(tmp_path, opset):
    rng = np.random.default_rng(opset)
    model, weights = _mlp(rng, opset)
    x = rng.normal(0, 1, (16, 5)).astype(np.float32)
    ds, info = _probe(tmp_path, model, x)
    _check(ds, _mlp_taps(weights, x.astype(np.float64)))
    assert (info["opset_original"], info["opset"]) == (opset, 13)
    shown = CliRunner().invoke(main, ["info", str(tmp_path / "run.zarr")])
    assert f"ONNX opset {opset} upgraded to 13" in shown.output


def test_an_impossible_upgrade_exits_2_naming_file_operator_and_opset(tmp_path):
    rng = np.random.default_rng(0)
    model, _ = _mlp(rng, 8)
    model.graph.node.insert(0, helper.make_node("ImageScaler", ["x"], ["xs"], scale=2.0))
    model.graph.node[1].input[0] = "xs"
    (tmp_path / "r").mkdir()
    onnx.save(model, str(tmp_path / "r" / "epoch_1.onnx"))
    np.save(tmp_path / "p.npy", np.zeros((2, 5), np.float32))
    res = CliRunner().invoke(
        main,
        [
            "probe",
            str(tmp_path / "r"),
            "--probe",
            str(tmp_path / "p.npy"),
            "--out",
            str(tmp_path / "s.zarr"),
        ],
    )
    assert res.exit_code == 2
    assert "epoch_1.onnx" in res.output and "ImageScaler" in res.output and "opset 8" in res.output


@pytest.mark.parametrize(
    "elem,dtype", [(TensorProto.FLOAT16, np.float16), (TensorProto.BFLOAT16, None)]
)
def test_half_precision_weights_are_probed_in_float32(tmp_path, elem, dtype):
    rng = np.random.default_rng(3)
    if dtype is None:
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    model, weights = _mlp(rng, 17, dtype=dtype, elem=elem)
    x = rng.normal(0, 1, (12, 5)).astype(np.float32)
    ds, info = _probe(tmp_path, model, x)
    # the weights as stored (rounded to half), the float32 probe as it is, the forward in float64
    _check(ds, _mlp_taps(weights, x.astype(np.float64)))
    assert info["weights_dtype"] == ("float16" if elem == TensorProto.FLOAT16 else "bfloat16")
    assert info["compute_dtype"] == "float32"
    shown = CliRunner().invoke(main, ["info", str(tmp_path / "run.zarr")])
    assert f"weights stored in {info['weights_dtype']}, run in float32" in shown.output


def test_integer_input_gets_a_cast_and_constants_become_swappable_weights(tmp_path):
    """Weights stored as Constant nodes (older paddle2onnx) are swapped per epoch; an int64
    input is fed through a Cast from the float32 probe set."""
    rng = np.random.default_rng(4)
    runs = []
    for _epoch in (1, 2):
        w = rng.normal(0, 1, (4, 3))
        nodes = [
            helper.make_node(
                "Constant", [], ["w"], value=numpy_helper.from_array(w.astype(np.float32))
            ),
            helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node("Gemm", ["xf", "w"], ["y"], name="Gemm_0", transB=1),
        ]
        g = helper.make_graph(
            nodes, "g", [_vi("x", ["N", 3], TensorProto.INT64)], [_vi("y", ["N", 4])]
        )
        runs.append((helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), w))
    folder = tmp_path / "r"
    folder.mkdir()
    for epoch, (m, _) in zip((1, 2), runs):
        onnx.save(m, str(folder / f"epoch_{epoch}.onnx"))
    x = rng.integers(-5, 6, (10, 3)).astype(np.float32)
    np.save(tmp_path / "p.npy", x)
    nasprobe.probe([folder], probe=tmp_path / "p.npy", out=tmp_path / "s.zarr", progress=False)
    ds = nasprobe.open_store(tmp_path / "s.zarr")
    for i, (_, w) in enumerate(runs):
        s = nas64(x.astype(np.float64) @ w.T, axis=1)
        assert abs(float(ds.nas_mean.isel(run=0, epoch=i, layer=0)) - s.mean()) < 1e-4
    info = run_info(tmp_path / "s.zarr")["r"]
    assert info["input_dtype"] == "int64" and info["constants_as_initializers"] == 1


def test_control_flow_taps_are_refused_the_rest_probed():
    rng = np.random.default_rng(5)
    inner_w = numpy_helper.from_array(rng.normal(0, 1, (4, 4)).astype(np.float32), "inner_w")
    then = helper.make_graph(
        [helper.make_node("Gemm", ["h", "inner_w"], ["t"], name="head_gemm")],
        "then",
        [],
        [_vi("t", ["N", 4])],
        [inner_w],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["e"])], "else", [], [_vi("e", ["N", 4])]
    )
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["h"], name="body", transB=1),
        helper.make_node("If", ["flag"], ["y"], name="switch", then_branch=then, else_branch=other),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [_vi("x", ["N", 3])],
        [_vi("y", ["N", 4])],
        [
            numpy_helper.from_array(rng.normal(0, 1, (4, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array(True), "flag"),
        ],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert [t.layer for t in find_taps(model)] == ["body"]
    assert "inside If 'switch'" in untappable(model)["head_gemm"]
    assert "head_gemm" in prepare_model(model, "m.onnx").notes["not_probed"]
    with pytest.raises(GraphError, match="head_gemm: Gemm inside If 'switch'.*control flow"):
        find_taps(model, layers="head", source="m.onnx")


def test_local_functions_are_inlined_and_their_layers_probed():
    rng = np.random.default_rng(6)
    fn = helper.make_function(
        "custom",
        "Block",
        ["a", "k"],
        ["b"],
        [
            helper.make_node("Conv", ["a", "k"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["b"]),
        ],
        [helper.make_opsetid("", 17)],
    )
    nodes = [helper.make_node("Block", ["x", "k"], ["y"], domain="custom", name="block")]
    g = helper.make_graph(
        nodes,
        "g",
        [_vi("x", ["N", 2, 5, 5])],
        [_vi("y", None)],
        [
            numpy_helper.from_array(
                rng.normal(0, 1, (3, 2, 3, 3)).astype(np.float32), "block1/kernel:0"
            )
        ],
    )
    nodes[0].input[1] = "block1/kernel:0"
    g = helper.make_graph(
        nodes, "g", [_vi("x", ["N", 2, 5, 5])], [_vi("y", None)], list(g.initializer)
    )
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
        functions=[fn],
    )
    prepared = prepare_model(model, "m.onnx")
    assert prepared.notes["functions_inlined"] == 1
    (t,) = find_taps(prepared.model, "preact")
    assert t.kind == "Conv" and t.channels == 3


def test_multi_input_models_are_refused_clearly():
    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "g",
        [_vi("a", [1, 2]), _vi("b", [1, 2])],
        [_vi("c", [1, 2])],
    )
    with pytest.raises(GraphError, match=r"m\.onnx: has 2 inputs \(a, b\)"):
        prepare_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), "m.onnx")


def test_provenance_is_json(tmp_path):
    """The run's provenance survives a JSON round trip unchanged and says what was probed."""
    rng = np.random.default_rng(7)
    model, _ = _mlp(rng, 11)
    _, info = _probe(tmp_path, model, rng.normal(0, 1, (4, 5)).astype(np.float32))
    assert json.loads(json.dumps(info)) == info
    assert info["framework"] == "onnx" and info["checkpoints"] == 1
    assert info["source"] == str(tmp_path / "run") and info["skipped"] == {}
    assert info["provider"] == "CPUExecutionProvider"


def test_scalar_initializers_survive_the_weight_swap(tmp_path):
    """A 0-d initializer (an index, as torch exports write for shape arithmetic) keeps its
    rank when each epoch's weights are swapped in."""
    rng = np.random.default_rng(8)
    w = rng.normal(0, 1, (4, 3))
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "i0"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
        numpy_helper.from_array(np.array([-1], np.int64), "m1"),
        numpy_helper.from_array(w.astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"]),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "m1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["xr"]),
        helper.make_node("Gemm", ["xr", "w"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "g", [_vi("x", ["N", 3])], [_vi("y", ["N", 4])], inits)
    x = rng.normal(0, 1, (6, 3)).astype(np.float32)
    ds, _ = _probe(tmp_path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), x)
    _check(ds, {"fc": x.astype(np.float64) @ w.T})


def test_fixed_batch_sequence_taps_keep_every_time_step(tmp_path):
    """A batch-1 sequence model that flattens (1, T, C) to (T, C) before its dense layer: every
    time step counts, not only the first row of each batch."""
    rng = np.random.default_rng(9)
    w = rng.normal(0, 1, (5, 4))
    inits = [
        numpy_helper.from_array(np.array([3, 4], np.int64), "shape"),
        numpy_helper.from_array(w.astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["seq"]),
        helper.make_node("Gemm", ["seq", "w"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "g", [_vi("x", [1, 3, 4])], [_vi("y", [3, 5])], inits)
    x = rng.normal(0, 1, (4, 3, 4)).astype(np.float32)
    ds, _ = _probe(tmp_path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), x)
    _check(ds, {"fc": x.reshape(-1, 4).astype(np.float64) @ w.T})


def test_two_heads_and_dynamic_spatial_dims(tmp_path):
    """A fully convolutional net with dynamic height and width and two heads (a PReLU
    trunk, a LeakyRelu head and a plain logits head): every layer is probed, and the heatmaps
    take the probe images' map size."""
    rng = np.random.default_rng(10)
    k = {
        n: rng.normal(0, 1, s).astype(np.float32).astype(np.float64)
        for n, s in [("trunk", (4, 2, 3, 3)), ("head_a", (3, 4, 1, 1)), ("head_b", (5, 4, 3, 3))]
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), f"{n}/kernel:0") for n, v in k.items()]
    inits.append(numpy_helper.from_array(np.full((4, 1, 1), 0.2, np.float32), "slope"))
    nodes = [
        helper.make_node("Conv", ["x", "trunk/kernel:0"], ["t"], name="node_Conv_0"),
        helper.make_node("PRelu", ["t", "slope"], ["tr"]),
        helper.make_node("Conv", ["tr", "head_a/kernel:0"], ["a"], name="node_Conv_1"),
        helper.make_node("LeakyRelu", ["a"], ["ya"]),
        helper.make_node(
            "Conv", ["tr", "head_b/kernel:0"], ["yb"], name="node_Conv_2", pads=[1] * 4
        ),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [_vi("x", ["N", 2, "H", "W"])],
        [_vi("ya", ["N", 3, None, None]), _vi("yb", ["N", 5, None, None])],
        inits,
    )
    x = rng.normal(0, 1, (3, 2, 7, 11)).astype(np.float32)
    ds, _ = _probe(tmp_path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), x)

    def conv(a, w, pad=0):
        a = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        kh, kw = w.shape[2:]
        h, wd = a.shape[2] - kh + 1, a.shape[3] - kw + 1
        cols = np.stack([a[:, :, i : i + h, j : j + wd] for i in range(kh) for j in range(kw)], -1)
        return np.einsum("nchwk,dck->ndhw", cols, w.reshape(*w.shape[:2], -1))

    t = conv(x.astype(np.float64), k["trunk"])
    tr = np.where(t > 0, t, 0.2 * t)
    refs = {"trunk": t, "head_a": conv(tr, k["head_a"]), "head_b": conv(tr, k["head_b"], 1)}
    _check(ds, refs)
    for layer, want in [("trunk", (5, 9)), ("head_a", (5, 9)), ("head_b", (5, 9))]:
        assert ds[f"heatmaps/{layer}"].to_dataset().nas_map.shape[-2:] == want


def _with_constant_weights(model):
    """``model`` with its initializer ``w1`` stored as a Constant node instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    (w1,) = [t for t in out.graph.initializer if t.name == "w1"]
    out.graph.node.insert(0, helper.make_node("Constant", [], ["w1"], value=w1))
    out.graph.initializer.remove(w1)
    return out


def _with_negative_batch(model):
    """``model`` whose input's batch dimension is written as -1 (made symbolic in place)."""
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    return model


@pytest.mark.parametrize("make", [
    lambda rng: _with_negative_batch(_mlp(rng, 17)[0]),
    lambda rng: _mlp(rng, 11)[0],
    lambda rng: _mlp(rng, 17, np.float16, TensorProto.FLOAT16)[0],
    lambda rng: _with_constant_weights(_mlp(rng, 17)[0]),
    lambda rng: _mlp(rng, 17, elem=TensorProto.DOUBLE)[0],
], ids=["negative-dims", "old-opset", "float16", "constants", "double-input"])
def test_preparing_leaves_the_given_model_as_it_was(make):
    """prepare_model edits a copy (one at most, made by the first step that changes anything):
    the model it is given, which the ONNX adapter still compares later files with, is unchanged."""
    model = make(np.random.default_rng(0))
    before = model.SerializeToString()
    prepared = prepare_model(model, "m.onnx")
    assert model.SerializeToString() == before
    assert prepared.model is not model
    assert prepared.model.SerializeToString() != before  # each case has something to prepare
