"""Provenance survives what users do: a run probed again with another probe set (--force) says
so in ``nasprobe info``; skipped checkpoints are recorded as they happen, so an interrupted
job keeps them, and later jobs add to them instead of replacing them."""

from __future__ import annotations

import html
import json

from click.testing import CliRunner

from nasprobe.cli import main
from nasprobe.job import probe_job as job
from nasprobe.job.probe_job import run_info
from tests.hostile import probe, write_onnx_run, write_probe


def _info(store) -> str:
    res = CliRunner().invoke(main, ["info", str(store)])
    assert res.exit_code == 0, res.output
    return res.output


def _root_sha(store) -> str:
    return json.loads((store / "zarr.json").read_text())["attributes"]["probe_sha256"]


def test_each_epoch_names_its_probe_set(tmp_path, monkeypatch):
    """--force with another probe set: info and the report name which epochs used which probe
    set; a job with another probe set that committed nothing (interrupted) mixes nothing."""
    run = tmp_path / "run"
    write_onnx_run(run, epochs=(1, 2))
    a = write_probe(tmp_path / "a.npz", seed=1)
    b = write_probe(tmp_path / "b.npz", seed=2)
    store = tmp_path / "s.zarr"
    assert probe(run, "--probe", a, "--out", store).exit_code == 0
    assert probe(run, "--probe", b, "--out", tmp_path / "b.zarr").exit_code == 0
    sha_a, sha_b = _root_sha(store), _root_sha(tmp_path / "b.zarr")
    assert sha_a != sha_b
    assert "MIXES" not in _info(store)
    assert run_info(store)["run"]["probe_sets"] == [
        {"sha256": sha_a, "source": str(a), "epochs": [1, 2]}]
    write_onnx_run(tmp_path / "more", epochs=(3, 4), seed=5)
    for e in (3, 4):
        (tmp_path / "more" / f"epoch_{e:03d}.onnx").rename(run / f"epoch_{e:03d}.onnx")

    def interrupted(task, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "probe_checkpoint", interrupted)
    res = probe(run, "--probe", b, "--out", store, "--force")
    assert res.exit_code == 130, (res.output, res.exception)
    assert "MIXES" not in _info(store)  # its group exists, but no epoch of it is shown
    monkeypatch.undo()
    (run / "epoch_004.onnx").rename(tmp_path / "epoch_004.later")
    res = probe(run, "--probe", b, "--out", store, "--force")
    assert res.exit_code == 0, (res.output, res.exception)
    sentence = (f"run 'run' MIXES 2 probe sets: epochs 1, 2 with probe set sha256 "
                f"{sha_a[:12]}… ({a}); epoch 3 with probe set sha256 {sha_b[:12]}… ({b})")
    out = _info(store)
    assert "run: 3 epochs (1..3)" in out and sentence in out, out
    assert run_info(store)["run"]["probe_sets"] == [
        {"sha256": sha_a, "source": str(a), "epochs": [1, 2]},
        {"sha256": sha_b, "source": str(b), "epochs": [3]}]
    res = CliRunner().invoke(main, ["report", str(store), "--out", str(tmp_path / "r.html"),
                                    "--kind", "line"])
    assert res.exit_code == 0, (res.output, res.exception)
    page = (tmp_path / "r.html").read_text()
    assert f'<p class="warning mixed-probe-sets">{html.escape(sentence)}' in page
    # A later job with the store's own probe set adds epoch 4 to the first set.
    (tmp_path / "epoch_004.later").rename(run / "epoch_004.onnx")
    assert probe(run, "--probe", a, "--out", store).exit_code == 0
    assert [s["epochs"] for s in run_info(store)["run"]["probe_sets"]] == [[1, 2, 4], [3]]
    assert "epochs 1, 2, 4 with probe set sha256" in _info(store)


def test_skips_are_kept_when_the_job_is_interrupted(tmp_path, monkeypatch):
    run = tmp_path / "run"
    paths = write_onnx_run(run, epochs=(1, 2, 3, 4))
    paths[1].write_bytes(b"\x8f" * 100)  # epoch 2: not an ONNX file
    probe_path = write_probe(tmp_path / "p.npz")
    store = tmp_path / "s.zarr"
    original, seen = job.probe_checkpoint, []

    def interrupted_at_epoch_3(task, **kw):
        if task.epoch == 3:
            raise KeyboardInterrupt
        seen.append(task.epoch)
        return original(task, **kw)

    monkeypatch.setattr(job, "probe_checkpoint", interrupted_at_epoch_3)
    res = probe(run, "--probe", probe_path, "--out", store, "--on-error", "skip")
    assert res.exit_code == 130, (res.output, res.exception)
    assert str(paths[1]) in run_info(store)["run"]["skipped"]
    monkeypatch.setattr(job, "probe_checkpoint", original)
    res = probe(run, "--probe", probe_path, "--out", store, "--on-error", "skip")
    assert res.exit_code == 0, (res.output, res.exception)
    out = _info(store)
    assert f"skipped {paths[1]}: not a readable ONNX model" in out
    assert "run: 3 epochs (1..4)" in out

