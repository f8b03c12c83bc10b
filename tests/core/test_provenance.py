"""Provenance survives what users do: a run probed again with another probe set (--force) says
so in ``nasprobe info``; skipped checkpoints are recorded as they happen, so an interrupted
job keeps them, and later jobs add to them instead of replacing them."""

from __future__ import annotations

import importlib

from click.testing import CliRunner

from nasprobe.cli import main
from nasprobe.probe import run_info
from tests.hostile import probe, write_onnx_run, write_probe

job = importlib.import_module("nasprobe.probe")  # the module (nasprobe.probe is the function)


def _info(store) -> str:
    res = CliRunner().invoke(main, ["info", str(store)])
    assert res.exit_code == 0, res.output
    return res.output


def test_run_mixing_probe_sets_is_shown(tmp_path):
    run = tmp_path / "run"
    write_onnx_run(run, epochs=(1, 2))
    a = write_probe(tmp_path / "a.npz", seed=1)
    b = write_probe(tmp_path / "b.npz", seed=2)
    store = tmp_path / "s.zarr"
    assert probe(run, "--probe", a, "--out", store).exit_code == 0
    assert "MIXES" not in _info(store)
    write_onnx_run(tmp_path / "more", epochs=(3,), seed=5)
    (tmp_path / "more" / "epoch_003.onnx").rename(run / "epoch_003.onnx")
    res = probe(run, "--probe", b, "--out", store, "--force")
    assert res.exit_code == 0, (res.output, res.exception)
    assert "run: 3 epochs" in _info(store) and "MIXES 2 probe sets" in _info(store)
    assert len(run_info(store)["run"]["probe_sets"]) == 2


def test_skips_are_kept_when_the_job_is_interrupted(tmp_path, monkeypatch):
    run = tmp_path / "run"
    paths = write_onnx_run(run, epochs=(1, 2, 3, 4))
    paths[1].write_bytes(b"\x8f" * 100)  # epoch 2: not an ONNX file
    probe_path = write_probe(tmp_path / "p.npz")
    store = tmp_path / "s.zarr"
    original, seen = job.run_epoch, []

    def interrupted_at_epoch_3(task):
        if task.epoch == 3:
            raise KeyboardInterrupt
        seen.append(task.epoch)
        return original(task)

    monkeypatch.setattr(job, "run_epoch", interrupted_at_epoch_3)
    res = probe(run, "--probe", probe_path, "--out", store, "--on-error", "skip")
    assert res.exit_code == 130, (res.output, res.exception)
    assert str(paths[1]) in run_info(store)["run"]["skipped"]
    monkeypatch.setattr(job, "run_epoch", original)
    res = probe(run, "--probe", probe_path, "--out", store, "--on-error", "skip")
    assert res.exit_code == 0, (res.output, res.exception)
    out = _info(store)
    assert f"skipped {paths[1]}: not a readable ONNX model" in out
    assert "run: 3 epochs (1..4)" in out

