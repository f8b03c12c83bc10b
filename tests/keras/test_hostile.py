"""A malformed Keras ``.h5`` (a weight dataset deleted: h5py raises KeyError) is a bad
checkpoint like any other: exit 2 naming it, or skipped with ``--on-error skip``."""

from __future__ import annotations

import h5py

import nasprobe
from nasprobe.job.probe_job import run_info
from tests.hostile import assert_refused, probe, write_probe

from .conftest import cnn, randomize


def test_malformed_h5_is_skipped_or_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    model = cnn()
    paths = []
    for epoch in (1, 2, 3):
        randomize(model, epoch)
        paths.append(run / f"epoch_{epoch:03d}.h5")
        model.save(paths[-1])
    with h5py.File(paths[1], "r+") as f:
        group = f["model_weights"]["d1"]
        names = []
        group.visit(names.append)
        del group[[n for n in names if isinstance(group[n], h5py.Dataset)][0]]
    probe_path = write_probe(tmp_path / "probe.npz", shape=(8, 8, 3), classes=3)
    out = tmp_path / "s.zarr"
    res = probe(run, "--probe", probe_path, "--out", out, "--framework", "keras")
    assert_refused(res, paths[1])
    res = probe(run, "--probe", probe_path, "--out", out, "--framework", "keras",
                "--on-error", "skip")
    assert res.exit_code == 0, (res.output, res.exception)
    ds = nasprobe.open_store(out).to_dataset()
    assert ds.epoch.values[ds.probed.sel(run="run").values.astype(bool)].tolist() == [1, 3]
    assert list(run_info(out)["run"]["skipped"]) == [str(paths[1])]
