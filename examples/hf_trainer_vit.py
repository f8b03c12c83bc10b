"""A tiny ViT trained on 150 bundled digits, saved as a Hugging Face Trainer saves it, probed.

Trains ``ViTForImageClassification`` (hidden 32, 2 layers, 8x8 grayscale digits in 2x2
patches: 16 patches + CLS) on 150 of scikit-learn's digits with AdamW, and every
``--every`` steps writes ``OUT/run/checkpoint-N/`` with ``save_pretrained`` (config.json +
model.safetensors) and a ``trainer_state.json``, the layout of ``transformers.Trainer``'s
output folder (the Trainer itself needs ``accelerate``, which nasprobe does not install).
The 500 held-out digits with labels are the probe set (``OUT/probe.npz``). Then, from the
command line as a user would::

    nasprobe probe OUT/run --probe OUT/probe.npz --out OUT/nas.zarr
    nasprobe plot OUT/nas.zarr --kind heatmaps --layers 'fc1|projection' --out OUT/heatmaps.png

Usage::

    .venv/bin/python examples/hf_trainer_vit.py --out /tmp/hfvit [--steps 400] [--every 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from transformers import ViTConfig, ViTForImageClassification


def data(seed: int = 0):
    """150 training and 500 held-out digits, (N, 1, 8, 8) float32 in [0, 1], labels int64."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    train, test = order[:150], order[150:650]
    return x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64)


def train(out: Path, steps: int, every: int, seed: int = 0) -> Path:
    """Train and write the Trainer-style run folder; returns it."""
    xtr, ytr, xte, yte = data()
    np.savez(out / "probe.npz", x=xte, y=yte)
    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, image_size=8, patch_size=2, num_channels=1,
                       num_labels=10)
    model = ViTForImageClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    run = out / "run"
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for step in range(1, steps + 1):
        model.train()
        idx = torch.randint(0, len(x), (32,), generator=gen)
        loss = model(pixel_values=x[idx], labels=y[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            folder = run / f"checkpoint-{step}"
            model.save_pretrained(folder)
            (folder / "trainer_state.json").write_text(json.dumps(
                {"global_step": step, "log_history": [{"step": step, "loss": float(loss)}]}))
    return run


def main() -> None:
    """Train, probe and plot (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=50)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run = train(args.out, args.steps, args.every)
    t1 = time.time()
    nasprobe = [sys.executable, "-m", "nasprobe"]
    subprocess.run([*nasprobe, "probe", str(run), "--probe", str(args.out / "probe.npz"),
                    "--out", str(args.out / "nas.zarr")], check=True)
    t2 = time.time()
    subprocess.run([*nasprobe, "plot", str(args.out / "nas.zarr"), "--kind", "heatmaps",
                    "--layers", "fc1|projection", "--out", str(args.out / "heatmaps.png")],
                   check=True)
    print(f"trained {args.steps} steps in {t1 - t0:.0f} s, probed {args.steps // args.every} "
          f"checkpoints in {t2 - t1:.0f} s; figure: {args.out / 'heatmaps.png'}")


if __name__ == "__main__":
    main()
