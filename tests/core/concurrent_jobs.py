"""Helpers for the store tests: probe jobs as real processes started at the same moment, and
comparisons of one run between two stores."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

import nasprobe

# One process per job: imports first, then for each round waits for that round's `go` file,
# so that every job of a round starts probing at the same moment (the imports take seconds,
# the start of probing milliseconds). Rounds repeat the race without paying the imports again.
JOB = """
import os, sys, time
from pathlib import Path
import nasprobe
folder, probe, run, sync, index, *outs = sys.argv[1:]
for i, out in enumerate(outs):
    Path(sync, f"ready-{i}-{index}").touch()
    while not os.path.exists(os.path.join(sync, f"go-{i}")):
        time.sleep(0.001)
    nasprobe.probe([folder], probe=probe, out=out, run=run, batch_size=8, keep_images=2,
                   progress=False)
"""


def run_together(jobs: list[tuple], sync: Path, rounds: int = 1, env: dict | None = None,
                 timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Start one process per ``(folder, probe, run, [out per round])`` and, round after round,
    release them all at once; wait for all. Returns each process's result (code, stderr)."""
    sync.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen(
        [sys.executable, "-c", JOB, str(folder), str(probe), run, str(sync), str(i),
         *map(str, outs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        for i, (folder, probe, run, outs) in enumerate(jobs)]
    deadline = time.time() + timeout
    for r in range(rounds):
        ready = [sync / f"ready-{r}-{i}" for i in range(len(jobs))]
        while not all(f.exists() for f in ready):
            if time.time() > deadline or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.005)
        (sync / f"go-{r}").touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=max(1.0, deadline - time.time()))
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def assert_run_equal(store, ref, run: str) -> None:
    """Run ``run`` holds the same values in ``store`` as in ``ref`` (where it was probed alone):
    every variable of the root and of each heatmap group, over the epochs ``ref`` has."""
    a, b = nasprobe.open_store(store), nasprobe.open_store(ref)
    rb = b.to_dataset()
    eb = rb["epoch"].values[rb["probed"].sel(run=run).values.astype(bool)]
    pa = a.to_dataset()["probed"].sel(run=run, epoch=eb).values
    assert pa.all(), f"run {run}: epochs {eb[~pa.astype(bool)]} missing"
    for node in b.subtree:
        db = node.to_dataset().sel(run=run, epoch=eb)
        da = a[node.path].to_dataset().sel(run=run, epoch=eb)
        for name in db.data_vars:
            x, y = da[name], db[name]
            if "layer" in y.dims:
                x = x.sel(layer=y["layer"].values)
            if x.shape != y.shape:  # heatmaps padded to the largest map of the store
                x = x.isel({d: slice(0, n) for d, n in zip(y.dims, y.shape)})
            np.testing.assert_array_equal(x.values, y.values, err_msg=f"{run} {node.path} {name}")


def snapshot_consistent(snap: xr.DataTree, final: xr.DataTree) -> int:
    """Check that a store read while jobs wrote holds, in every (run, epoch) cell marked
    probed, exactly the final values (never a half-written cell), and nothing elsewhere.
    Returns the number of committed cells the snapshot saw."""
    s = snap.to_dataset()
    probed = s["probed"].astype(bool)
    for r in s["run"].values:
        for e in s["epoch"].values:
            if not probed.sel(run=r, epoch=e):
                assert np.isnan(s["nas_median"].sel(run=r, epoch=e).values).all()
                continue
            for node in final.subtree:
                ds, df = snap[node.path].to_dataset(), node.to_dataset()
                for name in df.data_vars:
                    np.testing.assert_array_equal(ds[name].sel(run=r, epoch=e).values,
                                                  df[name].sel(run=r, epoch=e).values,
                                                  err_msg=f"{r} {e} {node.path} {name}")
    return int(probed.sum())
