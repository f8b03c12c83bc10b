"""The store on object storage (issue 13): a real S3 server (moto in server mode, started by
the ``s3_server`` fixture on a free local port) holds the store, the checkpoints and the
probe set. Concurrent jobs, Dask workers (one killed mid-task) and readers during writes."""

import os
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main
from nasprobe.store.runs import committed_epochs
from nasprobe.store.storage import location
from tests.core import onnx_models as om
from tests.core.concurrent_jobs import assert_run_equal, run_together, snapshot_consistent
from tests.core.conftest import write_run, write_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run folders a..d (3 epochs each), a labelled probe set, and a local reference store
    holding all four runs probed serially."""
    root = tmp_path_factory.mktemp("s3runs")
    probe = write_runs(root, "abcd", last=4, seed=20, probe_seed=3)
    ref = root / "serial.zarr"
    nasprobe.probe([root / n for n in "abcd"], probe=probe, out=ref, batch_size=8,
                   keep_images=2, progress=False)
    return root, probe, ref


def test_cli_reads_and_writes_s3(runs, s3_bucket, tmp_path, monkeypatch):
    """Checkpoint folders, probe set and store all on S3: the store equals the local one, and
    no local folder named after the URL appears."""
    root, probe, ref = runs
    fs = fsspec.filesystem("s3")
    for name in "ab":
        fs.put(str(root / name), f"{s3_bucket}/ckpt/{name}", recursive=True)
    fs.put_file(str(probe), f"{s3_bucket}/probe.npz")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NASPROBE_CACHE", str(tmp_path / "cache"))
    out = f"{s3_bucket}/nas.zarr"
    res = CliRunner().invoke(main, ["probe", f"{s3_bucket}/ckpt/a", f"{s3_bucket}/ckpt/b",
                                    "--probe", f"{s3_bucket}/probe.npz", "--out", out,
                                    "--batch-size", "8", "--keep-images", "2"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no "s3:" folder
    for name in "ab":
        assert_run_equal(out, ref, name)
    tree = nasprobe.open_store(out)
    assert tree.attrs["probe_source"] == f"{s3_bucket}/probe.npz"
    assert f'"source": "{s3_bucket}/ckpt/a"' in tree.attrs["runs"]
    res = CliRunner().invoke(main, ["info", out])
    assert res.exit_code == 0 and "a: 3 epochs" in res.output, res.output


def test_four_jobs_on_s3_all_land(runs, s3_bucket, tmp_path, s3_server):
    """Four processes released at once into one S3 store (different runs, then the same run
    twice more): every run lands whole and equals the serial store's."""
    root, probe, ref = runs
    outs = [f"{s3_bucket}/s{i}.zarr" for i in range(2)]
    results = run_together([(root / r, probe, r, outs[:1]) for r in "abcd"], tmp_path / "sync")
    assert [r.returncode for r in results] == [0] * 4, [r.stderr[-2000:] for r in results]
    for r in "abcd":
        assert_run_equal(outs[0], ref, r)
    results = run_together([(root / "d", probe, "d", outs[1:])] * 4, tmp_path / "sync-same")
    assert [r.returncode for r in results] == [0] * 4, [r.stderr[-2000:] for r in results]
    assert sorted(committed_epochs(location(outs[1]), "d")) == [1, 2, 7]
    assert_run_equal(outs[1], ref, "d")


def test_dask_workers_write_s3_and_survive_a_killed_worker(runs, s3_bucket, tmp_path):
    """A process-based LocalCluster whose workers write straight to S3 gives the serial store;
    a worker SIGKILLed just before a commit (its chunks written) leaves it complete."""
    from distributed import Client, LocalCluster

    from tests.core.test_parallel import KillBeforeCommitOnce

    root, probe, ref = runs
    out = f"{s3_bucket}/dask.zarr"
    marker = tmp_path / "killed-once"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as lc, Client(lc) as client:
        client.register_plugin(KillBeforeCommitOnce(marker))
        nasprobe.probe([root / n for n in "abcd"], probe=probe, out=out, batch_size=8,
                       keep_images=2, progress=False, scheduler=client)
    assert marker.exists()
    got, want = nasprobe.open_store(out), nasprobe.open_store(ref)
    assert got.to_dataset()["run"].values.tolist() == list("abcd")
    for r in "abcd":
        assert_run_equal(out, ref, r)
    assert sorted(n.path for n in got.subtree) == sorted(n.path for n in want.subtree)


def test_readers_during_writes_on_s3(tmp_path, s3_bucket):
    """open_store, `nasprobe info` and `nasprobe report` on S3 while a job writes there see
    only committed cells. (40 epochs: a serial job commits in blocks of up to 16 epochs, see
    docs/store-design.md.)"""
    folder = tmp_path / "run"
    write_run(folder, om.conv_bn_relu_net, [f"epoch_{i:03d}.onnx" for i in range(40)])
    rng = np.random.default_rng(2)
    probe = tmp_path / "probe.npz"
    # 4,096 images: a block of epochs takes about a second (a job commits at least once per
    # second of work), long enough for the readers to see the store between two commits; with
    # 96 images the next block could be committed 0.1 s after the first, before the first
    # reader had opened the store
    np.savez(probe, x=rng.normal(0, 1, (4096, 3, 8, 8)).astype(np.float32),
             y=rng.integers(0, 4, 4096))
    out = f"{s3_bucket}/live.zarr"
    legacy = __file__.rsplit("/", 1)[0] + "/data/store-0.1.0.zarr"  # warm the report's imports
    warm = CliRunner().invoke(main, ["report", legacy, "--out", str(tmp_path / "w.html")])
    assert warm.exit_code == 0, warm.output
    proc = subprocess.Popen([sys.executable, "-m", "nasprobe", "probe", str(folder), "--probe",
                             str(probe), "--out", out, "--run", "r", "--batch-size", "8"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    loc, snaps = location(out), []
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if not committed_epochs(loc, "r"):
            time.sleep(0.05)
            continue
        snaps.append(nasprobe.open_store(out))
        if len(snaps) == 1:
            res = CliRunner().invoke(main, ["info", out])
            assert res.exit_code == 0 and "r: " in res.output, res.output
            res = CliRunner().invoke(main, ["report", out, "--out", str(tmp_path / "r.html")])
            assert res.exit_code == 0, res.output
            assert "<html" in (tmp_path / "r.html").read_text(encoding="utf-8").lower()
    assert proc.wait() == 0, proc.stderr.read()
    final = nasprobe.open_store(out)
    seen = [snapshot_consistent(s, final) for s in snaps]
    assert any(0 < n < 40 for n in seen), seen
    assert seen == sorted(seen)
