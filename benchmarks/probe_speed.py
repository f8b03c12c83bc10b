"""Speed and memory of nasprobe, whole processes measured side by side (issue 14).

Every figure is a fresh process timed from outside (wall seconds, median of ``--repeats``
runs taken in turn, A B C A B C ...), so imports and start-up count; peak memory is the
child's own ``VmHWM`` (/proc/self/status at exit: ``getrusage`` would count the pages of this
large parent that the child held between fork and exec). Prints:

* start-up: ``nasprobe --help`` (target <= 0.25 s) and ``nasprobe info`` on a demo store
  (target <= 0.8 s);
* the table's job, VanillaNet-m 32×32, 3,072 images, 1 epoch, batch 64, ``--keep-images 0``:
  nasprobe / a plain onnxruntime script (target <= 1.4, stretch 1.25) and / torch forward
  hooks + NAS in torch (target <= 0.45);
* the same network with 2,048 images × 4 epochs: nasprobe / plain (target <= 1.25), and the
  floor — onnxruntime with every tap tensor as an extra output, nothing done with them;
* where the table job's time goes, inside one process (``breakdown.py``): onnxruntime plain
  and with the taps as outputs, the host NAS kernel, the statistics, one probe epoch;
* ResNet-50 (hand-written, benchmarks/resnet50.py) at 224×224, 256 images, 3 epochs, batch 64:
  nasprobe / torch hooks (target <= 0.6), peak RSS of each (target <= 2.5 GB for nasprobe).

Run by hand: ``.venv/bin/python benchmarks/probe_speed.py`` (needs the torch extra; about 4
minutes on an idle 2-core machine, half of it ResNet-50); ``--only startup,table`` picks parts,
``--demo-store PATH`` reuses a store from ``nasprobe demo``.

nasprobe's own modules are byte-compiled first (``compileall``), as ``pip install`` does for a
regular install: in an editable install under ``PYTHONDONTWRITEBYTECODE=1`` (this project's
machines set it) every command would otherwise compile them from source again, about 30 ms per
process that the libraries of the plain script, compiled when installed, never pay.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PARTS = ["startup", "table", "long", "breakdown", "resnet"]
#: CPU seconds of each child command, by argv: on a loaded machine the start-up figures are
#: compared as CPU time (on an idle machine wall time and CPU time of start-up agree)
CPU_SECONDS: dict[tuple, list[float]] = {}
#: runs the nasprobe console script in this interpreter and prints its VmHWM at exit
NASPROBE = ("import atexit, os, re, sys\n"
            "import nasprobe.job.pipeline as p\n"
            "p.HOST_TAP_BUDGET = int(os.environ.get('NASPROBE_TAP_BUDGET', p.HOST_TAP_BUDGET))\n"
            "atexit.register(lambda: print('VmHWM', re.search(r'VmHWM:\\s*(\\d+)', "
            "open('/proc/self/status').read()).group(1), 'kB', file=sys.stderr))\n"
            "from nasprobe.cli import main\nsys.argv[0] = 'nasprobe'\nmain()\n")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def child(argv: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run ``argv``; return (wall seconds, peak MiB or NaN when it does not print VmHWM).
    Its CPU seconds (user + system) are kept in :data:`CPU_SECONDS` under ``argv``."""
    t, c = time.perf_counter(), _children_cpu()
    res = subprocess.run(argv, capture_output=True, text=True,
                         env=None if env is None else {**os.environ, **env})
    wall = time.perf_counter() - t
    CPU_SECONDS.setdefault(tuple(argv), []).append(_children_cpu() - c)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exit {res.returncode}:\n{res.stderr[-2000:]}")
    m = re.search(r"VmHWM (\d+) kB", res.stderr)
    return wall, int(m.group(1)) / 1024 if m else float("nan")


def nasprobe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", NASPROBE, *args]


def baseline(*args: str) -> list[str]:
    return [sys.executable, str(HERE / "baselines.py"), *args]


def side_by_side(commands: dict[str, list[str] | callable], repeats: int) -> dict[str, tuple]:
    """Median (wall s, peak MiB) per command, the commands taken in turn ``repeats`` times.
    A callable gives a fresh command per repeat (e.g. a new store path)."""
    runs: dict[str, list] = {k: [] for k in commands}
    for r in range(repeats):
        for k, cmd in commands.items():
            cmd = cmd(r) if callable(cmd) else cmd
            env = cmd.pop(0) if isinstance(cmd[0], dict) else None  # {VAR: value} first
            runs[k].append(child(cmd, env))
            print(f"    ({k}, run {r + 1}: {runs[k][-1][0]:.2f} s)", file=sys.stderr, flush=True)
    return {k: (statistics.median(w for w, _ in v), max(p for _, p in v))
            for k, v in runs.items()}


def export_vanilla(folder: Path, epochs: int) -> None:
    """VanillaNet-m (64/64/128/128/256, 100 classes) at 32×32: ONNX files and, in
    ``folder/../<name>-pt``, torch state dicts of the same weights."""
    import torch

    sys.path.insert(0, str(HERE))
    from baselines import build_model
    from resnet50 import reweight

    torch.manual_seed(0)
    model = build_model("vanilla")
    folder.mkdir(parents=True)
    first = folder / "epoch_000.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(first), dynamo=True,
                      dynamic_shapes=({0: "N"},), verbose=False)
    reweight(first, folder, epochs)
    state_dicts(folder, model)


def state_dicts(folder: Path, model) -> None:
    """``.pt`` state dicts next to ``folder`` holding each ONNX file's weights (by name)."""
    import onnx
    import torch
    from onnx import numpy_helper

    out = folder.parent / f"{folder.name}-pt"
    out.mkdir(exist_ok=True)
    base = model.state_dict()
    for f in sorted(folder.glob("*.onnx")):
        inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(f)).graph.initializer}
        sd = {k: torch.from_numpy(inits[k].copy()) if k in inits else v for k, v in base.items()}
        missing = [k for k, v in base.items() if k not in inits and v.dtype.is_floating_point]
        if missing:
            raise SystemExit(f"{f}: {len(missing)} torch tensors not in the ONNX file, "
                             f"e.g. {missing[:3]}")
        torch.save(sd, out / f"{f.stem}.pt")


def images(path: Path, n: int, size: int) -> Path:
    np.save(path, np.random.default_rng(0).normal(0, 1, (n, 3, size, size)).astype(np.float32))
    return path


def row(name: str, wall: float, peak: float | None = None) -> None:
    mem = f"   peak {peak:7.0f} MiB" if peak is not None and peak == peak else ""
    print(f"  {name:46s} {wall:8.2f} s{mem}", flush=True)


def ratio(name: str, a: float, b: float, target: str) -> None:
    print(f"  {name:46s} {a / b:8.3f}    (target {target})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts: {','.join(PARTS)}")
    ap.add_argument("--repeats", type=int, default=3, help="runs per command (median)")
    ap.add_argument("--resnet-repeats", type=int, default=1)
    ap.add_argument("--unsplit", action="store_true",
                    help="ResNet-50: also probe with every batch's raw taps at once (the memory "
                         "before the tap budget)")
    ap.add_argument("--demo-store", type=Path, default=None,
                    help="a store from `nasprobe demo` for the info timing (default: make one)")
    args = ap.parse_args()
    parts = args.only.split(",")
    import compileall

    import nasprobe.measures.kernels

    for package in (Path(nasprobe.measures.kernels.__file__).parent, HERE.parent / "adapters"):
        compileall.compile_dir(str(package), quiet=1)

    print(f"nasprobe probe speed — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"C kernel built: {nasprobe.measures.kernels.available()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "startup" in parts:
            store = args.demo_store
            if store is None:
                subprocess.run([str(BIN / "nasprobe"), "demo", "--out", str(tmp / "demo")],
                               check=True, capture_output=True,
                               env={**os.environ, "KERAS_BACKEND": "torch", "MPLBACKEND": "Agg"})
                store = tmp / "demo" / "nas.zarr"
            cmds = {"help": [str(BIN / "nasprobe"), "--help"],
                    "info": [str(BIN / "nasprobe"), "info", str(store)]}
            got = side_by_side(cmds, max(args.repeats, 5))
            cpu = {k: statistics.median(CPU_SECONDS[tuple(v)]) for k, v in cmds.items()}
            print("start-up (median of whole processes; wall, then CPU seconds)")
            row("nasprobe --help  (target <= 0.25 s)", got["help"][0])
            row("  CPU user+sys", cpu["help"])
            row("nasprobe info demo store  (target <= 0.8 s)", got["info"][0])
            row("  CPU user+sys", cpu["info"])
        if {"table", "long", "breakdown"} & set(parts):
            export_vanilla(tmp / "vanilla1", 1)
            export_vanilla(tmp / "vanilla4", 4)
        for part, folder, n in [("table", "vanilla1", 3072), ("long", "vanilla4", 2048)]:
            if part not in parts:
                continue
            probe = images(tmp / f"{part}.npy", n, 32)
            run, pt = tmp / folder, tmp / f"{folder}-pt"
            cmds = {
                "nasprobe": lambda r, p=part, run=run, probe=probe: nasprobe_cmd(
                    "probe", str(run), "--probe", str(probe), "--out", str(tmp / f"{p}{r}.zarr"),
                    "--batch-size", "64", "--keep-images", "0", "--run", "bench"),
                "plain": baseline("ort", str(run), str(probe)),
                "taps": baseline("ort", str(run), str(probe), "--taps"),
            }
            if part == "table":
                cmds["torch"] = baseline("torch", str(pt), str(probe))
            got = side_by_side(cmds, args.repeats)
            epochs = len(list(run.glob("*.onnx")))
            print(f"VanillaNet-m 32x32, {n} images x {epochs} epoch(s), batch 64 "
                  f"(median of {args.repeats})")
            row("nasprobe probe --keep-images 0", *got["nasprobe"])
            row("plain onnxruntime script", *got["plain"])
            row("onnxruntime, taps as outputs (floor)", *got["taps"])
            if "torch" in got:
                row("torch forward hooks + NAS in torch", *got["torch"])
            ratio("nasprobe / plain onnxruntime", got["nasprobe"][0], got["plain"][0],
                  "<= 1.4, stretch 1.25" if part == "table" else "<= 1.25")
            ratio("floor: taps / plain onnxruntime", got["taps"][0], got["plain"][0], "-")
            if "torch" in got:
                ratio("nasprobe / torch hooks", got["nasprobe"][0], got["torch"][0], "<= 0.45")
        if "breakdown" in parts:
            print("where the time goes (one process, VanillaNet-m 32x32, 3072 images)", flush=True)
            probe = tmp / "table.npy"
            if not probe.exists():
                images(probe, 3072, 32)
            subprocess.run([sys.executable, str(HERE / "breakdown.py"), str(tmp / "vanilla1"),
                            str(probe), "--repeats", str(max(args.repeats, 3))], check=True)
        if "resnet" in parts:
            sys.path.insert(0, str(HERE))
            from resnet50 import make_run, resnet50

            run = tmp / "resnet50"
            make_run(run, 3)
            state_dicts(run, resnet50())
            probe = images(tmp / "resnet.npy", 256, 224)
            cmds = {
                "nasprobe": lambda r: nasprobe_cmd(
                    "probe", str(run), "--probe", str(probe), "--out", str(tmp / f"r{r}.zarr"),
                    "--batch-size", "64", "--run", "bench"),
                "torch": baseline("torch", str(tmp / "resnet50-pt"), str(probe),
                                  "--model", "resnet50"),
            }
            if args.unsplit:
                cmds["unsplit"] = lambda r: [{"NASPROBE_TAP_BUDGET": str(2**40)}] + nasprobe_cmd(
                    "probe", str(run), "--probe", str(probe), "--out", str(tmp / f"u{r}.zarr"),
                    "--batch-size", "64", "--run", "bench")
            got = side_by_side(cmds, args.resnet_repeats)
            print(f"ResNet-50 224x224, 256 images x 3 epochs, batch 64 "
                  f"(median of {args.resnet_repeats})")
            row("nasprobe probe", *got["nasprobe"])
            row("torch forward hooks + NAS in torch", *got["torch"])
            ratio("nasprobe / torch hooks", got["nasprobe"][0], got["torch"][0], "<= 0.6")
            print(f"  {'nasprobe peak RSS':46s} {got['nasprobe'][1] / 1024:8.2f} GiB  "
                  "(target <= 2.5 GB)")
            if "unsplit" in got:
                row("nasprobe, a batch's raw taps at once", *got["unsplit"])


if __name__ == "__main__":
    main()
