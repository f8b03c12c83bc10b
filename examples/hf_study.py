"""Do the papers' observations carry over to transformers? Tiny ViTs and GPTs, 3 seeds each.

(a) A tiny ViT (hidden 32, 2 layers, 8x8 digits in 2x2 patches) on 150 of scikit-learn's
digits, trained until it overfits; held-out: 500 other digits (the probe set, with labels: the
store's ``loss`` is the held-out loss). (b) A tiny byte-level GPT-2 (hidden 32, 2 layers, 64
positions) on 20 kB of a text that ships with Python (the standard library's ``argparse.py``),
held-out: the 10 kB that follow; its held-out and training losses are computed at each saved
step and imported with ``--metrics``. Each run saves Trainer-style ``checkpoint-N/`` folders
(``save_pretrained``) every ``--every`` steps, 3 seeds each; nasprobe probes every run into one
store per model (``nasprobe probe RUN --probe P --out S --run NAME [--metrics LOG]``), and the
script prints, per run, the median NAS of the first MLP projection and of the attention input
projection at the first and last step, the step of the lowest held-out loss, and
``nasprobe onsets`` (loss onset and NAS onsets).

Usage::

    .venv/bin/python examples/hf_study.py --out /tmp/hfstudy [--steps 2000] [--every 100]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTForImageClassification

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_trainer_vit import data as digits  # noqa: E402

SEEDS = (0, 1, 2)
CONTEXT = 64


def _save(model, folder: Path, step: int, log: dict) -> None:
    model.save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, **log}))


def train_vit(run: Path, seed: int, steps: int, every: int) -> None:
    """The ViT on 150 digits, Adam, batch 32, checkpoint-N/ every ``every`` steps."""
    xtr, ytr, _, _ = digits()
    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=8, patch_size=2, num_channels=1, num_labels=10))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
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
            _save(model, run / f"checkpoint-{step}", step, {"train_loss": float(loss.detach())})


def text_split() -> tuple[np.ndarray, np.ndarray]:
    """20 kB of training bytes and the 10 kB that follow, from the standard library's
    argparse.py (the same file in every Python of this version)."""
    import argparse as source

    raw = np.frombuffer(Path(source.__file__).read_bytes(), dtype=np.uint8).astype(np.int64)
    return raw[:20_000], raw[20_000:30_000]


def _windows(tokens: np.ndarray) -> np.ndarray:
    n = len(tokens) // CONTEXT
    return tokens[: n * CONTEXT].reshape(n, CONTEXT)


def _lm_loss(model, windows: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        t = torch.from_numpy(windows)
        return float(model(input_ids=t, labels=t).loss)


def train_gpt(run: Path, seed: int, steps: int, every: int) -> None:
    """The byte-level GPT on the training text, AdamW, batch 16 windows of 64 bytes; writes
    ``metrics.csv`` (step, train_loss, test_loss) for ``--metrics``."""
    train, held = text_split()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=2,
                                       n_positions=CONTEXT, bos_token_id=0, eos_token_id=0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(1, steps + 1):
        model.train()
        starts = rng.integers(0, len(train) - CONTEXT, 16)
        batch = torch.from_numpy(np.stack([train[s:s + CONTEXT] for s in starts]))
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            tl, hl = _lm_loss(model, _windows(train)), _lm_loss(model, _windows(held))
            rows.append((step, tl, hl))
            _save(model, run / f"checkpoint-{step}", step, {"train_loss": tl, "test_loss": hl})
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "test_loss"])
        w.writerows(rows)


def nasprobe(*args: str) -> str:
    """Run the nasprobe command line, return its stdout."""
    res = subprocess.run([sys.executable, "-m", "nasprobe", *args], capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return res.stdout


def summary(store: Path, mlp: str, attn: str) -> list[str]:
    """Rows: run, median NAS of the layer-0 MLP and attention projections (first → last
    step), step of the lowest held-out loss, last held-out loss."""
    import nasprobe as nas

    ds = nas.open_store(store).to_dataset()
    out = []
    for run in ds.run.values:
        r = ds.sel(run=run)
        steps = r.epoch.values[r.probed.values.astype(bool)]
        first, last = int(steps[0]), int(steps[-1])
        m = r.nas_median.sel(layer=mlp)
        a = r.nas_median.sel(layer=attn)
        loss = r.loss.sel(epoch=steps).values
        out.append(f"| {run} | {float(m.sel(epoch=first)):.3f} → {float(m.sel(epoch=last)):.3f} "
                   f"| {float(a.sel(epoch=first)):.3f} → {float(a.sel(epoch=last)):.3f} "
                   f"| {int(steps[int(np.nanargmin(loss))])} | {loss[0]:.3f} → "
                   f"{np.nanmin(loss):.3f} → {loss[-1]:.3f} |")
    return out


def main() -> None:
    """Train, probe, print (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=100)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _, _, xte, yte = digits()
    np.savez(out / "digits.npz", x=xte, y=yte)
    np.save(out / "text.npy", _windows(text_split()[1]))
    for seed in SEEDS:
        for kind, train in (("vit", train_vit), ("gpt", train_gpt)):
            run = out / "runs" / f"{kind}-s{seed}"
            if not run.exists():
                train(run, seed, args.steps, args.every)
    t1 = time.time()
    for seed in SEEDS:
        nasprobe("probe", str(out / "runs" / f"vit-s{seed}"), "--probe", str(out / "digits.npz"),
                 "--out", str(out / "vit.zarr"), "--run", f"vit-s{seed}", "--keep-images", "0")
        run = out / "runs" / f"gpt-s{seed}"
        nasprobe("probe", str(run), "--probe", str(out / "text.npy"), "--out",
                 str(out / "gpt.zarr"), "--run", f"gpt-s{seed}", "--keep-images", "0",
                 "--metrics", str(run / "metrics.csv"))
    t2 = time.time()
    head = ("| run | MLP (fc1 / c_fc), median NAS | attention input (q_proj / c_attn) | "
            "lowest held-out loss at step | held-out loss first → lowest → last |\n"
            "|---|---|---|---|---|")
    print(head)
    print("\n".join(summary(out / "vit.zarr", "vit.layers.0.mlp.fc1",
                            "vit.layers.0.attention.q_proj")))
    print("\n".join(summary(out / "gpt.zarr", "transformer.h.0.mlp.c_fc",
                            "transformer.h.0.attn.c_attn")))
    for store in ("vit.zarr", "gpt.zarr"):
        print(f"\nnasprobe onsets {store}\n" + nasprobe("onsets", str(out / store)))
    print(f"training {t1 - t0:.0f} s, probing {t2 - t1:.0f} s (wall)")


if __name__ == "__main__":
    main()
