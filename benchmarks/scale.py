"""Scaling of a probe job over runs and workers (issue 6).

RUNS runs × EPOCHS epochs of a VanillaNet-s-like ONNX model built by hand (conv 16/16, max
pool, conv 32/32, max pool, fc 64, fc 10 at 3×32×32; ReLU after each but the last), probe set
of IMAGES images. Prints:

  wall time serial (one process) vs a local Dask cluster of 2 worker processes (1 thread each),
  and their ratio (cluster start-up shown separately);
  peak RSS of the serial process for the whole job and for 1 run × 2 epochs (memory must not
  grow with runs or epochs), and the peak RSS of each Dask worker.

Needs only the core and the ``dask`` extra. Run by hand: ``.venv/bin/python benchmarks/scale.py``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RUNS, EPOCHS, IMAGES, BATCH = 8, 20, 256, 64


def vanilla_s(rng: np.random.Generator) -> onnx.ModelProto:
    """The VanillaNet-s-like graph with fresh He-normal weights."""
    inits, nodes = [], []

    def w(name, shape, fan_in):
        inits.append(numpy_helper.from_array(
            rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32), name))

    x = "x"
    for i, (cin, cout) in enumerate([(3, 16), (16, 16), (16, 32), (32, 32)], 1):
        w(f"conv{i}.weight", (cout, cin, 3, 3), cin * 9)
        w(f"conv{i}.bias", (cout,), 1e4)
        nodes += [helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"],
                                   name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
        if i in (2, 4):
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"p{i}"
    nodes.append(helper.make_node("Flatten", [x], ["f"]))
    w("fc1.weight", (64, 32 * 8 * 8), 32 * 64)
    w("fc1.bias", (64,), 1e4)
    w("fc2.weight", (10, 64), 64)
    w("fc2.bias", (10,), 1e4)
    nodes += [helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["g1"], name="fc1", transB=1),
              helper.make_node("Relu", ["g1"], ["h1"]),
              helper.make_node("Gemm", ["h1", "fc2.weight", "fc2.bias"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "vanilla_s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def make_runs(root: Path) -> list[Path]:
    folders = []
    for r in range(RUNS):
        rng = np.random.default_rng(r)
        folder = root / f"run{r}"
        folder.mkdir(parents=True)
        for e in range(EPOCHS):
            onnx.save(vanilla_s(rng), str(folder / f"epoch_{e:03d}.onnx"))
        folders.append(folder)
    rng = np.random.default_rng(99)
    np.savez(root / "probe.npz", x=rng.normal(0, 1, (IMAGES, 3, 32, 32)).astype(np.float32),
             y=rng.integers(0, 10, IMAGES))
    return folders


def serial_child(folders: list[Path], probe: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a fresh process probing ``folders`` serially."""
    code = ("import re, sys, time, nasprobe; t = time.perf_counter(); "
            "nasprobe.probe(sys.argv[3:], probe=sys.argv[1], out=sys.argv[2], "
            f"batch_size={BATCH}, progress=False); "
            "peak = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1]; "
            "print(time.perf_counter() - t, peak)")
    res = subprocess.run([sys.executable, "-c", code, str(probe), str(out), *map(str, folders)],
                         check=True, capture_output=True, text=True)
    wall, peak = res.stdout.strip().splitlines()[-1].split()
    return float(wall), int(peak) / 1024


def _worker_peak_mib() -> float:
    """This process's peak RSS in MiB, from ``VmHWM`` (reset at exec, unlike ``ru_maxrss``,
    which also counts the parent's pages held between fork and exec)."""
    import re

    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s*(\d+)", f.read())[1]) / 1024


def main() -> None:
    from distributed import Client, LocalCluster

    import nasprobe

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = make_runs(root)
        probe = root / "probe.npz"
        _, small_peak = serial_child(folders[:1], probe, root / "small.zarr")
        t_serial, serial_peak = serial_child(folders, probe, root / "serial.zarr")
        t0 = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            t_start = time.perf_counter() - t0
            t = time.perf_counter()
            nasprobe.probe(folders, probe=probe, out=root / "dask.zarr", batch_size=BATCH,
                           progress=False, scheduler=client)
            t_dask = time.perf_counter() - t
            peaks = client.run(_worker_peak_mib)
        a = nasprobe.open_store(root / "serial.zarr").to_dataset()
        b = nasprobe.open_store(root / "dask.zarr").to_dataset()
        same = bool((a.nas_median.fillna(-1) == b.nas_median.fillna(-1)).all())
    n = RUNS * EPOCHS
    print(f"{RUNS} runs x {EPOCHS} epochs of VanillaNet-s-like ONNX, {IMAGES} probe images, "
          f"batch {BATCH}")
    print(f"serial: {t_serial:.1f} s ({n / t_serial:.1f} epochs/s), peak RSS {serial_peak:.0f} MiB "
          f"(1 run x {EPOCHS} epochs: {small_peak:.0f} MiB)")
    print(f"dask 2 workers: {t_dask:.1f} s ({n / t_dask:.1f} epochs/s) + {t_start:.1f} s cluster "
          f"start; peak RSS per worker: " + ", ".join(f"{v:.0f} MiB" for v in peaks.values()))
    print(f"speed-up serial / dask = {t_serial / t_dask:.2f}  (stores equal: {same})")


if __name__ == "__main__":
    main()
