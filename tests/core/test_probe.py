"""End to end on ONNX checkpoints: the store equals numpy on the raw tap tensors."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import nasprobe
from nasprobe.measures.aggregate import NAS_BINS, QUANTILES
from nasprobe.measures.correlation import corr_histogram
from nasprobe.measures.nas import entropy_from_nas, nas
from nasprobe.onnxgraph.taps import find_taps
from nasprobe.store.layout import group_name
from tests.core import onnx_models as om
from tests.core.conftest import write_run


def _raw(path, x, tap="linear"):
    """Raw tap tensors and logits of one ONNX file, by onnxruntime, without nasprobe's graph."""
    model = onnx.load(str(path))
    taps = find_taps(model, tap)
    names = [model.graph.output[0].name] + [t.tensor for t in taps]
    sess = ort.InferenceSession(om.with_outputs(model, names[1:]).SerializeToString())
    outs = sess.run(names, {model.graph.input[0].name: x})
    return taps, outs[0], dict(zip(names[1:], outs[1:])), model


@pytest.mark.parametrize("tap", ["linear", "preact"])
def test_store_matches_numpy_on_raw_taps(conv_run, labelled_probe, tmp_path, tap):
    folder, paths, _ = conv_run
    out = tmp_path / "nas.zarr"
    nasprobe.probe([folder], probe=labelled_probe, out=out, run="vanilla", tap=tap,
                   batch_size=4, keep_images=5, progress=False)
    dt = nasprobe.open_store(out)
    ds = dt.to_dataset()
    assert list(ds.epoch.values) == [-1, 1, 2]
    data = np.load(labelled_probe)
    x, y = data["x"], data["y"]
    for path, epoch in zip(paths, [-1, 1, 2]):
        taps, logits, raw, model = _raw(path, x, tap)
        assert list(ds.layer.values) == [t.layer for t in taps]
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for t in taps:
            maps = nas(raw[t.tensor].astype(np.float64), axis=t.channel_axis)
            sel = dict(run="vanilla", epoch=epoch, layer=t.layer)
            v = maps.ravel()
            assert float(ds.nas_median.sel(sel)) == pytest.approx(np.median(v), abs=1e-4)
            assert float(ds.nas_mean.sel(sel)) == pytest.approx(v.mean(), abs=1e-5)
            assert float(ds.nas_min.sel(sel)) == pytest.approx(v.min(), abs=1e-5)
            assert float(ds.nas_max.sel(sel)) == pytest.approx(v.max(), abs=1e-5)
            assert float(ds.entropy_mean.sel(sel)) == pytest.approx(
                entropy_from_nas(v, t.channels).mean(), abs=1e-4)
            np.testing.assert_allclose(ds.nas_quantile.sel(sel).values, np.quantile(v, QUANTILES), atol=1e-4)
            # Histogram: exact up to values within 1e-5 of a bin edge (float32 maps).
            cum = np.concatenate([[0], np.cumsum(ds.nas_hist.sel(sel).values)])
            assert cum[-1] == v.size
            for edge, c in zip(NAS_BINS[1:-1], cum[1:-1]):
                assert (v < edge - 1e-5).sum() <= c <= (v < edge + 1e-5).sum()
            np.testing.assert_array_equal(ds.corr_hist.sel(sel).values,
                                          corr_histogram(t.filters(inits)))
            heat = dt[f"heatmaps/{t.layer}"].to_dataset()
            np.testing.assert_allclose(heat.nas_map.sel(run="vanilla", epoch=epoch).values,
                                       maps.mean(axis=0), atol=1e-5)
            np.testing.assert_allclose(heat.nas_image_map.sel(run="vanilla", epoch=epoch).values,
                                       maps[:5], atol=1e-5)
        top = logits.max(1, keepdims=True)
        lp = logits - np.log(np.exp(logits - top).sum(1, keepdims=True)) - top
        assert float(ds.loss.sel(run="vanilla", epoch=epoch)) == pytest.approx(
            -lp[np.arange(len(y)), y].mean(), abs=1e-5)
        assert float(ds.accuracy.sel(run="vanilla", epoch=epoch)) == pytest.approx((logits.argmax(1) == y).mean())
    assert ds.attrs["tap"] == tap and ds.attrs["probe_size"] == 21
    assert ds.layer_kind.values.tolist()[:2] == ["Conv", "Conv"]
    assert ds.channels.values.tolist()[:2] == [6, 5]
    assert ds.locations.values.tolist()[:2] == [64, 36]


@pytest.mark.parametrize("name", sorted(om.ALL))
def test_every_graph_kind_end_to_end(name, tmp_path):
    folder = tmp_path / name
    paths, _ = write_run(folder, om.ALL[name], ["epoch_1.onnx", "epoch_2.onnx"], seed=3)
    shape = om.input_shape(onnx.load(str(paths[0])))
    x = np.random.default_rng(4).normal(0, 1, (9, *shape)).astype(np.float32)
    np.save(tmp_path / "probe.npy", x)
    out = tmp_path / "s.zarr"
    nasprobe.probe([folder], probe=tmp_path / "probe.npy", out=out, batch_size=4, progress=False)
    dt = nasprobe.open_store(out)
    for path, epoch in zip(paths, [1, 2]):
        taps, _, raw, _ = _raw(path, x)
        for t in taps:
            maps = nas(raw[t.tensor].astype(np.float64), axis=t.channel_axis)
            got = dt[f"heatmaps/{group_name(t.layer)}"].to_dataset().nas_image_map
            np.testing.assert_allclose(got.sel(run=name, epoch=epoch).values, maps[:8], atol=1e-5)
            assert float(dt.to_dataset().nas_median.sel(run=name, epoch=epoch, layer=t.layer)) == \
                pytest.approx(np.median(maps), abs=1e-4)


def test_runs_accumulate_without_rewriting(conv_run, labelled_probe, tmp_path):
    folder, _, _ = conv_run
    out = tmp_path / "nas.zarr"
    nasprobe.probe([folder], probe=labelled_probe, out=out, run="a", progress=False)
    first = nasprobe.open_store(out).to_dataset().load()
    other = tmp_path / "b"
    write_run(other, om.conv_bn_relu_net, ["epoch_002.onnx", "epoch_005.onnx"], seed=9)
    nasprobe.probe([other], probe=labelled_probe, out=out, run="b", progress=False)
    ds = nasprobe.open_store(out).to_dataset()
    assert list(ds.run.values) == ["a", "b"] and list(ds.epoch.values) == [-1, 1, 2, 5]
    a = ds.sel(run="a", epoch=[-1, 1, 2])
    np.testing.assert_array_equal(a.nas_median.values, first.nas_median.sel(run="a").values)
    assert np.isnan(ds.nas_median.sel(run="a", epoch=5)).all()
    assert np.isnan(ds.nas_median.sel(run="b", epoch=1)).all()
    assert np.isfinite(ds.nas_median.sel(run="b", epoch=5)).all()
    # xarray's own reader opens the store too, raw: one group per run and probe job, with
    # the commit markers as empty groups (docs/store-design.md).
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a valid zarr hierarchy: no complaint
        raw = xr.open_datatree(str(out), engine="zarr", consolidated=False)
    assert set(raw.children) == {"runs"} and set(raw["runs"].children) == {"a", "b"}
    jobs = [n for n in raw["runs/b"].children if n not in ("commits", "claims", "shapes")]
    assert len(jobs) == 1 and "nas_median" in raw[f"runs/b/{jobs[0]}"].to_dataset()
    assert set(raw["runs/b/commits"].children) == {"2", "5"}


def test_wrong_probe_shape_names_both_shapes(conv_run, tmp_path):
    folder, _, _ = conv_run
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 9, 9), np.float32))
    from nasprobe.errors import ProbeSetError

    with pytest.raises(ProbeSetError, match=r"bad\.npy.*9, 9.*8, 8"):
        nasprobe.probe([folder], probe=tmp_path / "bad.npy", out=tmp_path / "s.zarr", progress=False)


def test_other_probe_set_is_refused_unless_forced(conv_run, labelled_probe, tmp_path):
    folder, _, _ = conv_run
    out = tmp_path / "s.zarr"
    nasprobe.probe([folder], probe=labelled_probe, out=out, progress=False)
    np.savez(tmp_path / "p2.npz", x=np.ones((3, 3, 8, 8), np.float32))
    from nasprobe.errors import StoreError

    with pytest.raises(StoreError, match="another probe set"):
        nasprobe.probe([folder], probe=tmp_path / "p2.npz", out=out, run="x", progress=False)
    nasprobe.probe([folder], probe=tmp_path / "p2.npz", out=out, run="x", force=True, progress=False)
