"""Speed and memory of nasprobe, whole processes measured side by side (issues 14 and 25).

Every figure is a fresh process timed from outside (wall and CPU seconds, medians of
``--repeats`` runs taken in turn, A B C A B C ...), so imports and start-up count; peak memory is
the child's own ``VmHWM`` (/proc/self/status at exit: ``getrusage`` would count the pages of this
large parent that the child held between fork and exec).

Each ``--python`` is the interpreter of one environment with nasprobe installed (default: the
one running this script); every command below runs in each of them, interleaved, and each row is
printed per environment — e.g. the lock's ``.venv/bin/python`` and a venv made the way a user
installs: ``make dist``, then ``python -m venv v && v/bin/pip install "dist/nasprobe-…whl[cpu,torch]"``
(the built wheel, no constraints: it resolves the newest releases, which is how the ml_dtypes
0.7 start-up cost was found, and has no editable-install finder on its import path). The
models and probe sets are made once, by the interpreter running this script (it needs torch).
Prints:

* the environments: Python and the versions of numpy, ml_dtypes, onnx, onnxruntime, zarr;
* start-up: ``nasprobe --help`` (target <= 0.25 s) and ``nasprobe info`` on a demo store
  (target <= 0.5 s);
* ``tiny``: the fixed cost of a job, a 4-layer CNN, one epoch, 8 images of 16×16:
  nasprobe minus a plain onnxruntime script (target <= 0.3 s);
* ``imports``: ``python -X importtime`` of that tiny job: the modules whose own import costs
  most, and the packages it loads that the plain script does not;
* the table's job, VanillaNet-m 32×32, 3,072 images, 1 epoch, batch 64, ``--keep-images 0``:
  nasprobe / a plain onnxruntime script (target <= 1.35) and / torch forward hooks + NAS in
  torch (target <= 0.40);
* the same network with 2,048 images × 4 epochs: nasprobe / plain (target <= 1.30), and the
  floor — the plain script on copies of the graphs with every tap tensor as an extra output
  (both table and four epochs also print that floor with NAS computed on every output);
* ``many``: 100 checkpoints of the tiny CNN on 256 images: nasprobe / plain, the floor (the
  plain script on copies with every tap tensor as an output) / plain, that floor with NAS
  computed on every tap output by nasprobe's kernel (``baselines.py ort-nas``: no statistics,
  no store) / plain, nasprobe / that floor + NAS (target <= 1.30: the least work of a NAS tool
  on this job is already over 1.30 × plain, see the README), and the peak memory of 25 and of
  100 checkpoints (flat in the number of checkpoints); from the same job on 25 checkpoints,
  each command's cost per checkpoint and its fixed cost;
* ``bounds``: that job again with the statistics fold, the weight correlations and the NAS
  kernel each replaced by a no-op, and all three at once: how far a faster part could bring
  the row at most;
* where the table job's time goes, inside one process of this script's interpreter
  (``breakdown.py``): onnxruntime plain and with the taps as outputs, the host NAS kernel, the
  statistics, one probe epoch;
* ResNet-50 (hand-written, benchmarks/resnet50.py) at 224×224, 256 images, 3 epochs, batch 64:
  nasprobe / torch hooks (target <= 0.6), peak RSS of each (target <= 2.5 GB for nasprobe).

The plain script (``baselines.py ort``) imports numpy and onnxruntime only, as a user's own
script does. On a loaded machine compare the CPU seconds: wall time then includes waiting for
a core.

Run by hand: ``.venv/bin/python benchmarks/probe_speed.py [--python OTHER/bin/python]`` (needs
the torch extra; about 4 minutes per environment on an idle 2-core machine, half of it
ResNet-50); ``--only startup,tiny,imports,table`` picks parts, ``--demo-store PATH`` reuses a
store from ``nasprobe demo``.

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
from dataclasses import dataclass
from pathlib import Path

from bench_models import export_vanilla, images, state_dicts, tiny_cnn

HERE = Path(__file__).resolve().parent
PARTS = ["startup", "tiny", "imports", "table", "long", "many", "bounds", "breakdown",
         "resnet"]
#: the distributions whose versions are printed per environment
VERSIONS = ["numpy", "ml_dtypes", "onnx", "onnxruntime", "zarr", "protobuf", "torch"]
#: runs the nasprobe console script in this interpreter and prints its VmHWM at exit
NASPROBE = ("import atexit, os, re, sys\n"
            "try:\n    import nasprobe.job.pipeline as p\n"  # before issue 23: nasprobe.pipeline
            "except ImportError:\n    import nasprobe.pipeline as p\n"
            "p.HOST_TAP_BUDGET = int(os.environ.get('NASPROBE_TAP_BUDGET', p.HOST_TAP_BUDGET))\n"
            "atexit.register(lambda: print('VmHWM', re.search(r'VmHWM:\\s*(\\d+)', "
            "open('/proc/self/status').read()).group(1), 'kB', file=sys.stderr))\n"
            "try:\n    from nasprobe.cli import run\n"  # the console script's entry point
            "except ImportError:\n    from nasprobe.cli import main as run\n"
            "sys.argv[0] = 'nasprobe'\nrun()\n")


@dataclass
class Env:
    """One environment: a label and its interpreter."""

    label: str
    python: str

    def nasprobe(self, *args: str) -> list[str]:
        return [self.python, "-c", NASPROBE, *args]

    def script(self) -> list[str]:
        """The console script (start-up figures), else the interpreter running the CLI."""
        exe = Path(self.python).parent / "nasprobe"
        return [str(exe)] if exe.exists() else [self.python, "-m", "nasprobe"]

    def baseline(self, *args: str) -> list[str]:
        return [self.python, str(HERE / "baselines.py"), *args]


@dataclass
class Timing:
    """Medians of wall and CPU (user + system) seconds, largest peak MiB."""

    wall: float
    cpu: float
    peak: float


def environments(pythons: list[str]) -> list[Env]:
    envs = []
    for py in pythons:  # a venv's interpreter is a link: its folder names the environment
        path = Path(py).absolute()
        label = path.parent.parent.name if path.parent.name == "bin" else py
        while label in {e.label for e in envs}:
            label += "'"
        envs.append(Env(label, str(path)))
    return envs


def describe(env: Env) -> str:
    """Python and the versions that decide start-up, read without importing them."""
    code = ("import importlib.metadata as m, sys\nv = []\n"
            f"for d in {VERSIONS!r}:\n"
            "    try:\n        v.append(f'{d} {m.version(d)}')\n"
            "    except m.PackageNotFoundError:\n        v.append(f'{d} -')\n"
            "print(f'Python {sys.version.split()[0]},', ', '.join(v))")
    return subprocess.run([env.python, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def child(argv: list[str], env: dict | None = None) -> tuple[float, float, float]:
    """Run ``argv``; return (wall s, CPU s user + system, peak MiB or NaN when it does not
    print VmHWM)."""
    t, c = time.perf_counter(), _children_cpu()
    res = subprocess.run(argv, capture_output=True, text=True,
                         env=None if env is None else {**os.environ, **env})
    wall, cpu = time.perf_counter() - t, _children_cpu() - c
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exit {res.returncode}:\n{res.stderr[-2000:]}")
    m = re.search(r"VmHWM (\d+) kB", res.stderr)
    return wall, cpu, int(m.group(1)) / 1024 if m else float("nan")


def side_by_side(commands: dict[str, list[str] | callable], repeats: int) -> dict[str, Timing]:
    """Medians per command, the commands taken in turn ``repeats`` times. A callable gives a
    fresh command per repeat (e.g. a new store path); a dict first in a command is its
    environment variables."""
    runs: dict[str, list] = {k: [] for k in commands}
    for r in range(repeats):
        for k, cmd in commands.items():
            cmd = list(cmd(r) if callable(cmd) else cmd)
            env = cmd.pop(0) if isinstance(cmd[0], dict) else None
            runs[k].append(child(cmd, env))
            print(f"    ({k}, run {r + 1}: {runs[k][-1][0]:.2f} s)", file=sys.stderr, flush=True)
    return {k: Timing(statistics.median(w for w, _, _ in v), statistics.median(c for _, c, _ in v),
                      max(p for _, _, p in v)) for k, v in runs.items()}


def row(name: str, t: Timing, cpu: bool = False) -> None:
    mem = f"   peak {t.peak:7.0f} MiB" if t.peak == t.peak else ""
    extra = f"   CPU {t.cpu:6.2f} s" if cpu else ""
    print(f"  {name:48s} {t.wall:8.2f} s{extra}{mem}", flush=True)


def ratio(name: str, a: Timing, b: Timing, target: str) -> None:
    print(f"  {name:48s} {a.wall / b.wall:8.3f}    (CPU {a.cpu / b.cpu:.3f}; target {target})",
          flush=True)


def startup(envs: list[Env], store: Path, repeats: int) -> None:
    cmds = {}
    for e in envs:
        cmds[f"help@{e.label}"] = [*e.script(), "--help"]
        cmds[f"info@{e.label}"] = [*e.script(), "info", str(store)]
    got = side_by_side(cmds, max(repeats, 5))
    print("start-up (median of whole processes; wall, then CPU user+sys)")
    for e in envs:
        row(f"[{e.label}] nasprobe --help  (target <= 0.25 s)", got[f"help@{e.label}"], cpu=True)
        row(f"[{e.label}] nasprobe info demo store  (target <= 0.5 s)", got[f"info@{e.label}"],
            cpu=True)


def tiny(envs: list[Env], tmp: Path, repeats: int) -> None:
    run, probe = tmp / "tiny", images(tmp / "tiny.npy", 8, 16)
    if not run.exists():
        tiny_cnn(run)
    cmds = {}
    for e in envs:
        cmds[f"nasprobe@{e.label}"] = lambda r, e=e: e.nasprobe(
            "probe", str(run), "--probe", str(probe), "--out", str(tmp / f"tiny-{e.label}{r}.zarr"),
            "--keep-images", "0", "--run", "bench")
        cmds[f"plain@{e.label}"] = e.baseline("ort", str(run), str(probe))
    got = side_by_side(cmds, max(repeats, 5))
    print(f"tiny job: 4-layer CNN, 8 images of 16x16, 1 epoch (median of {max(repeats, 5)})")
    for e in envs:
        a, b = got[f"nasprobe@{e.label}"], got[f"plain@{e.label}"]
        row(f"[{e.label}] nasprobe probe --keep-images 0", a, cpu=True)
        row(f"[{e.label}] plain onnxruntime script", b, cpu=True)
        print(f"  {f'[{e.label}] nasprobe - plain  (target <= 0.3 s)':48s} {a.wall - b.wall:8.2f} s"
              f"   CPU {a.cpu - b.cpu:6.2f} s", flush=True)


def many_inputs(tmp: Path) -> tuple[dict[int, Path], Path]:
    """Folders of 25 and of 100 copies of the tiny CNN's checkpoint (each copy loaded as its
    own epoch) and the probe set of 256 images of 16×16, made once."""
    src = tmp / "tiny"
    if not src.exists():
        tiny_cnn(src)
    (one,) = src.glob("*.onnx")
    probe = images(tmp / "many.npy", 256, 16)
    runs = {}
    for n in (25, 100):
        runs[n] = tmp / f"many{n}"
        runs[n].mkdir(exist_ok=True)
        for i in range(n):
            target = runs[n] / f"epoch_{i:03d}.onnx"
            if not target.exists():
                target.write_bytes(one.read_bytes())
    return runs, probe


def many(envs: list[Env], tmp: Path, repeats: int) -> None:
    """100 checkpoints of the tiny CNN (copies of one file, each loaded as its own epoch) on
    256 images: nasprobe / the plain script over the same files, and / the floor + NAS script
    (target <= 1.30), and the peak memory of 25 and of 100 checkpoints (it must not grow with
    the number of checkpoints).

    Both nasprobe and the plain script also run on 25 of the checkpoints: the difference is
    75 checkpoints' work, so each command's time splits into a cost per checkpoint and a fixed
    cost (start-up, set-up, the end), printed per environment."""
    runs, probe = many_inputs(tmp)
    tapped = tmp / "many100-tapped"
    if not tapped.exists():  # the floor's graphs, written once outside the timing
        subprocess.run([sys.executable, str(HERE / "baselines.py"), "tap", str(runs[100]),
                        str(tapped)], check=True)
    cmds = {}
    for e in envs:
        cmds[f"taps@{e.label}"] = e.baseline("ort", str(tapped), str(probe))
        cmds[f"tapsnas@{e.label}"] = e.baseline("ort-nas", str(tapped), str(probe))
        for n, run in runs.items():
            cmds[f"nasprobe{n}@{e.label}"] = lambda r, e=e, n=n, run=run: e.nasprobe(
                "probe", str(run), "--probe", str(probe), "--out", str(tmp / f"many{n}-{e.label}{r}.zarr"),
                "--keep-images", "0", "--run", "bench")
        cmds[f"plain@{e.label}"] = e.baseline("ort", str(runs[100]), str(probe))
        cmds[f"plain25@{e.label}"] = e.baseline("ort", str(runs[25]), str(probe))
    got = side_by_side(cmds, repeats)
    print(f"100 checkpoints of the tiny CNN, 256 images of 16x16 (median of {repeats})")
    for e in envs:
        a, b = got[f"nasprobe100@{e.label}"], got[f"plain@{e.label}"]
        row(f"[{e.label}] nasprobe probe, 100 checkpoints", a, cpu=True)
        row(f"[{e.label}] nasprobe probe, 25 checkpoints", got[f"nasprobe25@{e.label}"], cpu=True)
        row(f"[{e.label}] plain onnxruntime script, 100", b, cpu=True)
        row(f"[{e.label}] the same script, taps as outputs (floor)", got[f"taps@{e.label}"],
            cpu=True)
        row(f"[{e.label}] floor + NAS by nasprobe's kernel", got[f"tapsnas@{e.label}"], cpu=True)
        ratio(f"[{e.label}] nasprobe / plain, 100 checkpoints", a, b, "-")
        ratio(f"[{e.label}] floor: taps / plain, 100 checkpoints", got[f"taps@{e.label}"], b, "-")
        ratio(f"[{e.label}] floor + NAS / plain, 100 checkpoints", got[f"tapsnas@{e.label}"], b,
              "-")
        ratio(f"[{e.label}] nasprobe / (floor + NAS), 100 checkpoints", a,
              got[f"tapsnas@{e.label}"], "<= 1.30")
        split = {}
        for who, many_, few in (("nasprobe", a, got[f"nasprobe25@{e.label}"]),
                                ("plain", b, got[f"plain25@{e.label}"])):
            each = (many_.wall - few.wall) / 75
            split[who] = (each, few.wall - 25 * each)
        print(f"  {f'[{e.label}] per checkpoint (100 vs 25): nasprobe':48s} "
              f"{split['nasprobe'][0] * 1e3:8.2f} ms   plain {split['plain'][0] * 1e3:.2f} ms",
              flush=True)
        print(f"  {f'[{e.label}] fixed cost: nasprobe':48s} {split['nasprobe'][1]:8.2f} s"
              f"    plain {split['plain'][1]:.2f} s", flush=True)


#: run before the console script by :func:`bounds`: ``NASPROBE_WITHOUT`` (comma-separated)
#: replaces parts of each epoch's work by no-ops that keep the job's shapes (its store is
#: meaningless): ``fold`` (the statistics), ``corr`` (the weight correlations), ``nas`` (the
#: NAS kernel). It imports numpy before the console script runs, so it starts OpenBLAS with
#: one thread first, as the console script would.
WITHOUT = ("import os\n"
           "w = set(filter(None, os.environ.get('NASPROBE_WITHOUT', '').split(',')))\n"
           "os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')\n"
           "import numpy as np\n"
           "import nasprobe.measures.aggregate as agg\n"
           "import nasprobe.measures.activity as act\n"
           "import nasprobe.job.tasks as tasks\n"
           "def no_fold(values, count, lo, hi, hist, edges, channels):\n"
           "    n = int(np.size(values)); count[0] += n; lo[0] = hi[0] = 0.0\n"
           "    return n, 0, 0.0, 0.0\n"
           "def no_nas(x, axis, threads=None, counts=None):\n"
           "    return np.full([s for i, s in enumerate(x.shape) if i != axis % x.ndim], 0.5,\n"
           "                   np.float32)\n"
           "if 'fold' in w: agg.fold = no_fold\n"
           "if 'corr' in w: tasks.weight_correlations = lambda taps, weights: {}\n"
           "if 'nas' in w: act.nas_map = no_nas\n")


def bounds(envs: list[Env], tmp: Path, repeats: int) -> None:
    """The 100-checkpoint job with parts of each epoch's work replaced by no-ops
    (:data:`WITHOUT`): how far making each part faster could bring the row at most. Not a
    measurement of nasprobe as it runs; the plain script again for the ratios."""
    runs, probe = many_inputs(tmp)
    variants = {"as it is": "", "without the statistics fold": "fold",
                "without the weight correlations": "corr", "without the NAS kernel": "nas",
                "without all three": "fold,corr,nas"}
    cmds = {}
    for e in envs:
        for label, without in variants.items():
            cmds[f"{label}@{e.label}"] = lambda r, e=e, without=without: [
                {"NASPROBE_WITHOUT": without}, e.python, "-c", WITHOUT + NASPROBE, "probe",
                str(runs[100]), "--probe", str(probe), "--out",
                str(tmp / f"bounds-{e.label}-{without or 'none'}{r}.zarr"), "--keep-images", "0",
                "--run", "bench"]
        cmds[f"plain@{e.label}"] = e.baseline("ort", str(runs[100]), str(probe))
    got = side_by_side(cmds, repeats)
    print(f"bounds: 100 checkpoints of the tiny CNN with parts of each epoch removed (median of "
          f"{repeats})")
    for e in envs:
        plain = got[f"plain@{e.label}"]
        row(f"[{e.label}] plain onnxruntime script, 100", plain, cpu=True)
        for label in variants:
            t = got[f"{label}@{e.label}"]
            print(f"  {f'[{e.label}] nasprobe {label}':48s} {t.wall:8.2f} s   CPU {t.cpu:6.2f} s"
                  f"   / plain {t.wall / plain.wall:.3f}", flush=True)


def imports(envs: list[Env], tmp: Path, top: int = 8) -> None:
    """``-X importtime`` of the tiny job: the costliest modules by their own import, and the
    top-level packages a plain script does not load, by their cumulative import."""
    run, probe = tmp / "tiny", images(tmp / "tiny.npy", 8, 16)
    if not run.exists():
        tiny_cnn(run)
    print("imports of the tiny job (python -X importtime, one run; ms)")
    for e in envs:
        runs = {}
        for what, cmd in (("nasprobe", e.nasprobe("probe", str(run), "--probe", str(probe), "--out",
                                                  str(tmp / f"imp-{e.label}.zarr"), "--keep-images",
                                                  "0", "--run", "bench")),
                          ("plain", e.baseline("ort", str(run), str(probe)))):
            res = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True,
                                 text=True, check=True)
            runs[what] = [(m.group(3), int(m.group(1)), int(m.group(2))) for m in re.finditer(
                r"import time:\s+(\d+) \|\s+(\d+) \| ( *\S+)", res.stderr)]
        own = sorted(runs["nasprobe"], key=lambda r: -r[1])[:top]
        print(f"  [{e.label}] own import: " + ", ".join(f"{n.strip()} {s / 1e3:.0f}" for n, s, _ in own))
        # top-level packages imported at any depth (cumulative ms of their first import)
        plain = {n.strip().split(".")[0] for n, _, _ in runs["plain"]}
        seen, tops = set(), []
        for n, _, c in runs["nasprobe"]:
            name = n.strip()
            if "." not in name and name not in plain and name not in seen:
                seen.add(name)
                tops.append((name, c))
        tops.sort(key=lambda r: -r[1])
        print(f"  [{e.label}] packages the plain script does not load: "
              + ", ".join(f"{n} {c / 1e3:.0f}" for n, c in tops[:top]))


def vanilla(envs: list[Env], tmp: Path, part: str, repeats: int) -> None:
    folder, n = {"table": ("vanilla1", 3072), "long": ("vanilla4", 2048)}[part]
    run, pt, tapped = tmp / folder, tmp / f"{folder}-pt", tmp / f"{folder}-tapped"
    if not run.exists():
        export_vanilla(run, 1 if part == "table" else 4)
    if not tapped.exists():  # the floor's graphs, written once outside the timing
        subprocess.run([sys.executable, str(HERE / "baselines.py"), "tap", str(run), str(tapped)],
                       check=True)
    probe = images(tmp / f"{part}.npy", n, 32)
    cmds = {}
    for e in envs:
        cmds[f"nasprobe@{e.label}"] = lambda r, e=e: e.nasprobe(
            "probe", str(run), "--probe", str(probe), "--out", str(tmp / f"{part}{e.label}{r}.zarr"),
            "--batch-size", "64", "--keep-images", "0", "--run", "bench")
        cmds[f"plain@{e.label}"] = e.baseline("ort", str(run), str(probe))
        cmds[f"taps@{e.label}"] = e.baseline("ort", str(tapped), str(probe))
        cmds[f"tapsnas@{e.label}"] = e.baseline("ort-nas", str(tapped), str(probe))
        if part == "table":
            cmds[f"torch@{e.label}"] = e.baseline("torch", str(pt), str(probe))
    got = side_by_side(cmds, repeats)
    epochs = len(list(run.glob("*.onnx")))
    print(f"VanillaNet-m 32x32, {n} images x {epochs} epoch(s), batch 64 (median of {repeats})")
    for e in envs:
        t = {k.split("@")[0]: v for k, v in got.items() if k.endswith(f"@{e.label}")}
        row(f"[{e.label}] nasprobe probe --keep-images 0", t["nasprobe"], cpu=True)
        row(f"[{e.label}] plain onnxruntime script", t["plain"], cpu=True)
        row(f"[{e.label}] the same script, taps as outputs (floor)", t["taps"], cpu=True)
        row(f"[{e.label}] floor + NAS by nasprobe's kernel", t["tapsnas"], cpu=True)
        if "torch" in t:
            row(f"[{e.label}] torch forward hooks + NAS in torch", t["torch"], cpu=True)
        ratio(f"[{e.label}] nasprobe / plain onnxruntime", t["nasprobe"], t["plain"],
              "<= 1.35" if part == "table" else "<= 1.30")
        ratio(f"[{e.label}] floor: taps / plain onnxruntime", t["taps"], t["plain"], "-")
        ratio(f"[{e.label}] floor + NAS / plain onnxruntime", t["tapsnas"], t["plain"], "-")
        if "torch" in t:
            ratio(f"[{e.label}] nasprobe / torch hooks", t["nasprobe"], t["torch"], "<= 0.40")


def resnet(envs: list[Env], tmp: Path, repeats: int, unsplit: bool) -> None:
    sys.path.insert(0, str(HERE))
    from resnet50 import make_run, resnet50

    run = tmp / "resnet50"
    make_run(run, 3)
    state_dicts(run, resnet50())
    probe = images(tmp / "resnet.npy", 256, 224)
    cmds = {}
    for e in envs:
        cmds[f"nasprobe@{e.label}"] = lambda r, e=e: e.nasprobe(
            "probe", str(run), "--probe", str(probe), "--out", str(tmp / f"r{e.label}{r}.zarr"),
            "--batch-size", "64", "--run", "bench")
        cmds[f"torch@{e.label}"] = e.baseline("torch", str(tmp / "resnet50-pt"), str(probe),
                                              "--model", "resnet50")
        if unsplit:
            cmds[f"unsplit@{e.label}"] = lambda r, e=e: [{"NASPROBE_TAP_BUDGET": str(2**40)}] + \
                e.nasprobe("probe", str(run), "--probe", str(probe), "--out",
                           str(tmp / f"u{e.label}{r}.zarr"), "--batch-size", "64", "--run", "bench")
    got = side_by_side(cmds, repeats)
    print(f"ResNet-50 224x224, 256 images x 3 epochs, batch 64 (median of {repeats})")
    for e in envs:
        t = {k.split("@")[0]: v for k, v in got.items() if k.endswith(f"@{e.label}")}
        row(f"[{e.label}] nasprobe probe", t["nasprobe"], cpu=True)
        row(f"[{e.label}] torch forward hooks + NAS in torch", t["torch"], cpu=True)
        ratio(f"[{e.label}] nasprobe / torch hooks", t["nasprobe"], t["torch"], "<= 0.6")
        print(f"  {f'[{e.label}] nasprobe peak RSS':48s} {t['nasprobe'].peak / 1024:8.2f} GiB  "
              "(target <= 2.5 GB)")
        if "unsplit" in t:
            row(f"[{e.label}] nasprobe, a batch's raw taps at once", t["unsplit"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts: {','.join(PARTS)}")
    ap.add_argument("--python", action="append", default=None, metavar="PYTHON",
                    help="the interpreter of an environment to measure (repeat for more; "
                         "default: this one)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per command (median)")
    ap.add_argument("--resnet-repeats", type=int, default=1)
    ap.add_argument("--unsplit", action="store_true",
                    help="ResNet-50: also probe with every batch's raw taps at once (the memory "
                         "before the tap budget)")
    ap.add_argument("--demo-store", type=Path, default=None,
                    help="a store from `nasprobe demo` for the info timing (default: make one)")
    args = ap.parse_args()
    parts = args.only.split(",")
    envs = environments(args.python or [sys.executable])
    import nasprobe.measures.kernels

    for e in envs:  # each environment's interpreter compiles the nasprobe it imports
        where = subprocess.run(
            [e.python, "-c", "import nasprobe, nasprobe_torch, os\n"
             "for m in (nasprobe, nasprobe_torch): print(os.path.dirname(m.__file__))"],
            capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()).stdout.split()
        for package in where:
            subprocess.run([e.python, "-m", "compileall", "-q", package], check=True,
                           capture_output=True)

    print(f"nasprobe probe speed — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"C kernel built: {nasprobe.measures.kernels.available()}", flush=True)
    for e in envs:
        print(f"  [{e.label}] {e.python}: {describe(e)}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # `python -c` puts the working directory first on sys.path: run every command from
        # the empty folder, so that a checkout here never shadows an environment's nasprobe
        os.chdir(tmp)
        if "startup" in parts:
            store = args.demo_store
            if store is None:
                subprocess.run([*envs[0].script(), "demo", "--out", str(tmp / "demo")],
                               check=True, capture_output=True,
                               env={**os.environ, "KERAS_BACKEND": "torch", "MPLBACKEND": "Agg"})
                store = tmp / "demo" / "nas.zarr"
            startup(envs, store, args.repeats)
        if "tiny" in parts:
            tiny(envs, tmp, args.repeats)
        if "imports" in parts:
            imports(envs, tmp)
        for part in ("table", "long"):
            if part in parts:
                vanilla(envs, tmp, part, args.repeats)
        if "many" in parts:
            many(envs, tmp, args.repeats)
        if "bounds" in parts:
            bounds(envs, tmp, args.repeats)
        if "breakdown" in parts:
            print("where the time goes (one process, VanillaNet-m 32x32, 3072 images)", flush=True)
            if not (tmp / "vanilla1").exists():
                export_vanilla(tmp / "vanilla1", 1)
            probe = tmp / "table.npy"
            if not probe.exists():
                images(probe, 3072, 32)
            subprocess.run([sys.executable, str(HERE / "breakdown.py"), str(tmp / "vanilla1"),
                            str(probe), "--repeats", str(max(args.repeats, 3))], check=True)
        if "resnet" in parts:
            resnet(envs, tmp, args.resnet_repeats, args.unsplit)


if __name__ == "__main__":
    main()
