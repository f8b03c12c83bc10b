"""Checkpoints and probe sets that look right but are not: a later ONNX checkpoint missing an
initializer, a tensor whose bytes do not fit its shape, labels beyond the model's outputs.
Each exits 2 naming the file and what is wrong (the store unchanged); ``--on-error skip``
skips the bad checkpoint and stores the others."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import nasprobe
from nasprobe.job.probe_job import run_info
from tests.hostile import (
    assert_refused,
    make_store,
    probe,
    tree_digest,
    write_onnx_run,
    write_probe,
)


def _damage(path, how):
    m = onnx.load(str(path))
    init = {t.name: t for t in m.graph.initializer}
    if how == "missing":
        m.graph.initializer.remove(init["conv2.bias"])
    elif how == "reshaped":
        t = init["conv2.bias"]
        t.dims[:] = [t.dims[0] + 1]
    elif how == "short_bytes":
        t = init["conv2.weight"]
        raw = onnx.numpy_helper.to_array(t).tobytes()
        t.ClearField("float_data")
        t.raw_data = raw[: len(raw) // 2]
    onnx.save(m, str(path))


@pytest.mark.parametrize("how, fragment", [
    ("missing", "initializer 'conv2.bias' of the first checkpoint is missing"),
    ("reshaped", "tensor 'conv2.bias' has shape (6,), the architecture has (5,)"),
    ("short_bytes", "initializer 'conv2.weight' cannot be decoded"),
])
def test_damaged_later_checkpoint(tmp_path, how, fragment):
    store, probe_path = make_store(tmp_path)
    run = tmp_path / "run"
    paths = write_onnx_run(run, epochs=(1, 2, 3), seed=4)
    _damage(paths[1], how)
    good = nasprobe.open_store(store).to_dataset().sel(run="good")
    res = probe(run, "--probe", probe_path, "--out", store)
    # fail mode: stops at the bad file; the epoch before it is kept, the bad one uncommitted
    assert_refused(res, paths[1], fragment)
    ds = nasprobe.open_store(store).to_dataset()
    assert ds.probed.sel(run="run").sum() <= 1
    np.testing.assert_array_equal(ds.sel(run="good").nas_median, good.nas_median)
    res = probe(run, "--probe", probe_path, "--out", store, "--on-error", "skip")
    assert res.exit_code == 0, (res.output, res.exception)
    ds = nasprobe.open_store(store).to_dataset()
    done = ds.epoch.values[ds.probed.sel(run="run").values.astype(bool)].tolist()
    assert done == [1, 3]
    assert list(run_info(store)["run"]["skipped"]) == [str(paths[1])]


def test_labels_beyond_the_outputs(tmp_path):
    store, _ = make_store(tmp_path)
    bad = write_probe(tmp_path / "labels7.npz", classes=4)
    data = dict(np.load(bad))
    data["y"][2] = 7  # the model has 4 outputs
    np.savez(bad, **data)
    before = tree_digest(store)
    res = probe(tmp_path / "good", "--probe", bad, "--out", store, "--force")
    assert_refused(res, bad, "label 7 is out of range", "4 classes")
    assert tree_digest(store) == before
