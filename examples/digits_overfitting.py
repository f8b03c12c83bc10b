"""VanillaNet, DropNet, NormNet and NASReg overfitting 150 handwritten digits (2021 paper, Fig. 3-4).

Trains the 2021 paper's four main configurations on a small split of scikit-learn's bundled
digits (1,797 images, 8×8 upscaled to 16×16; nothing is downloaded) so that they overfit,
``--seeds`` seeds each, saving a PyTorch checkpoint per epoch; probes every epoch of every run
with nasprobe into ONE store (runs ``vanilla-s0`` … ``nasreg-s2``); draws the NAS line plot
(seeds of a configuration as one min/median/max band) and the NAS heatmaps; and writes
``RESULTS.md``: per configuration, mean ± std over seeds of the best test accuracy, the loss
onset (nasprobe's moment of overfitting: the epoch after which the test loss rises), and the
median NAS of conv4 and fc1 at the last epoch, next to the 2021 paper's cifar-100 peak
accuracies; and the share of dead units of conv4 and fc1 beside their NAS over training.

Usage::

    .venv/bin/python examples/digits_overfitting.py --out /tmp/ex [--epochs 50] [--seeds 3]

Writes ``OUT/probe.npz`` (the 500 held-out digits with labels, shared by all runs),
``OUT/runs/<config>-s<seed>/{init.pt, epoch_NNN.pt, metrics.csv}``, ``OUT/nas.zarr``,
``OUT/digits_line.png``, ``OUT/digits_heatmaps.png``, ``OUT/digits_dead.png`` (the share of
dead units per layer) and ``OUT/RESULTS.md``. Run it again after
an interruption: finished trainings and probed epochs are kept.

Setup (all configurations, all seeds):

* data: one fixed split (split seed 0) of 150 training and 500 held-out digits, shared by all
  runs so that one store holds them all (a store has one probe set); the seed changes the
  weight initialisation, the batch order and dropout, not the split. The probe set doubles
  as the test set: its labels give ``loss`` and ``accuracy`` per epoch in the store.
* networks: the papers' VanillaNet at size s (conv1..conv4, fc1 = 16, 16, 32, 32, 64);
  DropNet with the 2021 paper's rates (0.3 after each conv block, 0.5 between fc1 and the
  prediction layer); NormNet with BatchNorm after every convolution; NASReg = VanillaNet +
  NASReg on conv1..fc1 (taps: linear, as in the paper).
* optimiser: Adam, lr 0.002, batch 32 (the demo's setting). Not the papers' plain SGD
  (lr 0.01): with 5 steps per epoch on 150 images it learns far more slowly (see
  ``nasprobe_torch.digits.train_digits``); not measured here.
* length: 50 epochs by default. At 30 epochs (the papers' length) VanillaNet's test-loss
  rise is still too small for nasprobe's loss onset; see RESULTS.md.
* NASReg weight: the paper's ``λ_i = 1/r_i`` times one global factor ``β = 1/Σ_i D_i``
  (``D_i`` channels of regularised layer ``i``; 1/160 here). With ``λ_i = 1/r_i`` alone the
  penalty is ``-Σ_i mean_k ρ_k^i``, in channel units: about -159 at initialisation (ρ is
  close to its maximum D_i in every layer) against a cross-entropy of 2.3, and its
  gradient is about 12× the cross-entropy's. ``β`` rescales it to the perplexity fraction
  ``-Σ_i D_i τ_i / Σ_i D_i ∈ [-1, 0]``, the same order as the cross-entropy; per-layer
  weights relative to each other stay the paper's. ``--nasreg-beta`` overrides it.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import multiprocessing
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

#: Configurations in the order of the 2021 paper's Fig. 3 / Fig. 4.
CONFIGS = ("vanilla", "drop", "norm", "nasreg")
LABELS = {"vanilla": "VanillaNet", "drop": "DropNet", "norm": "NormNet", "nasreg": "NASReg"}
#: Peak test accuracies on cifar-100 quoted from the 2021 paper (Sec. 3.2 text and Fig. 3;
#: 30 epochs, NASReg 300 epochs; VanillaNet size xxl, SGD lr 0.01).
PAPER_CIFAR100_PEAK = {"vanilla": 0.3851, "drop": 0.4034, "norm": 0.4947, "nasreg": 0.5119}
NASREG_LAYERS = ["conv1", "conv2", "conv3", "conv4", "fc1"]
#: Epochs of the dead-units table (and the last epoch).
DEAD_EPOCHS = (-1, 2, 5, 10, 20)
WIDTHS = [16, 16, 32, 32, 64]
TRAIN, PROBE, SPLIT_SEED = 150, 500, 0
LR, BATCH = 0.002, 32
_COMMON = f"widths={WIDTHS}, in_channels=1, classes=10, input_size=16"
#: ``MODULE:CALLABLE(...)`` per configuration, the same text builds the net for training and
#: tells nasprobe how to rebuild it from a state dict.
SPECS = {
    "vanilla": f"nasprobe_torch.models:vanilla_net({_COMMON})",
    "drop": f"nasprobe_torch.models:drop_net({_COMMON}, dropout=0.3, fc_dropout=0.5)",
    "norm": f"nasprobe_torch.models:norm_net({_COMMON})",
    "nasreg": f"nasprobe_torch.models:vanilla_net({_COMMON})",
}


def run_name(config: str, seed: int) -> str:
    return f"{config}-s{seed}"


def _build(spec: str):
    import importlib

    from nasprobe_torch.loading import parse_model_spec

    module, func, args, kwargs = parse_model_spec(spec)
    return getattr(importlib.import_module(module), func)(*args, **kwargs)


class _Scaled:
    """A regulariser whose penalty is multiplied by a constant."""

    def __init__(self, reg, factor: float):
        self.reg, self.factor = reg, factor

    def penalty(self):
        return self.factor * self.reg.penalty()


def _finished(run_dir: Path, epochs: int) -> bool:
    metrics, last = run_dir / "metrics.csv", run_dir / f"epoch_{epochs - 1:03d}.pt"
    if not (metrics.exists() and last.exists()):
        return False
    with open(metrics, newline="") as f:
        done = {int(row["epoch"]) for row in csv.DictReader(f)}
    return set(range(-1, epochs)) <= done and not (run_dir / f"epoch_{epochs:03d}.pt").exists()


def train_one(out: str, config: str, seed: int, epochs: int, beta: float) -> tuple[str, float]:
    """Train one run into ``out/runs/<config>-s<seed>`` (one CPU thread); returns (name, s)."""
    import torch

    from nasprobe_torch.digits import digits_splits, fit_digits
    from nasprobe_torch.regularizers import NASReg

    torch.set_num_threads(1)
    name = run_name(config, seed)
    run_dir = Path(out) / "runs" / name
    if _finished(run_dir, epochs):
        return name, 0.0
    if run_dir.exists():  # an interrupted training starts again from scratch
        for f in run_dir.iterdir():
            f.unlink()
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    x_tr, y_tr, x_pr, y_pr = digits_splits(TRAIN, PROBE, SPLIT_SEED)
    model = _build(SPECS[config])
    reg = None
    if config == "nasreg":
        reg = _Scaled(NASReg(model, layers=NASREG_LAYERS, lam="auto", tap="linear"), beta)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    fit_digits(model, opt, (x_tr, y_tr, x_pr, y_pr), run_dir, epochs=epochs, seed=seed,
               batch_size=BATCH, regularizer=reg)
    return name, time.perf_counter() - t0


def _fmt(values, digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _fmt_onsets(values) -> str:
    v = np.asarray(values, dtype=float)
    have = v[np.isfinite(v)]
    if have.size == 0:
        return "none"
    text = _fmt(have, 1)
    if have.size < v.size:
        text += f" ({v.size - have.size} of {v.size} runs: none)"
    per_run = ", ".join("none" if not np.isfinite(x) else str(int(x)) for x in v)
    return f"{text} [{per_run}]"


def summarise(ds, seeds: int) -> dict:
    """Per configuration: per-run values of the table's columns (numpy arrays over seeds)."""
    from nasprobe.measures.onsets import onsets

    on = onsets(ds)
    last = int(ds["epoch"].max())
    rows = {}
    for config in CONFIGS:
        runs = [run_name(config, s) for s in range(seeds)]
        acc = ds["accuracy"].sel(run=runs)
        loss = ds["loss"].sel(run=runs)
        med = ds["nas_median"].sel(run=runs, epoch=last)
        rows[config] = {
            "best_acc": acc.max("epoch").values,
            "best_acc_epoch": acc.idxmax("epoch").values,
            "min_loss": loss.min("epoch").values,
            "min_loss_epoch": loss.idxmin("epoch").values,
            "last_loss": loss.sel(epoch=last).values,
            "last_acc": acc.sel(epoch=last).values,
            "loss_onset": on["loss_onset"].sel(run=runs).values,
            "nas_conv4": med.sel(layer="conv4").values,
            "nas_fc1": med.sel(layer="fc1").values,
        }
        if "dead_fraction" in ds:  # per DEAD_EPOCHS: dead units and median NAS of conv4, fc1
            at = [e for e in DEAD_EPOCHS if e < last] + [last]
            for layer in ("conv4", "fc1"):
                sel = dict(run=runs, epoch=at, layer=layer)
                rows[config][f"dead_{layer}"] = ds["dead_fraction"].sel(**sel).values.T
                rows[config][f"nas_{layer}_at"] = ds["nas_median"].sel(**sel).values.T
            rows[config]["dead_epochs"] = at
    return rows


def _dead_table(rows: dict) -> list[str]:
    """The dead-units table: per configuration and epoch, the share of conv4's and fc1's
    channels that never fire on the probe set, next to their median NAS (mean over seeds)."""
    first = rows[CONFIGS[0]]
    if "dead_epochs" not in first:
        return []
    at = first["dead_epochs"]
    head = " | ".join(f"epoch {e}" for e in at)
    lines = [
        "### Dead units",
        "",
        "Share of the layer's channels whose ReLU input is never above zero on the 500 probe "
        "digits (`dead_fraction`), and the layer's median NAS, at a few epochs; mean over the "
        "seeds (each cell: dead / NAS).",
        "",
        f"| configuration | layer | {head} |",
        "|---|---|" + "---|" * len(at),
    ]
    for config in CONFIGS:
        r = rows[config]
        for layer in ("conv4", "fc1"):
            cells = " | ".join(f"{d:.2f} / {n:.2f}" for d, n in
                               zip(r[f"dead_{layer}"].mean(axis=1), r[f"nas_{layer}_at"].mean(axis=1)))
            lines.append(f"| {LABELS[config]} | {layer} | {cells} |")
    lines += ["", "![dead units per layer, seeds as min/median/max bands](digits_dead.png)", ""]
    return lines


def write_results(path: Path, rows: dict, *, epochs: int, seeds: int, beta: float,
                  command: str, timings: dict) -> None:
    n = seeds
    lines = [
        "## Results: VanillaNet, DropNet, NormNet and NASReg on digits",
        "",
        f"Measured on {_dt.date.today().isoformat()} on a machine with "
        f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}; PyTorch on CPU, "
        f"one thread per training process, two trainings at a time), with:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"{epochs} epochs, {n} seeds per configuration, 150 training digits, 500 held-out "
        "digits as probe and test set (one fixed split for every run), Adam lr 0.002, batch 32. "
        "NASReg: VanillaNet + NASReg on conv1..fc1, "
        f"λ_i = β / r_i with β = {beta:.6g} (see the script's docstring). "
        f"Wall time of this invocation: training {timings['train']:.0f} s, probing "
        f"{timings['probe']:.0f} s, figures {timings['figures']:.0f} s"
        + (f" ({timings['reused']} of {len(CONFIGS) * n} trainings and their probed epochs "
           "were reused from an earlier invocation into the same folder)."
           if timings.get("reused") else "."),
        "",
        f"Values are mean ± sample std (ddof = 1) over the {n} seeds"
        + ("" if n > 1 else " (one seed: no std)")
        + "; loss onsets also per seed in brackets. *Best test accuracy*: the highest accuracy "
        "on the 500 held-out digits over all epochs. *Loss onset*: `nasprobe.measures.onsets` (the "
        "epoch of the minimum of the Gaussian-smoothed test loss, σ = 2 epochs, accepted only "
        "if the loss rises significantly afterwards; \"none\" where it never does). "
        "*Epoch of min test loss*: the raw (unsmoothed) minimum. Epoch -1 is the untrained "
        "network. "
        f"*NAS at epoch {epochs - 1}*: median NAS of the layer over the probe set at the last "
        "epoch (`nas_median`, linear taps). The paper's column is **the 2021 paper's peak test "
        "accuracy on cifar-100** (a different, much harder dataset with 100 classes, networks "
        "of size xxl, SGD; NASReg trained for 300 epochs there, the others for 30; one value "
        "per configuration as quoted in the paper's text), for orientation only.",
        "",
        "| configuration | best test accuracy | epoch of best accuracy | loss onset (epoch) "
        f"| min test loss | epoch of min test loss | test loss at epoch {epochs - 1} "
        f"| NAS conv4 at epoch {epochs - 1} | NAS fc1 at epoch {epochs - 1} "
        "| paper: peak accuracy, cifar-100 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config in CONFIGS:
        r = rows[config]
        lines.append(
            f"| {LABELS[config]} | {_fmt(r['best_acc'])} | {_fmt(r['best_acc_epoch'], 1)} "
            f"| {_fmt_onsets(r['loss_onset'])} | {_fmt(r['min_loss'])} "
            f"| {_fmt(r['min_loss_epoch'], 1)} | {_fmt(r['last_loss'])} "
            f"| {_fmt(r['nas_conv4'])} | {_fmt(r['nas_fc1'])} "
            f"| {PAPER_CIFAR100_PEAK[config]:.4f} |")
    lines += [
        "",
        "![median NAS per layer, seeds as min/median/max bands, test loss in red]"
        "(digits_line.png)",
        "",
        "`digits_line.png`: median NAS per layer over epochs (seeds of a configuration as a "
        "min/median/max band) with the median test loss. `digits_heatmaps.png`: the NAS "
        "heatmaps (mean over probe images per location, averaged over seeds) at evenly "
        "spaced epochs, per configuration.",
        "",
        *_dead_table(rows),
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--epochs", type=int, default=50, help="training epochs (default 50)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="trainings at a time, one CPU thread each (default 2)")
    ap.add_argument("--nasreg-beta", type=float, default=None,
                    help="global factor of the NASReg penalty (default 1 / sum of the "
                         "regularised layers' channels = 1/160)")
    args = ap.parse_args(argv)
    if args.epochs < 3 or args.seeds < 1 or args.jobs < 1:
        ap.error("need --epochs >= 3, --seeds >= 1, --jobs >= 1")
    beta = args.nasreg_beta if args.nasreg_beta is not None else 1.0 / sum(WIDTHS)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "examples/digits_overfitting.py",
                                                *(sys.argv[1:] if argv is None else argv)])

    from nasprobe_torch.digits import digits_splits

    _, _, x_pr, y_pr = digits_splits(TRAIN, PROBE, SPLIT_SEED)
    probe_npz = out / "probe.npz"
    np.savez(probe_npz, x=x_pr, y=y_pr)

    # 1. train every (configuration, seed), --jobs processes with one thread each
    t0 = time.perf_counter()
    jobs = [(str(out), c, s, args.epochs, beta) for c in CONFIGS for s in range(args.seeds)]
    reused = 0
    with ProcessPoolExecutor(max_workers=args.jobs,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        for name, secs in pool.map(train_one, *zip(*jobs)):
            reused += secs == 0.0
            print(f"trained {name} in {secs:.1f} s" if secs else f"{name}: already trained",
                  file=sys.stderr, flush=True)
    t_train = time.perf_counter() - t0

    # 2. probe every epoch of every run into one store (one call per architecture)
    import nasprobe
    from nasprobe.store.training_logs import read_training_log
    from nasprobe.store.writer import Store

    t0 = time.perf_counter()
    store = out / "nas.zarr"
    for config in CONFIGS:
        folders = [out / "runs" / run_name(config, s) for s in range(args.seeds)]
        nasprobe.probe(folders, probe=probe_npz, out=store, framework="torch",
                       model=SPECS[config], input_shape=(1, 16, 16), progress=False)
        for folder in folders:
            log = read_training_log(folder / "metrics.csv")
            Store(store).write_metrics(folder.name, {"train_loss": log["train_loss"],
                                                     "train_accuracy": log["train_accuracy"]})
        print(f"probed {', '.join(f.name for f in folders)}", file=sys.stderr, flush=True)
    t_probe = time.perf_counter() - t0

    # 3. figures and the results table
    from nasprobe.plots import draw, save

    t0 = time.perf_counter()
    tree = nasprobe.open_store(store)
    ds = tree.to_dataset()
    groups = {LABELS[c]: [run_name(c, s) for s in range(args.seeds)] for c in CONFIGS}
    save(draw(tree, "line", groups=groups), out / "digits_line.png")
    save(draw(tree, "heatmaps", groups=groups), out / "digits_heatmaps.png")
    save(draw(tree, "dead", groups=groups), out / "digits_dead.png")
    t_fig = time.perf_counter() - t0

    rows = summarise(ds, args.seeds)
    write_results(out / "RESULTS.md", rows, epochs=args.epochs, seeds=args.seeds, beta=beta,
                  command=command, timings={"train": t_train, "probe": t_probe, "figures": t_fig,
                           "reused": reused})
    print((out / "RESULTS.md").read_text())
    for name in ("nas.zarr", "digits_line.png", "digits_heatmaps.png", "digits_dead.png",
                 "RESULTS.md"):
        print(f"{name}: {out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
