"""`make gpu-smoke`: nasprobe[gpu] from a fresh venv, checked against this (CPU) build.

Writes a 3-epoch ONNX run of a small conv net and a labelled probe set, probes it with the CPU
build (``--device cpu``) and with the gpu venv (``--device cuda``), and checks:

* without a working CUDA (no GPU, or no driver): exit 0, exactly one notice of ours on stderr
  and none of onnxruntime's own log, provider ``CPUExecutionProvider``, NAS on the host, and a
  store equal to the CPU build's to 1e-6; ``nasprobe doctor`` lists CUDA as not starting with
  the reason in one line;
* with a working CUDA: provider ``CUDAExecutionProvider``, NAS in the graph, statistics within
  1e-4 of the CPU build's (GPU convolutions round differently).

Run by ``make gpu-smoke``; usage: ``python scripts/gpu_smoke.py --gpu-venv .venv-gpu``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STATS = ["nas_median", "nas_mean", "nas_min", "nas_max", "entropy_mean", "nas_quantile",
         "loss", "accuracy"]


def conv_net(rng: np.random.Generator) -> onnx.ModelProto:
    """conv(3→8) → relu → conv(8→6) → relu → global pool → gemm(6→4), NCHW 12×12."""
    def init(name, shape, scale=0.5):
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [init("c1.w", (8, 3, 3, 3)), init("c1.b", (8,), 0.1), init("c2.w", (6, 8, 3, 3)),
             init("c2.b", (6,), 0.1), init("fc.w", (4, 6)), init("fc.b", (4,), 0.1)]
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["h1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["h2"], name="conv2"),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "smoke", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-venv", required=True, type=Path)
    args = ap.parse_args()
    gpu_bin = args.gpu_venv / "bin"
    cpu_bin = Path(sys.executable).parent
    fails: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            fails.append(what)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rng = np.random.default_rng(0)
        run = tmp / "smoke"
        run.mkdir()
        for e in range(3):
            onnx.save(conv_net(rng), str(run / f"epoch_{e:03d}.onnx"))
        np.savez(tmp / "probe.npz", x=rng.normal(0, 1, (40, 3, 12, 12)).astype(np.float32),
                 y=rng.integers(0, 4, 40))

        def probe(bin_dir: Path, device: str, out: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(bin_dir / "nasprobe"), "probe", str(run), "--probe",
                                   str(tmp / "probe.npz"), "--out", str(tmp / out),
                                   "--device", device, "--batch-size", "16"],
                                  capture_output=True, text=True)

        doctor = subprocess.run([str(gpu_bin / "nasprobe"), "doctor"], capture_output=True,
                                text=True)
        print("nasprobe doctor (gpu venv):")
        print("".join(f"    {line}\n" for line in doctor.stdout.splitlines()), end="")
        cuda = [line for line in doctor.stdout.splitlines()
                if line.strip().startswith("CUDAExecutionProvider")]
        check(doctor.returncode == 0 and len(cuda) == 1, "doctor lists CUDAExecutionProvider")
        works = bool(cuda) and cuda[0].split(None, 1)[1].strip() == "works"

        ref = probe(cpu_bin, "cpu", "cpu.zarr")
        check(ref.returncode == 0, f"CPU build probes (exit {ref.returncode}) {ref.stderr[-300:]}")
        res = probe(gpu_bin, "cuda", "gpu.zarr")
        print("gpu venv, --device cuda, stderr:")
        print("".join(f"    {line}\n" for line in res.stderr.splitlines()), end="")
        check(res.returncode == 0, f"gpu venv probes (exit {res.returncode})")
        if res.returncode or ref.returncode:
            return 1

        import nasprobe

        a = nasprobe.open_store(tmp / "cpu.zarr").to_dataset()
        b = nasprobe.open_store(tmp / "gpu.zarr").to_dataset()
        prov = json.loads(b.attrs["runs"])["smoke"]
        notices = [line for line in res.stderr.splitlines() if line.startswith("nasprobe:")]
        if works:
            print("CUDA works here: checking the GPU path")
            check(prov["provider"] == "CUDAExecutionProvider", f"provider {prov['provider']}")
            check(prov["nas_on"] == "graph", f"NAS computed in {prov['nas_on']}")
            tol = 1e-4
        else:
            print("CUDA does not start here: checking the fallback path")
            check(len(notices) == 1 and "CUDA could not start" in notices[0],
                  "exactly one notice of ours")
            check("onnxruntime:" not in res.stderr and "\x1b[" not in res.stderr,
                  "no raw onnxruntime log on stderr")
            check(prov["provider"] == "CPUExecutionProvider", f"provider {prov['provider']}")
            check(prov["nas_on"] == "host", f"NAS computed in {prov['nas_on']}")
            tol = 1e-6
        for var in STATS:
            diff = float(np.nanmax(np.abs(b[var].values - a[var].values)))
            check(diff <= tol, f"{var} equal to the CPU build's (max |diff| {diff:.1e} <= {tol})")
        check(np.array_equal(a.probed.values, b.probed.values), "same epochs probed")
    print("gpu-smoke:", "FAILED: " + "; ".join(fails) if fails else "passed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
