"""Hugging Face step series at scale (issue 26, item 6): many Trainer checkpoints of a small GPT.

Builds a Pythia-style run: a small GPT-NeoX (hidden 64, 2 layers, 4 heads, vocabulary 512,
128 positions) saved with ``save_pretrained`` as ``checkpoint-N/`` folders at Pythia's steps
(0, 1, 2, 4, ..., 512 log-spaced, then every 1000), ``--checkpoints`` of them (the weights are
random and differ per step: this measures time, not training). The probe set is ``--sequences``
sequences of ``--tokens`` token ids. Then, each as a fresh process timed from outside (wall and
CPU seconds; peak memory = the child's own ``VmHWM``):

* ``nasprobe probe RUN --probe ids.npy --out S --keep-images 0``;
* the plain onnxruntime script of ``baselines.py ort`` (imports numpy and onnxruntime only) over
  the same steps as ONNX files without taps (written once, outside the timing: the exported
  graph with each step's weights put in);
* nasprobe on the first ``--checkpoints // 5`` steps, to see whether peak memory grows with
  the number of checkpoints;
* per checkpoint, inside this process: transformers' loading (what nasprobe does per step:
  ``from_pretrained`` and the state dict in the graph's layout) against reading the
  safetensors arrays straight into the graph's layout.

Run by hand: ``.venv/bin/python benchmarks/hf_steps.py --work /tmp/hfsteps`` (needs the hf
extra; minutes on an idle 2-core machine). On a loaded machine compare the CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
NASPROBE = ("import atexit, re, sys\n"
            "atexit.register(lambda: print('VmHWM', re.search(r'VmHWM:\\s*(\\d+)', "
            "open('/proc/self/status').read()).group(1), 'kB', file=sys.stderr))\n"
            "from nasprobe.cli import main\nsys.argv[0] = 'nasprobe'\nmain()\n")


def pythia_steps(n: int) -> list[int]:
    """Pythia's checkpoint steps: 0 and powers of two to 512, then every 1000; the first n."""
    steps = [0] + [2 ** k for k in range(10)]
    steps += list(range(1000, 1000 * (n + 1), 1000))
    return steps[:n]


def build_run(run: Path, n: int) -> list[int]:
    """Save n checkpoints of a small GPT-NeoX into ``run/checkpoint-N/``; returns the steps."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    steps = pythia_steps(n)
    if run.exists() and len(list(run.glob("checkpoint-*"))) == n:
        return steps
    config = GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=256, vocab_size=512, max_position_embeddings=128,
                           bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).eval()
    noise = {k: torch.randn_like(v) * 0.002 for k, v in model.state_dict().items()
             if v.is_floating_point()}
    for step in steps:
        with torch.no_grad():
            for k, p in model.state_dict().items():
                if k in noise:
                    p.add_(noise[k])  # the weights drift from step to step
        model.save_pretrained(run / f"checkpoint-{step}")
    return steps


def plain_onnx(run: Path, out: Path) -> None:
    """Each step as an ONNX file without taps: the exported graph with its weights put in."""
    import onnx
    from onnx import numpy_helper

    from nasprobe.contract import Checkpoint
    from nasprobe.frameworks.checkpoints import find_checkpoints
    from nasprobe_hf import make_source

    ckpts = find_checkpoints([run])
    if out.exists() and len(list(out.glob("*.onnx"))) == len(ckpts):
        return
    out.mkdir(parents=True, exist_ok=True)
    source = make_source(ckpts)
    model = source.architecture()
    for c in ckpts:
        weights = source.weights(Checkpoint(c.path, c.epoch))
        for t in model.graph.initializer:
            if t.name in weights:
                t.CopyFrom(numpy_helper.from_array(weights[t.name], t.name))
        onnx.save(model, str(out / f"step_{c.epoch:07d}.onnx"))


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, peak MiB) of a command run as its own process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                                                                    "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{res.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak = re.search(r"VmHWM (\d+) kB", res.stderr)
    return wall, cpu, int(peak.group(1)) / 1024 if peak else float("nan")


def loading(run: Path, k: int) -> tuple[float, float]:
    """Seconds per checkpoint: transformers' loading (nasprobe's weights()) and reading the
    safetensors arrays straight into the graph's layout, over the first k checkpoints."""
    from safetensors.numpy import load_file

    from nasprobe.frameworks.checkpoints import find_checkpoints
    from nasprobe_hf import make_source

    ckpts = find_checkpoints([run])[:k]
    source = make_source(ckpts)
    layout = source.exported().layout
    t0 = time.perf_counter()
    for c in ckpts:
        source.weights(c)
    hf = (time.perf_counter() - t0) / len(ckpts)
    t0 = time.perf_counter()
    for c in ckpts:
        arrays = load_file(str(c.path / "model.safetensors"))
        {n: np.ascontiguousarray(arrays[key] if perm is None else arrays[key].transpose(perm))
         for n, (key, perm) in layout.items() if key in arrays}
    direct = (time.perf_counter() - t0) / len(ckpts)
    return hf, direct


def main() -> None:
    """Build, time and print (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--checkpoints", type=int, default=150)
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    run, small = work / "run", work / "run_small"
    steps = build_run(run, args.checkpoints)
    if not small.exists():
        small.mkdir()
        for s in steps[: max(2, args.checkpoints // 5)]:
            (small / f"checkpoint-{s}").symlink_to(run / f"checkpoint-{s}")
    ids = np.random.default_rng(0).integers(0, 512, (args.sequences, args.tokens))
    np.save(work / "ids.npy", ids.astype(np.int64))
    plain_onnx(run, work / "onnx")
    py = sys.executable
    rows = []
    for label, folder in (("nasprobe", run), ("nasprobe (1/5 of the steps)", small)):
        out = work / f"{folder.name}.zarr"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        rows.append((label, *timed([py, "-c", NASPROBE, "probe", str(folder), "--probe",
                                    str(work / "ids.npy"), "--out", str(out), "--batch-size",
                                    str(args.batch), "--keep-images", "0"])))
    rows.append(("plain onnxruntime", *timed([py, str(HERE / "baselines.py"), "ort",
                                             str(work / "onnx"), str(work / "ids.npy"),
                                             "--batch", str(args.batch)])))
    print(f"{args.checkpoints} checkpoints, {args.sequences} sequences x {args.tokens} tokens, "
          f"batch {args.batch}")
    for label, wall, cpu, peak in rows:
        print(f"  {label:28s} wall {wall:7.1f} s  cpu {cpu:7.1f} s  peak {peak:7.0f} MiB")
    ratio_wall, ratio_cpu = rows[0][1] / rows[2][1], rows[0][2] / rows[2][2]
    print(f"  nasprobe / plain: wall {ratio_wall:.2f}, cpu {ratio_cpu:.2f} (target <= 1.4)")
    hf, direct = loading(run, min(20, args.checkpoints))
    print(f"  loading per checkpoint: transformers {hf * 1000:.0f} ms, safetensors arrays into "
          f"the graph {direct * 1000:.0f} ms")


if __name__ == "__main__":
    main()
