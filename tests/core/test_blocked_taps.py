"""Tap outputs left in onnxruntime's blocked channel layout (NCHWc).

The kernel is checked against plain numpy on tensors blocked by hand; the plan against the
ordinary tapped session on the same weights, epoch after epoch; the probe job against the same
job with the plan turned off (the stores must be equal). Whether onnxruntime blocks a tap at all
is its own decision: :func:`ort_blocks_taps` asks it, independently of nasprobe, and a plan
must be made exactly where it does (x86 CPUs with AVX2 or AVX-512; elsewhere every session is
the ordinary one, and the same outputs are checked).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import nasprobe
from nasprobe.job import blocked_taps, run_context
from nasprobe.job.runtime import TappedModel, tap_blocks
from nasprobe.measures import kernels
from nasprobe.measures.nas import nas
from nasprobe.measures.nchwc import Block, unblock
from nasprobe.onnxgraph.nas_graph import build_tap_graph
from nasprobe.onnxgraph.taps import find_taps

from .onnx_models import conv_bn_relu_net

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs the compiled kernels")


def blocked(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` (N, C, H, W) in onnxruntime's blocked layout, as its sessions return it."""
    n, c, h, w = a.shape
    cp = -(-c // size) * size
    p = np.zeros((n, cp, h, w), np.float32)
    p[:, :c] = a
    return np.ascontiguousarray(p.reshape(n, cp // size, size, h, w)
                                .transpose(0, 1, 3, 4, 2)).reshape(n, cp, h, w)


@pytest.mark.parametrize("c,size,h,w", [(64, 16, 9, 7), (20, 16, 16, 16), (24, 8, 5, 33),
                                        (5, 4, 3, 3), (3, 16, 1, 1), (128, 8, 4, 4)])
def test_blocked_kernel_is_numpy_nas(c, size, h, w):
    rng = np.random.default_rng(c + size)
    a = (rng.normal(size=(3, c, h, w)) * 4).astype(np.float32)
    a[1, c // 2, h // 2, w // 2] = np.nan
    x = blocked(a, size)
    assert np.array_equal(unblock(x, Block(c, size)), a, equal_nan=True)
    counts = np.zeros(c, np.int64)
    got = kernels.nas_map_blocked(x, c, size, counts=counts, threads=2)
    want = nas(a.astype(np.float64), axis=1)
    assert got.shape == (3, h, w)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.nanmax(np.abs(got - want)) < 1e-6
    assert np.array_equal(counts, (np.moveaxis(a, 1, 0).reshape(c, -1) > 0).sum(axis=1))
    # and the NCHW kernel's own numbers, bit for bit: the two layouts give one store
    assert np.array_equal(got, kernels.nas_map(a, 1), equal_nan=True)


def test_blocked_kernel_refuses_a_wrong_shape():
    with pytest.raises(ValueError, match="blocks of 16"):
        kernels.nas_map_blocked(np.zeros((2, 20, 3, 3), np.float32), 20, 16)
    with pytest.raises(ValueError, match="blocks of 16"):
        unblock(np.zeros((2, 20, 3, 3), np.float32), Block(20, 16))


def wide_net(rng, widths=(32, 48), size=12):
    """conv1 (3 -> 32) -> Relu -> conv2 (32 -> 48) -> Relu -> GlobalAveragePool -> fc: channel
    counts onnxruntime's CPU convolutions block."""
    c1, c2 = widths
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in {
        "conv1.weight": rng.normal(0, 0.5, (c1, 3, 3, 3)), "conv1.bias": rng.normal(0, 0.1, c1),
        "conv2.weight": rng.normal(0, 0.2, (c2, c1, 3, 3)), "conv2.bias": rng.normal(0, 0.1, c2),
        "fc.weight": rng.normal(0, 0.3, (10, c2)), "fc.bias": rng.normal(0, 0.1, 10),
        "scale": np.array(1.0)}.items()]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["z"], name="fc", transB=1),
        helper.make_node("Mul", ["z", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def ort_blocks_taps(model: onnx.ModelProto, outputs: list[str]) -> bool:
    """Whether onnxruntime's CPU provider converts any of ``outputs`` from its blocked layout
    (a ReorderOutput node makes it), asked of onnxruntime directly."""
    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        opt = onnx.load(opts.optimized_model_filepath)
    return any(n.op_type == "ReorderOutput" and n.output[0] in outputs for n in opt.graph.node)


def tapped_model(model):
    taps = find_taps(model)
    graph, fetch, _ = build_tap_graph(model, taps, activity=True)
    return TappedModel(graph, device="cpu"), fetch


def redrawn(model, rng) -> dict[str, np.ndarray]:
    """A later epoch's weights: every float initializer of ``model`` drawn again."""
    return {t.name: rng.normal(0, 0.3, tuple(t.dims)).astype(np.float32)
            for t in model.graph.initializer if t.name != "scale"}


def planned(model, x):
    tapped, fetch = tapped_model(model)
    reference = tapped.session().run(fetch, {tapped.input_name: x})
    return tapped, fetch, tapped.block_taps(fetch, x, reference)


def test_the_plan_gives_the_ordinary_outputs_epoch_after_epoch():
    rng = np.random.default_rng(0)
    model = wide_net(rng)
    x = rng.normal(size=(5, 3, 12, 12)).astype(np.float32)
    tapped, fetch, made = planned(model, x[:1])
    assert made == ort_blocks_taps(tapped.model, fetch)
    if (kernels.simd() or "").startswith(("x86-64-v4", "x86-64-v3")):
        assert made, "onnxruntime blocks convolutions on x86 CPUs with AVX2 or AVX-512"
    for _ in range(3):  # a new epoch: its weights are gathered into the optimised graph
        weights = redrawn(model, rng)
        sess = tapped.session(weights)
        blocks = tap_blocks(sess)
        assert {b.channels for b in blocks.values()} == ({32, 48} if made else set())
        plan, tapped.blocked = tapped.blocked, None
        want = tapped.session(weights).run(fetch, {tapped.input_name: x})
        tapped.blocked = plan
        for name, have, ref in zip(fetch, sess.run(fetch, {tapped.input_name: x}), want):
            if name in blocks:
                have = unblock(have, blocks[name])
            np.testing.assert_allclose(have, ref, rtol=1e-5, atol=1e-5)


def test_a_changed_constant_gets_the_ordinary_session():
    """A scalar is not coded (it may be a constant the optimiser reads): an epoch in which it
    changes runs the graph the ordinary way, not a plan made for the old value."""
    rng = np.random.default_rng(1)
    model = wide_net(rng)
    x = rng.normal(size=(2, 3, 12, 12)).astype(np.float32)
    tapped, fetch, made = planned(model, x[:1])
    assert made == ort_blocks_taps(tapped.model, fetch)
    weights = redrawn(model, rng)
    assert bool(tap_blocks(tapped.session({**weights, "scale": np.array(1.0, np.float32)}))) == made
    sess = tapped.session({**weights, "scale": np.array(2.0, np.float32)})
    assert tap_blocks(sess) == {}
    plan, tapped.blocked = tapped.blocked, None
    want = tapped.session({**weights, "scale": np.array(2.0, np.float32)}).run(
        None, {tapped.input_name: x})
    tapped.blocked = plan
    np.testing.assert_allclose(sess.run(None, {tapped.input_name: x})[0], want[0], rtol=1e-6)


def test_weights_the_optimiser_combines_leave_the_graph_as_it_was():
    """BatchNorm after a linear tap: onnxruntime turns it into a product of its parameters,
    which no gather gives; no plan is made, and the session is the ordinary one."""
    rng = np.random.default_rng(2)
    model, _ = conv_bn_relu_net(rng, widths=(32, 16), size=8)
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    tapped, fetch, made = planned(model, x)
    codes = blocked_taps._coded(tapped.model)
    assert codes is not None
    assert not made and tapped.blocked is None
    assert tap_blocks(tapped.session()) == {}


def test_a_probe_job_writes_the_same_store_with_and_without_the_plan(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    model = wide_net(rng)
    for epoch in range(3):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for name, arr in redrawn(model, rng).items():
            i = next(k for k, t in enumerate(m.graph.initializer) if t.name == name)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, name))
        onnx.save(m, str(folder / f"epoch_{epoch:03d}.onnx"))
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=rng.normal(size=(40, 3, 12, 12)).astype(np.float32),
             y=rng.integers(0, 10, 40))
    made = []
    real = TappedModel.block_taps

    def spy(self, *a, **k):
        made.append(real(self, *a, **k))
        return made[-1]

    monkeypatch.setattr(TappedModel, "block_taps", spy)
    stores = {}
    for name, threshold in (("blocked", 0), ("ordinary", 2 ** 62)):
        monkeypatch.setattr(run_context, "BLOCKED_MIN_VALUES", threshold)
        run_context.forget_remote()  # the cached context of the first job would be reused
        stores[name] = nasprobe.open_store(nasprobe.probe(
            [folder], out=tmp_path / f"{name}.zarr", probe=str(probe), batch_size=16,
            keep_images=2, progress=False))
    tapped, fetch = tapped_model(model)
    assert made == [ort_blocks_taps(tapped.model, fetch)]
    a, b = stores["blocked"], stores["ordinary"]
    paths = [node.path for node in a.subtree]
    assert "/heatmaps/conv2" in paths and paths == [node.path for node in b.subtree]
    for path in paths:
        x, y = a[path].to_dataset(), b[path].to_dataset()
        assert set(x.data_vars) == set(y.data_vars)
        for v in x.data_vars:
            assert np.array_equal(x[v].values, y[v].values, equal_nan=True), (path, v)


def gathered(gather, arrays):
    """What a plan holding ``gather`` puts into its initializer for ``arrays``."""
    plan = blocked_taps.BlockedGraph(onnx.ModelProto(), {}, {"w": gather}, {})
    return plan.arrays(arrays, lambda name: arrays[name])["w"]


def test_a_gather_from_two_tensors_with_padding():
    """An optimised initializer built from parts of two coded tensors, with padding between
    them (onnxruntime could concatenate weights): each element comes from where its code says."""
    shapes = {"a": (2, 3), "b": (4,)}
    offs = np.array([2, 8, 12], np.int64)  # a's codes 2..7, b's 8..11, the end
    a = np.arange(10, 16, dtype=np.float32).reshape(2, 3)
    b = np.arange(20, 24, dtype=np.float32)
    both = blocked_taps._gather(np.array([9, 0, 2, 7, 0, 11, 3]), offs, ["a", "b"], shapes, (7,))
    assert both.sources == ["a", "b"]
    np.testing.assert_array_equal(gathered(both, {"a": a, "b": b}), [21, 0, 10, 15, 0, 23, 11])
    one = blocked_taps._gather(np.array([4, 0, 2, 3]), offs, ["a", "b"], shapes, (2, 2))
    assert one.sources == ["a"]
    np.testing.assert_array_equal(gathered(one, {"a": a}), [[12, 0], [10, 11]])
    same = blocked_taps._gather(np.array([8, 9, 10, 11]), offs, ["a", "b"], shapes, (4,))
    assert same.sources == ["b"] and same.index is None  # the tensor as it is
    np.testing.assert_array_equal(gathered(same, {"b": b}), b)
