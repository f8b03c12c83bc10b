"""A probe killed with SIGKILL and run again gives the store of an uninterrupted run.

A serial job commits its epochs in blocks (chunks of 16 epochs, or a second of work: see
docs/store-design.md), so the run has 40 epochs: the job is killed after a block was committed
and before the last."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import xarray as xr

import nasprobe
from tests.core import onnx_models as om
from tests.core.conftest import write_run

EPOCHS = 40


def _committed(store):
    """Epochs of run ``r`` committed so far (their commit markers, see docs/store-design.md)."""
    folder = store / "runs" / "r" / "commits"
    return len([f for f in os.listdir(folder) if f.isdigit()]) if folder.exists() else 0


def _cmd(folder, probe, store):
    return [sys.executable, "-m", "nasprobe", "probe", str(folder), "--probe", str(probe),
            "--out", str(store), "--run", "r", "--batch-size", "16"]


def test_resume_after_kill(tmp_path):
    folder = tmp_path / "run"
    write_run(folder, om.conv_bn_relu_net, [f"epoch_{i:03d}.onnx" for i in range(EPOCHS)])
    rng = np.random.default_rng(0)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=rng.normal(0, 1, (200, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 200))

    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_cmd(folder, probe, killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _committed(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _committed(killed)
    assert 3 <= done_before < EPOCHS, "the process must be killed mid-run"

    subprocess.run(_cmd(folder, probe, killed), check=True, capture_output=True)
    whole = tmp_path / "whole.zarr"
    nasprobe.probe([folder], probe=probe, out=whole, run="r", batch_size=16, progress=False)

    a, b = nasprobe.open_store(killed), nasprobe.open_store(whole)
    assert list(a.to_dataset().epoch.values) == list(range(EPOCHS))
    for node in ["/", "heatmaps/conv1", "heatmaps/fc"]:
        da, db = a[node].to_dataset(inherit=False), b[node].to_dataset(inherit=False)
        for name in db.data_vars:
            xr.testing.assert_equal(da[name], db[name])
