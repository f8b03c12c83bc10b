"""Many probe jobs into one store, and the store on object storage (issue 13).

Prints:

  (1) N jobs, one run each (4 epochs of a small conv net), released at the same moment into
      a store that already holds run `a`, ROUNDS times: runs landed / lost per round;
  (2) with --s3: the time of one 4-run job writing its store on local disk vs on a local
      S3 server (moto in server mode, started here), and of open_store on each.

Run by hand from the repository root: ``.venv/bin/python benchmarks/concurrent_store.py``
(``--jobs 8 --rounds 3 --s3``). Set PYTHONPATH to another checkout to measure its code
(part 1 only uses ``nasprobe.probe`` and ``nasprobe.open_store``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nasprobe  # noqa: E402
from tests.core import onnx_models as om  # noqa: E402
from tests.core.concurrent_jobs import run_together  # noqa: E402
from tests.core.conftest import write_run  # noqa: E402

EPOCHS = 4


def make_runs(root: Path, names: list[str]) -> Path:
    """Run folders (EPOCHS checkpoints each) and a labelled probe set; returns the probe set."""
    for i, name in enumerate(names):
        write_run(root / name, om.conv_bn_relu_net, [f"epoch_{e:03d}.onnx" for e in range(EPOCHS)],
                  seed=i)
    rng = np.random.default_rng(0)
    probe = root / "probe.npz"
    np.savez(probe, x=rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 64))
    return probe


def concurrent(root: Path, probe: Path, jobs: int, rounds: int) -> None:
    names = [f"r{i:02d}" for i in range(jobs)]
    outs = [root / f"round{r}.zarr" for r in range(rounds)]
    for out in outs:
        nasprobe.probe([root / "a"], probe=probe, out=out, run="a", batch_size=16,
                       progress=False)
    t = time.perf_counter()
    results = run_together([(root / n, probe, n, outs) for n in names], root / "sync",
                           rounds=rounds, timeout=1800)
    wall = time.perf_counter() - t
    codes = [r.returncode for r in results]
    for r, out in enumerate(outs):
        ds = nasprobe.open_store(out).to_dataset()
        have = set(ds["run"].values.tolist())
        complete = {n for n in have if bool(ds["probed"].sel(run=n).values.sum() == EPOCHS)}
        want = {"a", *names}
        print(f"round {r}: {jobs} jobs at once into a store holding run a: "
              f"{len(want & complete)}/{len(want)} runs landed whole, "
              f"{len(want - complete)} lost or incomplete {sorted(want - complete)}")
    counts = {c: codes.count(c) for c in sorted(set(codes))}
    print(f"{jobs} processes, exit codes (code: processes) {counts}; {rounds} rounds took "
          f"{wall:.1f} s")


def moto_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}")
    return proc, f"http://127.0.0.1:{port}"


def local_vs_s3(root: Path, probe: Path) -> None:
    import fsspec

    proc, _ = moto_server()
    try:
        fsspec.filesystem("s3").mkdir("bench")
        runs = [root / n for n in ("r00", "r01", "r02", "r03")]
        nasprobe.probe(runs, probe=probe, out=root / "warm.zarr", batch_size=16, progress=False)
        for label, out in (("local disk", root / "four.zarr"), ("moto S3", "s3://bench/four.zarr")):
            t = time.perf_counter()
            nasprobe.probe(runs, probe=probe, out=out, batch_size=16, progress=False)
            w = time.perf_counter() - t
            t = time.perf_counter()
            nasprobe.open_store(out)
            r = time.perf_counter() - t
            print(f"4-run job ({4 * EPOCHS} epochs) on {label}: write {w:.2f} s, "
                  f"open_store {r:.2f} s")
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--s3", action="store_true", help="also time local disk vs a moto server")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nasprobe-bench-"))
    try:
        probe = make_runs(root, ["a"] + [f"r{i:02d}" for i in range(max(args.jobs, 4))])
        concurrent(root, probe, args.jobs, args.rounds)
        if args.s3:
            local_vs_s3(root, probe)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
