"""Probe speed and memory of nasprobe against the obvious alternatives (issue 2).

VanillaNet-m (64/64/128/128/256) at 32×32, 256 probe images, EPOCHS checkpoints. Prints:

  (a) nasprobe probe time / a plain onnxruntime forward pass of the same ONNX files
      (one session per epoch, no taps) — target ≤ 1.15
      floor: the same forward pass with the raw tap tensors as extra outputs and nothing done
      with them — what onnxruntime alone costs once the taps must leave the graph (the
      Conv+Relu fusion and the blocked NCHWc layout stop at every tap)
  (b) nasprobe probe time / the obvious PyTorch way (forward hooks computing NAS in torch,
      median per layer at the end) — target ≤ 0.5
  peak memory (max RSS of a fresh process) probing 2,000 vs 200 images — target ≤ 1.2

Run by hand: ``.venv/bin/python benchmarks/probe_speed.py`` (needs the torch extra);
``--images 2048`` shows how the fixed costs (store, sessions) weigh less with a larger probe
set; ``--no-memory`` skips the peak-memory part.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EPOCHS = 4
IMAGES = 256
BATCH = 64


def make_run(folder: Path) -> None:
    """EPOCHS ONNX checkpoints of VanillaNet-m (one export, weights redrawn per epoch)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from nasprobe_torch.models import vanilla_net

    torch.manual_seed(0)
    model = vanilla_net("m", in_channels=3, classes=100, input_size=32).eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder.parent / "epoch_000.pt")
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(folder / "epoch_000.onnx"),
                      dynamo=True, dynamic_shapes=({0: "N"},), verbose=False)
    base = onnx.load(str(folder / "epoch_000.onnx"))
    rng = np.random.default_rng(0)
    for e in range(1, EPOCHS):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        for i, t in enumerate(m.graph.initializer):
            a = numpy_helper.to_array(t)
            if a.dtype == np.float32 and a.ndim >= 1 and a.size > 1:
                a = (a * rng.uniform(0.8, 1.2, a.shape)).astype(np.float32)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, t.name))
        onnx.save(m, str(folder / f"epoch_{e:03d}.onnx"))


def time_nasprobe(folder: Path, probe: Path, out: Path, nas_on: str = "auto") -> float:
    import nasprobe

    t = time.perf_counter()
    nasprobe.probe([folder], probe=probe, out=out, run="bench", batch_size=BATCH,
                   progress=False, nas_on=nas_on)
    return time.perf_counter() - t


def tapped_files(folder: Path, dest: Path) -> Path:
    """Copies of the ONNX files with every tap tensor as an extra graph output (the floor)."""
    import onnx
    from onnx import helper

    from nasprobe.graph import find_taps

    dest.mkdir(exist_ok=True)
    for f in sorted(folder.glob("*.onnx")):
        m = onnx.load(str(f))
        have = {o.name for o in m.graph.output}
        for t in find_taps(m):
            if t.tensor not in have:
                m.graph.output.append(helper.make_tensor_value_info(t.tensor, 1, None))
        onnx.save(m, str(dest / f.name))
    return dest


def time_plain_ort(folder: Path, x: np.ndarray) -> float:
    import onnxruntime as ort

    t = time.perf_counter()
    for f in sorted(folder.glob("*.onnx")):
        sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for i in range(0, len(x), BATCH):
            sess.run(None, {name: x[i:i + BATCH]})
    return time.perf_counter() - t


def time_torch_hooks(folder: Path, x: np.ndarray) -> float:
    """The obvious PyTorch way: load each state dict, hook every conv/linear, NAS in torch."""
    import onnx
    import torch
    from onnx import numpy_helper

    from nasprobe_torch.models import vanilla_net

    states = []
    for f in sorted(folder.glob("*.onnx")):  # same weights as the ONNX files, loaded beforehand
        inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(f)).graph.initializer}
        states.append({k: torch.from_numpy(v.copy()) for k, v in inits.items() if "." in k})
    model = vanilla_net("m", in_channels=3, classes=100, input_size=32).eval()
    xt = torch.from_numpy(x)
    t = time.perf_counter()
    for sd in states:
        model.load_state_dict(sd, strict=False)
        maps: dict[str, list] = {}
        hooks = []
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                def hook(m, inp, out, name=name):
                    h = torch.logsumexp(out, 1) - (torch.softmax(out, 1) * out).sum(1)
                    maps.setdefault(name, []).append(1 - torch.exp(h) / out.shape[1])
                hooks.append(mod.register_forward_hook(hook))
        with torch.no_grad():
            for i in range(0, len(xt), BATCH):
                model(xt[i:i + BATCH])
        for v in maps.values():
            allv = torch.cat([m.reshape(-1) for m in v])
            torch.quantile(allv, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=allv.dtype))
        for h in hooks:
            h.remove()
    return time.perf_counter() - t


def peak_rss(folder: Path, n: int, tmp: Path) -> float:
    """Peak RSS (MiB) of a fresh process probing ``n`` images (pixels memory-mapped from .npy).

    Read from the child's own ``VmHWM`` (/proc/self/status), which starts afresh at exec:
    ``getrusage().ru_maxrss`` would also count the parent's pages the child held between fork
    and exec, i.e. report this (large) benchmark process instead of the probe."""
    x = np.random.default_rng(1).normal(0, 1, (n, 3, 32, 32)).astype(np.float32)
    np.save(tmp / f"probe{n}.npy", x)
    code = (
        "import nasprobe, re; "
        f"nasprobe.probe([{str(folder)!r}], probe={str(tmp / f'probe{n}.npy')!r}, "
        f"out={str(tmp / f'mem{n}.zarr')!r}, batch_size={BATCH}, progress=False); "
        "print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    import argparse

    import nasprobe.kernels

    global IMAGES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=IMAGES, help="probe images (default 256)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory part")
    args = ap.parse_args()
    IMAGES = args.images

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        folder = tmp / "run"
        make_run(folder)
        x = np.random.default_rng(0).normal(0, 1, (IMAGES, 3, 32, 32)).astype(np.float32)
        np.save(tmp / "probe.npy", x)
        taps = tapped_files(folder, tmp / "taps")
        time_plain_ort(folder, x[:BATCH])  # warm-up: imports, thread pools
        reps = []
        for r in range(3):
            nas_t = time_nasprobe(folder, tmp / "probe.npy", tmp / f"s{r}.zarr")
            graph_t = time_nasprobe(folder, tmp / "probe.npy", tmp / f"g{r}.zarr", "graph")
            ort_t = time_plain_ort(folder, x)
            taps_t = time_plain_ort(taps, x)
            torch_t = time_torch_hooks(folder, x)
            reps.append((nas_t, graph_t, ort_t, taps_t, torch_t))
        nas_t, graph_t, ort_t, taps_t, torch_t = np.median(np.array(reps), axis=0)
        print(f"VanillaNet-m 32x32, {IMAGES} images, {EPOCHS} epochs, batch {BATCH} "
              f"(median of 3); C kernel built: {nasprobe.kernels.available()}")
        print(f"  nasprobe probe, NAS on host (default) {nas_t:7.2f} s  (incl. store writes)")
        print(f"  nasprobe probe, NAS in graph          {graph_t:7.2f} s")
        print(f"  plain onnxruntime forward             {ort_t:7.2f} s")
        print(f"  onnxruntime forward, taps as outputs  {taps_t:7.2f} s")
        print(f"  torch forward hooks + NAS in torch    {torch_t:7.2f} s")
        print(f"  (a) nasprobe / plain onnxruntime = {nas_t / ort_t:.3f}   (target <= 1.15; "
              f"in graph {graph_t / ort_t:.3f}; floor {taps_t / ort_t:.3f})")
        print(f"  (b) nasprobe / torch hooks       = {nas_t / torch_t:.3f}   (target <= 0.5; "
              f"in graph {graph_t / torch_t:.3f}; floor {taps_t / torch_t:.3f})")
        if args.no_memory:
            return
        small, big = peak_rss(folder, 200, tmp), peak_rss(folder, 2000, tmp)
        print(f"  peak RSS: 200 images {small:.0f} MiB, 2000 images {big:.0f} MiB, "
              f"ratio {big / small:.3f}   (target <= 1.2)")


if __name__ == "__main__":
    main()
