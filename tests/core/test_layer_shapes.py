"""Layers of one name but another shape (docs/store.md, *Heatmaps*).

* A later run whose layer has a stored layer's name but another width is refused before
  anything is written (exit 2, the store and the layer named).
* A later run whose maps have another size (a fully convolutional net probed at another image
  size) is stored: its maps and those of the earlier run keep their own values, padded with
  NaN to the larger size, and info, plot and report draw the store.
* Epochs of one *stored run* with another map size are refused (exit 2, the layer, the
  checkpoint and both shapes named): one run is one architecture at one input size.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main
from tests.core import onnx_models as om
from tests.hostile import assert_refused, probe, tree_digest, write_probe


def _save(folder, epoch=1, **kwargs):
    folder.mkdir(exist_ok=True)
    model, _ = om.conv_bn_relu_net(np.random.default_rng(0), **kwargs)
    path = folder / f"epoch_{epoch:03d}.onnx"
    onnx.save(model, str(path))
    return path


def test_same_layer_name_other_width_is_refused(tmp_path):
    _save(tmp_path / "a")
    _save(tmp_path / "b", widths=(7, 5))
    store = tmp_path / "s.zarr"
    assert probe(tmp_path / "a", "--probe", write_probe(tmp_path / "p.npz"), "--out", store).exit_code == 0
    before = tree_digest(store)
    res = probe(tmp_path / "b", "--probe", write_probe(tmp_path / "p.npz"), "--out", store)
    assert_refused(res, store, "layer 'conv1' of run 'b' has 7 channels, but 6 in the store")
    assert tree_digest(store) == before


@pytest.fixture
def two_sizes(tmp_path):
    """Run ``a`` at 8×8 and run ``b`` (the same weights, a 10×10 input) in one store, and each
    run alone in a store of its own."""
    _save(tmp_path / "a")
    _save(tmp_path / "b", size=10)
    p8 = write_probe(tmp_path / "p8.npz")
    p10 = write_probe(tmp_path / "p10.npz", shape=(3, 10, 10))
    mixed = tmp_path / "mixed.zarr"
    for run, p, extra in (("a", p8, []), ("b", p10, ["--force"])):
        res = probe(tmp_path / run, "--probe", p, "--out", mixed, *extra)
        assert res.exit_code == 0, (res.output, res.exception)
        res = probe(tmp_path / run, "--probe", p, "--out", tmp_path / f"{run}.zarr")
        assert res.exit_code == 0, (res.output, res.exception)
    return tmp_path, mixed


def test_runs_of_two_map_sizes_are_padded_with_nan(two_sizes):
    tmp, mixed = two_sizes
    dt = nasprobe.open_store(mixed)
    for layer, small, large in (("conv1", (8, 8), (10, 10)), ("conv2", (6, 6), (8, 8))):
        maps = dt[f"heatmaps/{layer}"].to_dataset()
        assert maps.nas_map.shape[-2:] == large
        for run, (h, w) in (("a", small), ("b", large)):
            alone = nasprobe.open_store(tmp / f"{run}.zarr")[f"heatmaps/{layer}"].to_dataset()
            for var in ("nas_map", "nas_image_map"):
                got = maps[var].sel(run=run, epoch=1).values
                want = alone[var].sel(run=run, epoch=1).values
                assert want.shape[-2:] == (h, w)
                np.testing.assert_array_equal(got[..., :h, :w], want)
                assert np.isnan(got[..., h:, :]).all() and np.isnan(got[..., :, w:]).all()
                assert np.isfinite(got[..., :h, :w]).all()
    ds = dt.to_dataset()
    for run in ("a", "b"):  # the statistics are the run's own, not computed over padding
        alone = nasprobe.open_store(tmp / f"{run}.zarr").to_dataset()
        np.testing.assert_array_equal(ds.nas_median.sel(run=run).values,
                                      alone.nas_median.sel(run=run).values)


def test_figures_and_report_draw_padded_maps(two_sizes):
    tmp, mixed = two_sizes
    res = CliRunner().invoke(main, ["info", str(mixed)])
    assert res.exit_code == 0, res.output
    for kind in ("heatmaps", "line"):
        out = tmp / f"{kind}.png"
        res = CliRunner().invoke(main, ["plot", str(mixed), "--kind", kind, "--out", str(out)])
        assert res.exit_code == 0, (res.output, res.exception)
        assert out.stat().st_size > 0
    res = CliRunner().invoke(main, ["report", str(mixed), "--out", str(tmp / "r.html"),
                                    "--kind", "heatmaps"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "<img" in (tmp / "r.html").read_text()


def test_a_stored_run_keeps_its_map_size(tmp_path):
    first = _save(tmp_path / "a")
    later = _save(tmp_path / "new", epoch=2, size=10)
    store = tmp_path / "s.zarr"
    res = probe(first, "--run", "a", "--probe", write_probe(tmp_path / "p8.npz"), "--out", store)
    assert res.exit_code == 0, (res.output, res.exception)
    before = tree_digest(store)
    p10 = write_probe(tmp_path / "p10.npz", shape=(3, 10, 10))
    res = probe(later, "--run", "a", "--probe", p10, "--out", store, "--force")
    assert_refused(res, store, f"layer 'conv1' of run 'a' has maps of 10×10 locations in {later}",
                   "but 8×8 in the run's stored epochs 1", "--run NAME")
    assert tree_digest(store) == before
    # Epochs the run has already are not probed again: nothing to refuse, nothing written.
    again = _save(tmp_path / "again", epoch=1, size=10)
    res = probe(again, "--run", "a", "--probe", p10, "--out", store, "--force")
    assert res.exit_code == 0, (res.output, res.exception)
    assert tree_digest(store) == before
    # The same checkpoint as a run of its own is fine.
    res = probe(later, "--run", "a-10px", "--probe", p10, "--out", store, "--force")
    assert res.exit_code == 0, (res.output, res.exception)


def test_two_jobs_opening_one_run_at_two_sizes_at_once(tmp_path):
    """Both jobs pass the checks on stored epochs (there are none yet); the second to open the
    run is refused by the run's shape record, whichever order their epochs would commit in."""
    from nasprobe.errors import StoreError
    from nasprobe.store.writer import LayerInfo, Store

    store = Store(tmp_path / "s.zarr")
    store.create_or_check({"tap": "linear", "exclude_bias": False, "probe_sha256": "0" * 64,
                           "probe_size": 6})
    small = [LayerInfo("conv1", "Conv", 6, (8, 8), 0), LayerInfo("fc", "Gemm", 4, (), 1)]
    large = [LayerInfo("conv1", "Conv", 6, (10, 10), 0), LayerInfo("fc", "Gemm", 4, (), 1)]
    first = store.open_run("a", [1, 2], small, 2, {}, job="job-8px")
    with pytest.raises(StoreError, match=r"layer 'conv1' of run 'a' has 6 channels, maps of "
                       r"10×10 locations, but job job-8px opened the run with 6 channels, maps "
                       r"of 8×8 locations: .* \(--run NAME\)"):
        store.open_run("a", [3, 4], large, 2, {}, job="job-10px")
    assert first.todo == [1, 2]
    # the same shapes (another job on the run, another epoch) and another run are fine
    assert store.open_run("a", [3], small, 2, {}, job="job-8px-b").todo == [3]
    assert store.open_run("b", [1], large, 2, {}, job="job-10px").todo == [1]


def test_a_run_opened_by_a_stopped_job_keeps_its_map_size(tmp_path, monkeypatch):
    """Job one opens run 'a' at 8×8 and stops before committing an epoch (as a job still
    running would look); a job at 10×10 into the same run is refused, nothing written."""
    from nasprobe.job import probe_job as job

    first = _save(tmp_path / "a")
    later = _save(tmp_path / "new", epoch=2, size=10)
    store = tmp_path / "s.zarr"

    def stopped(task, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "probe_checkpoint", stopped)
    res = probe(first, "--run", "a", "--probe", write_probe(tmp_path / "p8.npz"), "--out", store)
    assert res.exit_code == 130, (res.output, res.exception)
    monkeypatch.undo()
    before = tree_digest(store)
    p10 = write_probe(tmp_path / "p10.npz", shape=(3, 10, 10))
    res = probe(later, "--run", "a", "--probe", p10, "--out", store, "--force")
    assert_refused(res, store, "layer 'conv1' of run 'a' has 6 channels, maps of 10×10 "
                   "locations, but job", "opened the run with 6 channels, maps of 8×8 locations")
    assert tree_digest(store) == before
