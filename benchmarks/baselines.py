"""The alternatives nasprobe is measured against, each run as its own process by
``probe_speed.py`` (whole-process time; peak memory = the process's own ``VmHWM``, printed to
stderr at exit).

``ort``: a plain onnxruntime script — it imports numpy and onnxruntime and nothing else (what
a user's own script loads), one session per checkpoint, batches of the probe set, nothing done
with the outputs.

``tap SRC DST``: writes a copy of every ``*.onnx`` of ``SRC`` into ``DST`` with every tap
tensor as an extra graph output (run once, outside any timing). ``ort DST`` on those copies is
the floor of any tool that must read the taps out of onnxruntime: the same plain script, the
same imports, only the graph differs.

``ort-nas DST``: ``ort`` on those copies, with NAS computed over the channels (axis 1) of every
output of every batch by nasprobe's compiled kernel with its default threads (``nas_map``:
every core, at least 262,144 values each; importing it adds about 15 ms to numpy). No
statistics, no store: the floor of any tool that must compute NAS per (image, location),
before it summarises or writes anything.

``torch``: the obvious PyTorch way — load each checkpoint's state dict (``.pt`` files holding
the same weights as the ONNX files), forward hooks on every Conv2d/Linear computing NAS in
torch, per-layer quantiles at the end.
"""

from __future__ import annotations

import argparse
import atexit
import re
import sys
import time
from pathlib import Path

import numpy as np


def _report_peak() -> None:
    peak = re.search(r"VmHWM:\s*(\d+)", Path("/proc/self/status").read_text()).group(1)
    print(f"VmHWM {peak} kB", file=sys.stderr)


def run_ort(folder: Path, probe: Path, batch: int, nas: bool = False) -> None:
    """Every ``*.onnx`` of ``folder`` over the probe set, one session each; with ``nas``, NAS
    along axis 1 of every output of every batch (nasprobe is imported only then)."""
    import onnxruntime as ort

    if nas:
        from nasprobe.measures.kernels import nas_map
    x = np.load(probe, mmap_mode="r")
    for f in sorted(folder.glob("*.onnx")):
        sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for i in range(0, len(x), batch):
            outs = sess.run(None, {name: np.ascontiguousarray(x[i:i + batch])})
            if nas:
                for out in outs:
                    nas_map(out, 1)


def write_tapped(src: Path, dst: Path) -> None:
    """A copy of every ``*.onnx`` of ``src`` in ``dst`` with nasprobe's taps as extra outputs."""
    import onnx
    from onnx import helper

    from nasprobe.onnxgraph.taps import find_taps

    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.onnx")):
        m = onnx.load(str(f))
        have = {o.name for o in m.graph.output}
        for t in find_taps(m):
            if t.tensor not in have:
                have.add(t.tensor)
                m.graph.output.append(helper.make_tensor_value_info(t.tensor, 1, None))
        onnx.save(m, str(dst / f.name))


def build_model(kind: str):
    """The torch module of a benchmark: ``vanilla`` (VanillaNet-m, 32×32, 100 classes) or
    ``resnet50`` (224×224)."""
    if kind == "vanilla":
        from nasprobe_torch.models import vanilla_net

        return vanilla_net("m", in_channels=3, classes=100, input_size=32).eval()
    sys.path.insert(0, str(Path(__file__).parent))
    from resnet50 import resnet50

    return resnet50()


def run_torch(folder: Path, probe: Path, batch: int, kind: str) -> None:
    """Forward hooks + NAS in torch over every ``*.pt`` state dict of ``folder``."""
    import torch

    torch.set_grad_enabled(False)
    model = build_model(kind)
    x = np.load(probe, mmap_mode="r")
    qs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    for f in sorted(folder.glob("*.pt")):
        model.load_state_dict(torch.load(f, weights_only=True))
        maps: dict[str, list] = {}
        hooks = []
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                def hook(m, inp, out, name=name):
                    h = torch.logsumexp(out, 1) - (torch.softmax(out, 1) * out).sum(1)
                    maps.setdefault(name, []).append(1 - torch.exp(h) / out.shape[1])  # noqa: B023 (hooks removed in this iteration)
                hooks.append(mod.register_forward_hook(hook))
        for i in range(0, len(x), batch):
            model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
        for v in maps.values():
            allv = torch.cat([m.reshape(-1) for m in v])
            if allv.numel() > 16_000_000:  # torch.quantile's limit: sort instead
                s = torch.sort(allv).values
                s[(qs * (len(s) - 1)).long()]
            else:
                torch.quantile(allv, qs)
        for h in hooks:
            h.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["ort", "ort-nas", "torch", "tap"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("probe", type=Path, help="the probe set (.npy); for `tap`, the output folder")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--model", choices=["vanilla", "resnet50"], default="vanilla")
    args = ap.parse_args()
    if args.what == "tap":
        write_tapped(args.folder, args.probe)
        return
    atexit.register(_report_peak)
    t = time.perf_counter()
    if args.what in ("ort", "ort-nas"):
        run_ort(args.folder, args.probe, args.batch, nas=args.what == "ort-nas")
    else:
        run_torch(args.folder, args.probe, args.batch, args.model)
    print(f"work {time.perf_counter() - t:.3f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
