"""Per-epoch overhead of probing PyTorch checkpoints (issue 3).

Probes 1 and 50 epochs of a VanillaNet-s run (state dicts, same probe set) through
``nasprobe probe --framework torch`` and prints both wall times, the per-epoch overhead (wall
time less the forward passes) and that overhead as a fraction of one ``torch.onnx.export`` of
the model. Target: the overhead of each epoch after the first ≤ 10 % of one export.

Run by hand: ``.venv/bin/python benchmarks/export_scaling.py``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

EPOCHS = 50
IMAGES = 256
SPEC = "nasprobe_torch.models:vanilla_net(size='s', in_channels=3, classes=10, input_size=32)"


def main() -> None:
    import onnxruntime as ort
    import torch

    import nasprobe
    from nasprobe_torch.models import vanilla_net

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        torch.manual_seed(0)
        model = vanilla_net("s").eval()
        run = tmp / "run"
        run.mkdir()
        for e in range(EPOCHS):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.01)
            torch.save(model.state_dict(), run / f"epoch_{e:03d}.pt")
        x = np.random.default_rng(0).normal(0, 1, (IMAGES, 3, 32, 32)).astype(np.float32)
        np.save(tmp / "probe.npy", x)
        one = tmp / "one"
        one.mkdir()
        (one / "epoch_000.pt").write_bytes((run / "epoch_000.pt").read_bytes())

        t = time.perf_counter()
        torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(tmp / "m.onnx"), dynamo=True,
                          dynamic_shapes=({0: "N"},), optimize=False, verbose=False)
        export_s = time.perf_counter() - t

        sess = ort.InferenceSession(str(tmp / "m.onnx"), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        t = time.perf_counter()
        for _ in range(3):
            for i in range(0, IMAGES, 64):
                sess.run(None, {name: x[i:i + 64]})
        forward_s = (time.perf_counter() - t) / 3

        walls = {}
        for label, folder in (("1 epoch", one), (f"{EPOCHS} epochs", run)):
            t = time.perf_counter()
            nasprobe.probe([folder], probe=tmp / "probe.npy", out=tmp / f"{folder.name}.zarr",
                           framework="torch", model=SPEC, input_shape=(3, 32, 32),
                           progress=False)
            walls[label] = time.perf_counter() - t
        w1, wn = walls["1 epoch"], walls[f"{EPOCHS} epochs"]
        per_epoch = (wn - w1) / (EPOCHS - 1)
        overhead = per_epoch - forward_s
        print(f"VanillaNet-s 32x32, {IMAGES} probe images, batch 64")
        print(f"  one ONNX export of the model          {export_s:7.2f} s")
        print(f"  plain onnxruntime forward per epoch   {forward_s:7.3f} s")
        print(f"  nasprobe probe, 1 epoch               {w1:7.2f} s")
        print(f"  nasprobe probe, {EPOCHS} epochs             {wn:7.2f} s")
        print(f"  per further epoch                     {per_epoch:7.3f} s")
        print(f"  overhead per further epoch (less forward) {overhead:.3f} s = "
              f"{overhead / export_s:.3f} of one export   (target <= 0.10)")


if __name__ == "__main__":
    main()
