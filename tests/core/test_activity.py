"""Unit activity and dead units (docs/measures.md, "Dead units"): the host kernel's counts
against numpy, the stored ``unit_activity`` / ``dead_fraction`` against the nonlinearity's
input read out of onnxruntime, and stores written before them."""

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import nasprobe
from nasprobe import kernels
from nasprobe.cli import main
from nasprobe.onnxgraph.taps import find_taps
from nasprobe.store.layout import group_name
from tests.core import onnx_models as om
from tests.core.conftest import write_run


def _positive(a, axis):
    return (np.moveaxis(np.asarray(a, np.float64), axis, 0).reshape(a.shape[axis], -1) > 0).sum(1)


@pytest.mark.parametrize("shape,axis", [((5, 7, 6, 9), 1), ((300, 16), 1), ((3, 10, 6), 2),
                                        ((64, 64, 32, 32), 1), ((2, 3, 300, 5), 2),
                                        ((4, 6, 3, 5, 7), 1), ((1, 1), 1)])
@pytest.mark.parametrize("use_c", [True, False])
@pytest.mark.parametrize("threads", [1, 3])
def test_kernel_counts_match_numpy_on_random_taps(shape, axis, use_c, threads):
    rng = np.random.default_rng(sum(shape))
    a = rng.normal(0, 1, shape).astype(np.float32)
    a[rng.random(shape) < 0.2] = 0.0  # exact zeros are not above zero
    a[rng.random(shape) < 0.01] = np.nan  # nor is NaN
    a.flat[:3] = [np.inf, -np.inf, 1e-30]
    counts = np.zeros(shape[axis], np.int64)
    maps = kernels.nas_map(a, axis, use_c=use_c, threads=threads, counts=counts)
    np.testing.assert_array_equal(counts, _positive(a, axis))
    # the counts do not change the NAS maps, and they add up over calls
    np.testing.assert_array_equal(maps, kernels.nas_map(a, axis, use_c=use_c, threads=threads))
    kernels.nas_map(a, axis, use_c=use_c, threads=threads, counts=counts)
    np.testing.assert_array_equal(counts, 2 * _positive(a, axis))
    # with a bias the counts stay those of the raw values
    bias = rng.normal(0, 1, shape[axis]).astype(np.float32)
    c2 = np.zeros(shape[axis], np.int64)
    kernels.nas_map(a, axis, bias, use_c=use_c, counts=c2)
    np.testing.assert_array_equal(c2, _positive(a, axis))
    c3 = np.zeros(shape[axis], np.int64)
    kernels.count_positive(a, axis, c3, use_c=use_c)
    np.testing.assert_array_equal(c3, _positive(a, axis))
    c4 = np.zeros(shape[axis], np.int64)
    kernels.count_positive(np.moveaxis(a, axis, 0), 0, c4, use_c=use_c)  # channels first
    np.testing.assert_array_equal(c4, _positive(a, axis))


def test_kernel_counts_refuse_a_wrong_buffer():
    a = np.ones((2, 3, 4), np.float32)
    for bad in (np.zeros(4, np.int64), np.zeros(3, np.int32), np.zeros(3)):
        with pytest.raises(ValueError, match="counts must be"):
            kernels.nas_map(a, 1, counts=bad)
        with pytest.raises(ValueError, match="counts must be"):
            kernels.count_positive(a, 1, bad)


def _probe(folder, probe, out, **kw):
    nasprobe.probe([folder], probe=str(probe), out=out, batch_size=4, progress=False, **kw)
    return nasprobe.open_store(out)


def _expected(model_path, probe, taps):
    """Per layer with a nonlinearity: the share of its input's values above zero per channel,
    from the nonlinearity's input read out of onnxruntime (numpy)."""
    model = onnx.load(str(model_path))
    names = [t.act_tensor for t in taps if t.act_tensor]
    sess = ort.InferenceSession(om.with_outputs(model, names).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    x = np.load(probe)
    outs = sess.run(names, {sess.get_inputs()[0].name: x})
    got = dict(zip(names, outs))
    return {t.layer: _positive(got[t.act_tensor], t.act_axis) / (got[t.act_tensor].size
                                                                  / t.channels)
            for t in taps if t.act_tensor}


@pytest.mark.parametrize("builder", sorted(om.ALL))
@pytest.mark.parametrize("tap", ["linear", "preact"])
def test_stored_activity_is_that_of_the_nonlinearity_input(builder, tap, tmp_path):
    """Host kernel and NAS graph store the same unit activity, equal to the share of values
    above zero of the nonlinearity's input (after BatchNorm: conv_bn_relu's conv1 is tapped
    before it with tap=linear), and no activity for layers without a nonlinearity."""
    paths, expected = write_run(tmp_path / builder, om.ALL[builder], ["e_001.onnx", "e_002.onnx"])
    model = onnx.load(str(paths[0]))
    shape = om.input_shape(model)
    probe = tmp_path / "probe.npy"
    np.save(probe, np.random.default_rng(3).normal(0, 1, (11, *shape)).astype(np.float32))
    taps = find_taps(model, tap=tap)
    views = {on: _probe(tmp_path / builder, probe, tmp_path / f"{on}.zarr", nas_on=on, tap=tap)
             for on in ("host", "graph")}
    for on, dt in views.items():
        ds = dt.to_dataset()
        assert list(ds["nonlinearity"].values) == [t.nonlinearity for t in taps]
        for i, t in enumerate(taps):
            heat = dt[f"heatmaps/{group_name(t.layer)}"].ds
            if expected[t.layer][2] is None:  # reaches no nonlinearity
                assert t.nonlinearity == "" and "unit_activity" not in heat
                assert np.isnan(ds["dead_fraction"].values[:, :, i]).all()
                continue
            for k, p in enumerate(paths):
                want = _expected(p, probe, find_taps(onnx.load(str(p)), tap=tap))[t.layer]
                got = heat["unit_activity"].sel(run=builder).values[k]
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"{on} {t.layer}")
                assert ds["dead_fraction"].values[0, k, i] == np.mean(want == 0)


@pytest.mark.parametrize("builder", ["sequence_dense", "nhwc", "conv1d"])
def test_exclude_bias_still_counts_the_nonlinearity_input_with_its_bias(builder, tmp_path):
    """--exclude-bias changes the tensor NAS is taken of, not the one whose sign is counted:
    the host fetches the nonlinearity's input as an extra output, the graph counts it."""
    paths, _ = write_run(tmp_path / builder, om.ALL[builder], ["e_001.onnx"])
    model = onnx.load(str(paths[0]))
    probe = tmp_path / "probe.npy"
    np.save(probe, np.random.default_rng(4).normal(0, 1, (7, *om.input_shape(model)))
            .astype(np.float32))
    taps = find_taps(model)
    want = _expected(paths[0], probe, taps)
    for on in ("host", "graph"):
        dt = _probe(tmp_path / builder, probe, tmp_path / f"{on}.zarr", nas_on=on,
                    exclude_bias=True)
        for t in taps:
            got = dt[f"heatmaps/{group_name(t.layer)}"]["unit_activity"].values[0, 0]
            np.testing.assert_allclose(got, want[t.layer], rtol=0, atol=1e-12, err_msg=on)


def _set_bias(path, name, index, value):
    m = onnx.load(str(path))
    for i, t in enumerate(m.graph.initializer):
        if t.name == name:
            arr = numpy_helper.to_array(t).copy()
            arr[index] = value
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, name))
    onnx.save(m, str(path))


@pytest.mark.parametrize("on", ["host", "graph"])
def test_channels_made_dead_by_their_bias_are_counted(on, tmp_path):
    """conv2 (5 channels, Relu) with the bias of 2 channels at -1e4 in epoch 2 only; conv1's
    BatchNorm shift at -1e4 on 3 of 6 channels in epoch 1 (dead behind BatchNorm, while the
    linear tap before it still varies)."""
    paths, _ = write_run(tmp_path / "run", om.conv_bn_relu_net, ["e_001.onnx", "e_002.onnx"])
    _set_bias(paths[1], "conv2.bias", [1, 3], -1e4)
    _set_bias(paths[0], "bn.bias", [0, 2, 5], -1e4)
    probe = tmp_path / "probe.npy"
    np.save(probe, np.random.default_rng(5).normal(0, 1, (9, 3, 8, 8)).astype(np.float32))
    ds = _probe(tmp_path / "run", probe, tmp_path / "s.zarr", nas_on=on).to_dataset()
    dead = ds["dead_fraction"].sel(run="run")
    assert dead.sel(epoch=2, layer="conv2") == pytest.approx(2 / 5)
    assert dead.sel(epoch=1, layer="conv1") == pytest.approx(3 / 6)
    assert dead.sel(epoch=1, layer="conv2") == 0 and dead.sel(epoch=2, layer="conv1") == 0
    act = nasprobe.open_store(tmp_path / "s.zarr")["heatmaps/conv2"]["unit_activity"]
    assert (act.sel(run="run", epoch=2).values == 0).sum() == 2
    assert dead.attrs["long_name"].startswith("share of channels never above zero")


def test_stores_written_before_activity_open_without_it(tmp_path):
    """Job groups without the activity arrays (as nasprobe wrote them before) open with the
    variables absent, not zero; a later run in the same store has them, NaN for the old run."""
    paths, _ = write_run(tmp_path / "old", om.conv_bn_relu_net, ["e_001.onnx"])
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    probe = tmp_path / "probe.npy"
    np.save(probe, np.random.default_rng(5).normal(0, 1, (6, 3, 8, 8)).astype(np.float32))
    store = tmp_path / "s.zarr"
    _probe(tmp_path / "old", probe, store)
    (job,) = [p for p in (store / "runs" / "old").iterdir() if p.name[0].isdigit()]
    for sub in ["dead_fraction", "nonlinearity", "heatmaps/conv1/unit_activity",
                "heatmaps/conv2/unit_activity"]:
        shutil.rmtree(job / sub)
    dt = nasprobe.open_store(store)
    ds = dt.to_dataset()
    assert "dead_fraction" not in ds and "nonlinearity" not in ds.coords
    assert all("unit_activity" not in dt[f"heatmaps/{n}"].ds for n in ("conv1", "conv2", "fc"))
    info = CliRunner().invoke(main, ["info", str(store)])
    assert info.exit_code == 0 and "unit activity: not recorded" in info.output
    assert "nonlinearity=" not in info.output
    _probe(tmp_path / "new", probe, store)
    dt = nasprobe.open_store(store)
    dead = dt["dead_fraction"]
    assert np.isnan(dead.sel(run="old")).all() and np.isfinite(dead.sel(run="new", layer="conv1"))
    act = dt["heatmaps/conv1"]["unit_activity"]
    assert np.isnan(act.sel(run="old")).all() and np.isfinite(act.sel(run="new")).all()
    info = CliRunner().invoke(main, ["info", str(store)])
    assert "nonlinearity=Relu" in info.output and "dead_fraction (run, epoch, layer)" in info.output


def test_legacy_store_has_no_activity():
    dt = nasprobe.open_store("tests/core/data/store-0.1.0.zarr")
    assert "dead_fraction" not in dt.to_dataset()


def test_nonlinearity_names(tmp_path):
    """The nonlinearity after each tap: Tanh, Sigmoid, Relu; x * sigmoid(x) is Swish."""
    rng = np.random.default_rng(0)
    assert [t.nonlinearity for t in find_taps(om.matmul_add_net(rng)[0])] == ["Tanh", ""]
    assert [t.nonlinearity for t in find_taps(om.conv1d_net(rng)[0])] == ["Sigmoid"]
    m, _ = om.sequence_dense_net(rng)
    for node in m.graph.node:
        if node.op_type == "Relu":
            node.op_type, node.output[0] = "Sigmoid", "s"
    m.graph.node.append(onnx.helper.make_node("Mul", ["a", "s"], ["y"]))
    (t,) = find_taps(m)
    assert t.nonlinearity == "Swish" and t.act_tensor == "a"


@pytest.mark.parametrize("layout", ["tokens last", "channels first"])
def test_batch_maps_leave_padding_out_of_activity(layout):
    """With a padding mask, a token layer's counts cover only the real (example, token)
    pairs, whether counted in the tap itself or in another tensor; a layer with one location
    per example (a pooler) is not masked; the maps themselves are NAS everywhere."""
    from types import SimpleNamespace

    from nasprobe.measures.activity import batch_maps, location_mask

    rng = np.random.default_rng(5)
    n, t, d = 5, 7, 6
    mask = np.arange(t)[None, :] < np.array([7, 3, 1, 5, 2])[:, None]
    axis = 2 if layout == "tokens last" else 1
    tap = rng.normal(0, 1, (n, t, d)).astype(np.float32)
    other = rng.normal(0, 1, (n, t, d)).astype(np.float32)
    tap[~mask] = 50.0  # padding full of positive values: they must not count
    other[~mask] = 50.0
    if axis == 1:
        tap, other = tap.transpose(0, 2, 1).copy(), other.transpose(0, 2, 1).copy()
    pooled = rng.normal(0, 1, (n, d)).astype(np.float32)
    taps = [SimpleNamespace(layer=x, channels=d, channel_axis=a, act_axis=a)
            for x, a in (("own", axis), ("other", axis), ("pool", 1))]
    maps, counts = batch_maps(taps, [tap, tap, pooled], {"act": other, "pact": pooled},
                              ["", "act", ""], True, 1, mask)
    real = np.moveaxis(tap, axis, -1)[mask]
    np.testing.assert_array_equal(counts[0], (real > 0).sum(axis=0))
    np.testing.assert_array_equal(counts[1], (np.moveaxis(other, axis, -1)[mask] > 0).sum(0))
    np.testing.assert_array_equal(counts[2], (pooled > 0).sum(axis=0))
    np.testing.assert_allclose(maps[0], kernels.nas_map(tap, axis, use_c=False), atol=1e-6)
    assert location_mask(mask, (t,)) is mask and location_mask(mask, ()) is None
    with pytest.raises(ValueError, match="cannot be masked"):
        location_mask(mask, (t, 2), "conv")
    with pytest.raises(ValueError, match="host NAS"):
        batch_maps(taps, [tap, tap, pooled], {}, [None] * 3, False, 1, mask)
