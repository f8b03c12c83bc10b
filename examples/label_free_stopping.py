"""Can NAS of unlabelled images tell when to stop training? A study that can say no.

Trains VanillaNet on scikit-learn's bundled digits (8×8 upscaled to 16×16; nothing is
downloaded) in 18 configurations × ``--seeds`` seeds, measures NAS of 200 unlabelled probe
digits after every epoch while training (``nasprobe_torch.LiveNAS``, no checkpoints are
probed from disk), and compares nasprobe's label-free stopping rules (``nasprobe.measures.stopping``)
with validation-loss early stopping (labels used) and with the oracle epoch of minimum test
loss. docs/label-free-stopping.md reports what this command produced.

Usage::

    .venv/bin/python examples/label_free_stopping.py --out /tmp/lfs [--epochs 40] [--seeds 5]
        [--jobs 2]

Setup:

* configurations: training set of 150, 300 or 600 digits × two VanillaNet sizes (``s``:
  16/16/32/32/64 channels, ``xs``: half as wide) × plain, dropout (DropNet: 0.25 after each
  conv block, 0.5 after fc1) or BatchNorm (NormNet) = 18; seeds 0..seeds-1 each. The seed sets
  the weights, the batch order and the data split.
* data per seed: a random split of the 1,797 digits into 600 training digits (the first 150 /
  300 / 600 are used), 300 validation digits (labels: for early stopping only), 500 test
  digits (labels: for the oracle and the reported numbers only) and 200 probe digits (no
  labels: the only input of the label-free rules).
* training: Adam, lr 0.002, batch 32, ``--epochs`` epochs, through
  ``nasprobe_torch.digits.fit_digits``.
* honest split: the 18 configurations are split in two halves (each has every training size,
  regulariser and both sizes); every rule's parameters (and early stopping's patience and
  start epoch) are chosen on the *tuning* half by the lowest mean excess test loss (test loss
  at the stop epoch minus the run's minimum), and every number reported is from the other,
  *report* half. As a check, the halves are also swapped (tune on the report half, evaluate
  on the tuning half): one summary table.

Writes ``OUT/runs/<run>.npz`` (one per training; kept, so an interrupted study resumes and a
second invocation only re-analyses), ``OUT/invocations.json`` (date, command, load and
training time of every invocation),
``OUT/series.zarr`` (all runs), ``OUT/results.md``, ``OUT/results.json`` and the figures
``OUT/label-free-stopping-examples.png`` and ``OUT/label-free-stopping-offsets.png``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

TRAIN_SIZES = (150, 300, 600)
WIDTHS = {"s": (16, 16, 32, 32, 64), "xs": (8, 8, 16, 16, 32)}
REGS = ("plain", "dropout", "batchnorm")
N_VAL, N_TEST, N_PROBE = 300, 500, 200
LR, BATCH = 0.002, 32
#: Parameter grids searched on the tuning half (every combination).
_SAT = {"window": [3, 5, 8], "tol": [0.005, 0.01, 0.02], "min_rise": [0.05]}
GRIDS = {
    "rise": {"delta": [0.02, 0.05, 0.1, 0.2, 0.3]},
    "plateau": {**_SAT, "min_rise": [0.05, 0.1]},
    "creep": {**_SAT, "delta": [0.005, 0.01, 0.02, 0.04, 0.08]},
    "gap": {**_SAT, "delta": [0.005, 0.01, 0.02, 0.04, 0.08]},
    "quantile": {**_SAT, "delta": [0.005, 0.01, 0.02, 0.04, 0.08]},
}
COMMON_GRID = {"patience": [1, 3], "min_epochs": [0, 5], "sigma": [1.0, 2.0]}
#: Validation-loss early stopping: patience × start epoch (Keras' ``start_from_epoch``; the
#: same choice of ``min_epochs`` the rules get).
ES_GRID = {"patience": [2, 3, 5, 8, 10], "min_epochs": [0, 5]}


def configs() -> list[tuple[int, str, str]]:
    """The 18 (train size, width key, regulariser) configurations."""
    return list(itertools.product(TRAIN_SIZES, WIDTHS, REGS))


def tuning_half(cfg: tuple[int, str, str]) -> bool:
    """True for the tuning half: alternate sizes within every (train size, regulariser)."""
    i, j, k = TRAIN_SIZES.index(cfg[0]), list(WIDTHS).index(cfg[1]), REGS.index(cfg[2])
    return (i + j + k) % 2 == 0


def run_name(cfg, seed: int) -> str:
    return f"n{cfg[0]}-{cfg[1]}-{cfg[2]}-s{seed}"


def train_one(cfg, seed: int, epochs: int, out: str) -> str:
    """Train one run, recording NAS and all losses every epoch into ``out/runs/<run>.npz``."""
    import torch

    from nasprobe.measures.online_stopper import summarize
    from nasprobe_torch import LiveNAS
    from nasprobe_torch.digits import digits_splits, fit_digits
    from nasprobe_torch.models import vanilla_net

    torch.set_num_threads(1)
    path = Path(out) / "runs" / f"{run_name(cfg, seed)}.npz"
    if path.exists():
        return path.name
    n, width, reg = cfg
    x_tr, y_tr, x_rest, y_rest = digits_splits(max(TRAIN_SIZES), N_VAL + N_TEST + N_PROBE, seed)
    x_val, y_val = torch.from_numpy(x_rest[:N_VAL]), torch.from_numpy(y_rest[:N_VAL])
    x_te, y_te = x_rest[N_VAL:N_VAL + N_TEST], y_rest[N_VAL:N_VAL + N_TEST]
    x_probe = x_rest[N_VAL + N_TEST:]  # labels never used
    torch.manual_seed(seed)
    kw = {"batch_norm": reg == "batchnorm"}
    if reg == "dropout":
        kw.update(dropout=0.25, fc_dropout=0.5)
    model = vanilla_net(widths=WIDTHS[width], in_channels=1, classes=10, input_size=16, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    live = LiveNAS(model, x_probe, layers=".", writer=_NoWriter())  # every layer, logits too
    rec: dict[str, list] = {k: [] for k in ("epoch", "train_loss", "test_loss", "test_accuracy",
                                            "val_loss", "val_accuracy", "nas_median",
                                            "nas_quantile")}
    layers: list[str] = []

    def on_epoch(epoch, metrics):
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
            rec["val_loss"].append(float(torch.nn.functional.cross_entropy(logits, y_val)))
            rec["val_accuracy"].append(float((logits.argmax(1) == y_val).float().mean()))
        maps = live.compute()
        layers[:] = list(maps)
        summary = summarize(maps)
        rec["epoch"].append(epoch)
        for k in ("train_loss", "test_loss", "test_accuracy"):
            rec[k].append(metrics[k])
        rec["nas_median"].append(summary["nas_median"])
        rec["nas_quantile"].append(summary["nas_quantile"])

    with tempfile.TemporaryDirectory() as tmp:
        fit_digits(model, opt, (x_tr[:n], y_tr[:n], x_te, y_te), tmp, epochs=epochs, seed=seed,
                   batch_size=BATCH, on_epoch=on_epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp_path, layers=np.array(layers), **{k: np.asarray(v) for k, v in rec.items()})
    os.replace(tmp_path, path)
    return path.name


class _NoWriter:
    """LiveNAS is only asked to compute here; nothing is written to TensorBoard."""

    def add_scalar(self, *a, **k):
        pass

    add_image = add_scalar
    flush = add_scalar
    close = add_scalar


def load_all(out: Path, runs: list[tuple]) -> xr.Dataset:
    """Every run's record as one Dataset (run, epoch, layer[, quantile])."""
    import xarray as xr

    from nasprobe.measures.aggregate import QUANTILES

    recs = [np.load(out / "runs" / f"{run_name(cfg, seed)}.npz") for cfg, seed in runs]
    layers = [str(v) for v in recs[0]["layers"]]
    epochs = recs[0]["epoch"]
    stack = {k: np.stack([r[k] for r in recs]) for k in
             ("train_loss", "test_loss", "test_accuracy", "val_loss", "val_accuracy",
              "nas_median", "nas_quantile")}
    dims = {"nas_median": ("run", "epoch", "layer"),
            "nas_quantile": ("run", "epoch", "layer", "quantile")}
    ds = xr.Dataset({k: (dims.get(k, ("run", "epoch")), v) for k, v in stack.items()},
                    coords={"run": [run_name(c, s) for c, s in runs], "epoch": epochs,
                            "layer": layers, "quantile": np.array(QUANTILES)})
    ds = ds.assign_coords(
        train_size=("run", [c[0] for c, _ in runs]), width=("run", [c[1] for c, _ in runs]),
        regularizer=("run", [c[2] for c, _ in runs]), seed=("run", [s for _, s in runs]),
        half=("run", ["tuning" if tuning_half(c) else "report" for c, _ in runs]))
    return ds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("label-free-stopping-out"))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--jobs", type=int, default=2, help="training processes (default 2)")
    args = p.parse_args(argv)
    from tqdm import tqdm

    t0 = time.time()
    load0 = os.getloadavg()
    runs = [(cfg, seed) for cfg in configs() for seed in range(args.seeds)]
    args.out.mkdir(parents=True, exist_ok=True)
    done = sum((args.out / "runs" / f"{run_name(c, s)}.npz").exists() for c, s in runs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futures = [pool.submit(train_one, cfg, seed, args.epochs, str(args.out))
                   for cfg, seed in runs]
        for f in tqdm(as_completed(futures), total=len(futures), desc="training runs",
                      file=sys.stderr):
            f.result()
    t_train = time.time() - t0
    ds = load_all(args.out, runs)
    ds.to_zarr(args.out / "series.zarr", mode="w")
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "load_at_start": [round(v, 2) for v in load0],
        "load_at_end": [round(v, 2) for v in os.getloadavg()],
        "train_seconds": round(t_train, 1), "trained_runs": len(runs) - done,
        "reused_runs": done, "epochs": args.epochs, "seeds": args.seeds, "jobs": args.jobs,
    }
    from label_free_stopping_analysis import analyse, invocations  # examples/ sibling module

    analyse(ds, args.out, meta, invocations(args.out, meta))
    print(f"wrote {args.out / 'results.md'} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
