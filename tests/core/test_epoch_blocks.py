"""A serial job's group is chunked several epochs per chunk (docs/store-design.md): its epochs
are held until their chunks are complete or HOLD_SECONDS of work passed, then written and
committed; the store reads the same as one written one epoch per chunk, readers never see an
uncommitted cell, and a job stopped by an error or Ctrl-C commits what it had probed."""

from __future__ import annotations

import numpy as np
import xarray as xr

import nasprobe
from nasprobe.job import probe_job as job
from nasprobe.store import writer as writer_module
from nasprobe.store.layout import LayerInfo
from nasprobe.store.runs import committed_epochs
from nasprobe.store.storage import location
from nasprobe.store.writer import Store
from tests.hostile import probe, write_onnx_run, write_probe

LAYERS = [LayerInfo("conv1", "Conv", 4, (3, 3), 0, "Relu"), LayerInfo("fc", "Gemm", 2, (), 1, "")]
EPOCHS = [0, 1, 2, 3, 4, 5]


def _summary(epoch: int, layer: str, spatial: tuple) -> dict:
    rng = np.random.default_rng([epoch, len(layer)])
    v = float(rng.random())
    return {"nas_median": v, "nas_mean": v / 2, "nas_min": v / 3, "nas_max": v, "entropy_mean": v,
            "dead_fraction": v / 4, "nas_quantile": rng.random(5), "nas_hist": rng.integers(0, 9, 100),
            "nas_map": rng.random(spatial).astype(np.float32),
            "nas_image_map": rng.random((2, *spatial)).astype(np.float32),
            **({"unit_activity": rng.random(4)} if layer == "conv1" else {})}


def _open(path, per_chunk: int):
    store = Store(path)
    store.create_or_check({"tap": "linear", "exclude_bias": False, "probe_sha256": "x",
                           "probe_size": 4})
    return store.open_run("r", EPOCHS, LAYERS, 2, {"source": "r"}, epochs_per_chunk=per_chunk)


def _write(w, epoch: int):
    return w.write_epoch(epoch, {x.name: _summary(epoch, x.name, x.spatial) for x in LAYERS},
                         {"loss": float(epoch)},
                         {x.name: np.full(200, epoch + 1, np.int64) for x in LAYERS})


def _assert_same(a, b):
    ta, tb = nasprobe.open_store(a), nasprobe.open_store(b)
    for node in ("/", "heatmaps/conv1", "heatmaps/fc"):
        xr.testing.assert_identical(ta[node].to_dataset(inherit=False),
                                    tb[node].to_dataset(inherit=False))


def test_held_epochs_commit_when_their_chunk_is_complete(tmp_path, monkeypatch):
    """Four epochs per chunk: epochs 0-2 are held (nothing committed), the fourth completes
    the chunk and commits all four; epoch 4 is held until flush(); epoch 5 completes the last
    chunk (slots 6 and 7 lie past the end). The store equals one written epoch by epoch."""
    monkeypatch.setattr(writer_module, "HOLD_SECONDS", 3600.0)
    w = _open(tmp_path / "blocks.zarr", 4)
    loc = location(tmp_path / "blocks.zarr")
    for e in (0, 1, 2):
        assert _write(w, e) is None
    assert committed_epochs(loc, "r") == {}
    assert _write(w, 3) is True
    assert sorted(committed_epochs(loc, "r")) == [0, 1, 2, 3]
    assert _write(w, 4) is None
    assert w.flush() == {4: True}
    assert sorted(committed_epochs(loc, "r")) == [0, 1, 2, 3, 4]
    assert _write(w, 5) is True
    assert w.flush() == {}
    one = _open(tmp_path / "one.zarr", 1)
    for e in EPOCHS:
        assert _write(one, e) is True
    _assert_same(tmp_path / "blocks.zarr", tmp_path / "one.zarr")
    job_group = next(p for p in (tmp_path / "blocks.zarr" / "runs" / "r").iterdir()
                     if p.name[0].isdigit())
    assert sorted(p.name for p in (job_group / "nas_median").iterdir()) == [
        "c.0.0", "c.1.0", "zarr.json"]


def test_a_chunk_written_again_keeps_every_committed_epoch(tmp_path, monkeypatch):
    """With no time to hold, every epoch is written and committed at once: a chunk missing
    epochs is written whole again with each new one, and after every commit the store shows
    exactly the committed epochs with their values (the others not at all)."""
    monkeypatch.setattr(writer_module, "HOLD_SECONDS", 0.0)
    w = _open(tmp_path / "blocks.zarr", 4)
    one = _open(tmp_path / "one.zarr", 1)
    for e in EPOCHS:
        assert _write(w, e) is True
        assert _write(one, e) is True
        _assert_same(tmp_path / "blocks.zarr", tmp_path / "one.zarr")
        ds = nasprobe.open_store(tmp_path / "blocks.zarr").to_dataset()
        assert ds.epoch.values.tolist() == EPOCHS[: e + 1]


def test_a_serial_job_stopped_by_ctrl_c_commits_what_it_had_probed(tmp_path, monkeypatch):
    """Ctrl-C during epoch 4 of a serial job (exit 130): epochs 1-3, held for their shared
    chunk, are committed before the job ends, and equal those of a job that was not stopped."""
    monkeypatch.setattr(writer_module, "HOLD_SECONDS", 3600.0)
    run = tmp_path / "run"
    write_onnx_run(run, epochs=(1, 2, 3, 4, 5))
    probe_set = write_probe(tmp_path / "p.npz")
    original = job.probe_checkpoint

    def stopped_at_epoch_4(task, **kw):
        if task.epoch == 4:
            raise KeyboardInterrupt
        return original(task, **kw)

    monkeypatch.setattr(job, "probe_checkpoint", stopped_at_epoch_4)
    res = probe(run, "--probe", probe_set, "--out", tmp_path / "s.zarr")
    assert res.exit_code == 130, (res.output, res.exception)
    assert sorted(committed_epochs(location(tmp_path / "s.zarr"), "run")) == [1, 2, 3]
    monkeypatch.setattr(job, "probe_checkpoint", original)
    assert probe(run, "--probe", probe_set, "--out", tmp_path / "whole.zarr").exit_code == 0
    a = nasprobe.open_store(tmp_path / "s.zarr").to_dataset()
    b = nasprobe.open_store(tmp_path / "whole.zarr").to_dataset().sel(epoch=[1, 2, 3])
    for name in ("nas_median", "nas_quantile", "nas_hist", "corr_hist", "loss"):
        xr.testing.assert_equal(a[name], b[name])
