r"""A small Flax NNX CNN on scikit-learn's digits, an Orbax checkpoint per epoch, probed by nasprobe.

Trains ``DigitsCNN`` (conv1 → BatchNorm → ReLU → conv2 → ReLU → max-pool → fc → ReLU → head) on
300 of the 1,797 bundled 8×8 digits (nothing is downloaded) with Adam in a jitted train step,
optionally with the NAS regulariser of ``nasprobe_jax`` on its pre-activations; saves
``nnx.state(model)`` as an Orbax checkpoint folder before training (``init``) and after every
epoch (``epoch_NNN``), with ``metrics.csv``; then probes every epoch with nasprobe (the adapter
found from the folders, the architecture rebuilt from this file by ``--model``) and prints the
median NAS per layer and epoch next to the test accuracy.

Usage::

    .venv/bin/python examples/jax_digits.py --out /tmp/jax-digits [--epochs 10] [--nasreg 0.02]

The same probe from the shell::

    nasprobe probe /tmp/jax-digits/run --probe /tmp/jax-digits/probe.npz \
        --out /tmp/jax-digits/nas.zarr --model examples/jax_digits.py:DigitsCNN \
        --metrics /tmp/jax-digits/run/metrics.csv
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

TRAIN, PROBE, SEED = 300, 500, 0


class DigitsCNN(nnx.Module):
    """The example's network; ``DigitsCNN()`` is also what ``--model`` builds."""

    input_shape = (8, 8, 1)

    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.conv1 = nnx.Conv(1, 16, (3, 3), padding="SAME", rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), padding="SAME", rngs=rngs)
        self.fc = nnx.Linear(32 * 4 * 4, 64, rngs=rngs)
        self.head = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.conv2(x))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.fc(x.reshape(x.shape[0], -1)))
        return self.head(x)


def digits_splits():
    """``(x_train, y_train, x_probe, y_probe)``: NHWC float32 images in [0, 1], int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    order = np.random.default_rng(SEED).permutation(len(x))
    tr, pr = order[:TRAIN], order[TRAIN:TRAIN + PROBE]
    return x[tr], d.target[tr], x[pr], d.target[pr]


def train(run: Path, epochs: int, nasreg: float) -> None:
    """Train into ``run``: Orbax folders ``init``, ``epoch_000``... and ``metrics.csv``."""
    from nasprobe_jax.regularizers import NASReg
    from nasprobe_jax.taps import forward_with_taps

    x_tr, y_tr, x_pr, y_pr = digits_splits()
    model = DigitsCNN(SEED)
    optimizer = nnx.Optimizer(model, optax.adam(2e-3), wrt=nnx.Param)
    reg = NASReg()

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            logits, taps = forward_with_taps(model, x, layers=["conv1", "conv2", "fc"])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return ce + nasreg * reg(taps) if nasreg else ce

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def evaluate(model, x, y):
        logits = model(x)
        return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
                (logits.argmax(-1) == y).mean())

    checkpointer = ocp.StandardCheckpointer()
    rows = []

    def save(name: str, epoch: int) -> None:
        model.eval()
        tl, ta = evaluate(model, x_tr, y_tr)
        vl, va = evaluate(model, x_pr, y_pr)
        checkpointer.save((run / name).resolve(), nnx.state(model))
        rows.append((epoch, float(tl), float(ta), float(vl), float(va)))

    save("init", -1)
    rng = np.random.default_rng(SEED)
    for epoch in range(epochs):
        model.train()
        for idx in np.array_split(rng.permutation(TRAIN), TRAIN // 32):
            step(model, optimizer, x_tr[idx], y_tr[idx])
        save(f"epoch_{epoch:03d}", epoch)
    checkpointer.wait_until_finished()
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"])
        writer.writerows(rows)
    np.savez(run.parent / "probe.npz", x=x_pr, y=y_pr)


def main() -> None:
    """Train, probe, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--nasreg", type=float, default=0.0,
                        help="weight of the NAS regulariser on conv1, conv2, fc (0: off)")
    args = parser.parse_args()
    import nasprobe
    from nasprobe.store.training_logs import read_training_log
    from nasprobe.store.writer import Store

    run = args.out / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    t0 = time.perf_counter()
    train(run, args.epochs, args.nasreg)
    t1 = time.perf_counter()
    store = args.out / "nas.zarr"
    shutil.rmtree(store, ignore_errors=True)
    nasprobe.probe([run], out=store, probe=args.out / "probe.npz",
                   model=f"{Path(__file__).resolve()}:DigitsCNN")
    Store(store).write_metrics("run", read_training_log(run / "metrics.csv"))
    t2 = time.perf_counter()
    ds = nasprobe.open_store(store).to_dataset()
    layers = list(ds["layer"].values)
    print(f"trained {args.epochs} epochs in {t1 - t0:.1f} s, probed in {t2 - t1:.1f} s "
          f"(JAX {jax.__version__}, {jax.devices()[0].platform})")
    print("epoch  test_acc  " + "  ".join(f"{name:>7}" for name in layers))
    for epoch in ds["epoch"].values:
        med = ds["nas_median"].sel(run="run", epoch=epoch)
        acc = float(ds["accuracy"].sel(run="run", epoch=epoch)) if "accuracy" in ds else np.nan
        print(f"{int(epoch):5d}  {acc:8.3f}  "
              + "  ".join(f"{float(med.sel(layer=name)):7.3f}" for name in layers))


if __name__ == "__main__":
    main()
