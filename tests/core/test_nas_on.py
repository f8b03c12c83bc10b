"""NAS inside the ONNX graph (``nas_on="graph"``) and on the host from raw taps by the compiled
kernel (``nas_on="host"``) give the same store."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import nasprobe
from nasprobe import kernels
from nasprobe.cli import main
from nasprobe.errors import NasprobeError
from nasprobe.job import run_context, tasks
from nasprobe.job.run_context import host_nas
from nasprobe.measures import activity
from nasprobe.measures.aggregate import NAS_BINS
from nasprobe.store.layout import group_name
from tests.core import onnx_models as om
from tests.core.conftest import write_run

STATS = ["nas_median", "nas_mean", "nas_min", "nas_max", "entropy_mean", "nas_quantile"]


def _probe_set(tmp_path, folder, n=13, seed=4):
    shape = om.input_shape(onnx.load(str(next(folder.glob("*.onnx")))))
    path = tmp_path / f"{folder.name}-probe.npy"
    np.save(path, np.random.default_rng(seed).normal(0, 1, (n, *shape)).astype(np.float32))
    return path


def _probe_both(folder, probe, tmp_path, **kw):
    """The same probe with NAS in the graph and on the host; keep_images covers the whole probe
    set so that every NAS value of the host store can be read back from its image maps."""
    kw.setdefault("keep_images", 100)
    out = {}
    for on in ("graph", "host"):
        path = tmp_path / f"{folder.name}-{on}.zarr"
        nasprobe.probe([folder], probe=probe, out=path, batch_size=4, progress=False, nas_on=on,
                       **kw)
        out[on] = nasprobe.open_store(path)
    return out["graph"], out["host"]


def _near_edges(values, tol=1e-6):
    """Per inner edge of NAS_BINS, how many values lie within ``tol`` of it."""
    v = np.asarray(values, np.float64).ravel()
    return np.array([(np.abs(v - e) <= tol).sum() for e in NAS_BINS[1:-1]])


def _assert_same_store(g, h):
    dg, dh = g.to_dataset(), h.to_dataset()
    for coord in ["run", "epoch", "layer", "channels", "locations", "layer_kind", "depth"]:
        np.testing.assert_array_equal(dg[coord].values, dh[coord].values, err_msg=coord)
    assert dg.attrs["tap"] == dh.attrs["tap"] and dg.attrs["exclude_bias"] == dh.attrs["exclude_bias"]
    np.testing.assert_array_equal(dg.probed.values, dh.probed.values)
    for var in STATS:
        assert np.isfinite(dg[var].values).all(), var
        np.testing.assert_allclose(dh[var].values, dg[var].values, atol=1e-5, rtol=0, err_msg=var)
    # Same model outputs and weights: loss, accuracy and weight correlations agree too.
    np.testing.assert_allclose(dh.loss.values, dg.loss.values, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(dh.accuracy.values, dg.accuracy.values)
    np.testing.assert_array_equal(dh.corr_hist.values, dg.corr_hist.values)

    # nas_hist: two correct float32 computations of one NAS value can differ in the last bits,
    # which moves a value sitting on a bin edge to the neighbouring bin. That is not only the odd
    # value: NAS saturates at its maximum 1 - 1/D, itself an edge of NAS_BINS whenever D divides
    # 100 (D = 4, 5 in these models), so every location where one channel dominates sits on an
    # edge. Hence: same totals, and below every edge the counts differ by at most the number of
    # values within 1e-6 of that edge (none anywhere else).
    hg, hh = dg.nas_hist.values, dh.nas_hist.values
    np.testing.assert_array_equal(hg.sum(axis=-1), hh.sum(axis=-1))
    for r, run in enumerate(dg.run.values):
        for e, epoch in enumerate(dg.epoch.values):
            for layer_i, layer in enumerate(dg.layer.values):
                maps = h[f"heatmaps/{group_name(layer)}"].to_dataset().nas_image_map
                values = maps.sel(run=run, epoch=epoch).values
                assert values.size == hh[r, e, layer_i].sum(), "keep_images must cover the probe set"
                below = np.cumsum(hg[r, e, layer_i] - hh[r, e, layer_i])[:-1]
                near = _near_edges(values)
                assert (np.abs(below) <= near).all(), (layer, np.flatnonzero(below), near[below != 0])
    for layer in dg.layer.values:
        heat_g = g[f"heatmaps/{group_name(layer)}"].to_dataset()
        heat_h = h[f"heatmaps/{group_name(layer)}"].to_dataset()
        for var in ("nas_map", "nas_image_map"):
            assert heat_g[var].shape == heat_h[var].shape
            assert np.isfinite(heat_g[var].values).all()
            np.testing.assert_allclose(heat_h[var].values, heat_g[var].values, atol=1e-5, rtol=0,
                                       err_msg=f"{layer} {var}")


@pytest.mark.parametrize("tap, exclude_bias", [("linear", False), ("linear", True), ("preact", False)])
def test_conv_run_graph_equals_host(conv_run, labelled_probe, tmp_path, tap, exclude_bias):
    folder, _, _ = conv_run
    g, h = _probe_both(folder, labelled_probe, tmp_path, run="vanilla", tap=tap,
                       exclude_bias=exclude_bias)
    _assert_same_store(g, h)
    ds = h.to_dataset()
    assert list(ds.epoch.values) == [-1, 1, 2] and np.isfinite(ds.loss.values).all()


@pytest.mark.parametrize("exclude_bias", [False, True])
@pytest.mark.parametrize("name", sorted(om.ALL))
def test_every_graph_kind_graph_equals_host(name, exclude_bias, tmp_path):
    # NCHW conv, NHWC conv behind Transposes, (N, T, D) dense, (N, D) dense, depthwise, conv1d.
    folder = tmp_path / name
    write_run(folder, om.ALL[name], ["epoch_1.onnx", "epoch_2.onnx"], seed=3, scale=2.0)
    g, h = _probe_both(folder, _probe_set(tmp_path, folder), tmp_path, exclude_bias=exclude_bias)
    _assert_same_store(g, h)


def test_host_and_graph_really_take_their_own_paths(conv_run, labelled_probe, tmp_path, monkeypatch):
    folder, _, _ = conv_run
    calls = []
    real = activity.nas_map  # the host kernel is called from the batch step

    def spy(a, axis, *args, **kw):
        calls.append((a.shape, axis))
        return real(a, axis, *args, **kw)

    monkeypatch.setattr(activity, "nas_map", spy)
    nasprobe.probe([folder], probe=labelled_probe, out=tmp_path / "g.zarr", nas_on="graph",
                   batch_size=8, progress=False)
    assert calls == []
    nasprobe.probe([folder], probe=labelled_probe, out=tmp_path / "h.zarr", nas_on="host",
                   batch_size=8, progress=False)
    # 3 epochs x 3 batches (21 images) x 3 layers, raw taps with their channel axis.
    assert len(calls) == 27
    assert {(s[1:], axis) for s, axis in calls} == {((6, 8, 8), 1), ((5, 6, 6), 1), ((4,), 1)}


@pytest.mark.parametrize("channels", [3, 11])
def test_layer_with_equal_channels_is_counted_by_both(tmp_path, channels):
    # A zero-initialised layer: every channel equal, NAS 0 at every location. Both ways must
    # count all of its values in nas_hist (a value a hair below 0 falls outside NAS_BINS).
    folder = tmp_path / "zero"
    model, _ = om.matmul_add_net(np.random.default_rng(0), hidden=channels)
    for i, t in enumerate(model.graph.initializer):
        if t.name in ("w1", "b1"):
            arr = np.zeros_like(numpy_helper.to_array(t))
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))
    folder.mkdir()
    onnx.save(model, str(folder / "epoch_1.onnx"))
    g, h = _probe_both(folder, _probe_set(tmp_path, folder, n=5), tmp_path)
    for on, store in [("graph", g), ("host", h)]:
        ds = store.to_dataset().sel(layer="dense1/MatMul", run="zero", epoch=1)
        assert float(ds.nas_max) == pytest.approx(0, abs=1e-6), on
        maps = store[f"heatmaps/{group_name('dense1/MatMul')}"].to_dataset().nas_image_map.values
        assert int(ds.nas_hist.sum()) == 5 and int(ds.nas_hist[0]) == 5, \
            f"nas_on={on}: nas_hist counts {int(ds.nas_hist.sum())} of 5 values {maps.ravel()}"


def test_host_nas_choice(monkeypatch):
    cpu, cuda = "CPUExecutionProvider", "CUDAExecutionProvider"
    assert kernels.available()
    assert host_nas("auto", cpu) is True and host_nas("auto") is True
    assert host_nas("host", cpu) is True and host_nas("graph", cpu) is False
    for bad in ("bogus", "", "HOST", None):
        with pytest.raises(NasprobeError, match="nas_on"):
            host_nas(bad)
    with pytest.raises(NasprobeError, match="nas_on"):
        host_nas("bogus", cpu)
    # On CUDA the graph keeps the taps on the GPU: auto picks the graph there.
    assert host_nas("auto", cuda) is False and host_nas("host", cuda) is True
    # Without the compiled kernels auto keeps NAS in the graph.
    monkeypatch.setattr(run_context, "kernels_available", lambda: False)
    assert host_nas("auto", cpu) is False and host_nas("host", cpu) is True


def test_without_kernels_host_falls_back_to_numpy(conv_run, labelled_probe, tmp_path, monkeypatch):
    folder, _, _ = conv_run
    ref = tmp_path / "c.zarr"
    nasprobe.probe([folder], probe=labelled_probe, out=ref, nas_on="host", progress=False)
    monkeypatch.setattr(kernels, "ckernels", None)
    assert not kernels.available() and not host_nas("auto")
    with pytest.raises(RuntimeError, match="not built"):
        kernels.nas_map(np.zeros((1, 2)), 1, use_c=True)
    out = tmp_path / "numpy.zarr"
    nasprobe.probe([folder], probe=labelled_probe, out=out, nas_on="host", progress=False)
    a, b = nasprobe.open_store(ref).to_dataset(), nasprobe.open_store(out).to_dataset()
    for var in STATS:
        np.testing.assert_allclose(b[var].values, a[var].values, atol=1e-5, rtol=0)


def test_probe_refuses_bad_nas_on(conv_run, labelled_probe, tmp_path):
    folder, _, _ = conv_run
    with pytest.raises(NasprobeError, match="nas_on"):
        nasprobe.probe([folder], probe=labelled_probe, out=tmp_path / "s.zarr", nas_on="bogus",
                       progress=False)


def test_cli_nas_on(conv_run, labelled_probe, tmp_path):
    folder, _, _ = conv_run
    runner = CliRunner()
    stores = {}
    for on in ("graph", "host"):
        out = tmp_path / f"{on}.zarr"
        res = runner.invoke(main, ["probe", str(folder), "--probe", str(labelled_probe), "--out",
                                   str(out), "--run", "vanilla", "--nas-on", on,
                                   "--keep-images", "21"])
        assert res.exit_code == 0, res.output
        stores[on] = nasprobe.open_store(out)
        info = runner.invoke(main, ["info", str(out)])
        assert info.exit_code == 0 and f"NAS computed in {on}" in info.output, info.output
    assert list(stores["graph"].to_dataset().layer.values) == ["conv1", "conv2", "fc"]
    _assert_same_store(stores["graph"], stores["host"])
    res = runner.invoke(main, ["probe", str(folder), "--probe", str(labelled_probe), "--out",
                               str(tmp_path / "bad.zarr"), "--nas-on", "gpu"])
    assert res.exit_code == 2 and "--nas-on" in res.output
    assert not (tmp_path / "bad.zarr").exists()


def test_weight_correlations_run_on_one_blas_thread(tmp_path, monkeypatch):
    # OpenBLAS threads spin after a call, on the cores the next epoch's streams need
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    seen = []
    real = tasks.corr_histogram

    def spy(w):
        seen.append(blas_threads())
        return real(w)

    monkeypatch.setattr(tasks, "corr_histogram", spy)
    folder = tmp_path / "run"
    write_run(folder, om.conv_bn_relu_net, ["epoch_000.onnx", "epoch_001.onnx"])
    # two BLAS threads to start with, whatever OMP_NUM_THREADS the test run was given
    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        nasprobe.probe([folder], probe=_probe_set(tmp_path, folder), out=tmp_path / "s.zarr",
                       run="r", progress=False)
        after = blas_threads()
    assert before and set(before) == {2}  # numpy's BLAS is seen and was set
    assert len(seen) == 6 and all(t == [1] * len(before) for t in seen)  # 2 epochs x 3 layers
    assert after == before  # given back after each epoch
