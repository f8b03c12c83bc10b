"""Real bundled data for the demo and the examples: a small CNN overfitting sklearn's digits.

``load_digits`` (1,797 handwritten 8×8 digits, shipped with scikit-learn) is upscaled to
16×16 and split into a small training set (so that the network overfits within a few dozen
epochs) and a held-out probe/test set. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .callbacks import CheckpointWriter
from .models import drop_net, norm_net, vanilla_net

__all__ = ["digits_splits", "fit_digits", "train_digits", "NETS", "DIGITS_WIDTHS"]

#: Channels of conv1..conv4 and fc1 used on digits (the 2020 paper's size "s").
DIGITS_WIDTHS = (16, 16, 32, 32, 64)
NETS = {"vanilla": vanilla_net, "norm": norm_net, "drop": drop_net}


def digits_splits(train: int = 300, probe: int = 500, seed: int = 0):
    """``(x_train, y_train, x_probe, y_probe)``: images float32 ``(N, 1, 16, 16)`` in [0, 1],
    labels int64 ``(N,)``; disjoint random subsets of the 1,797 digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron(d.images / 16.0, np.ones((2, 2))).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    tr, pr = order[:train], order[train:train + probe]
    return x[tr], y[tr], x[pr], y[pr]


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        out = model(x)
        return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def fit_digits(model: nn.Module, opt: torch.optim.Optimizer, splits, run_dir, *, epochs: int,
               seed: int, batch_size: int = 32, regularizer=None, on_epoch=None) -> None:
    """Train ``model`` with cross-entropy (+ ``regularizer.penalty()``), saving ``init.pt``, one
    ``epoch_NNN.pt`` per epoch and ``metrics.csv`` (train/test loss in nats and accuracy as a
    fraction) into ``run_dir`` with :class:`~nasprobe_torch.callbacks.CheckpointWriter`.

    ``splits`` is :func:`digits_splits`' ``(x_train, y_train, x_test, y_test)``; ``seed`` seeds
    the order of the mini-batches (``batch_size`` images each). ``on_epoch(epoch, metrics)``,
    when given, is called after ``init.pt`` (epoch -1) and after every epoch's checkpoint, with
    the row just written (e.g. to measure NAS while training).
    """
    x_tr, y_tr, x_pr, y_pr = splits
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    xp, yp = torch.from_numpy(x_pr), torch.from_numpy(y_pr)
    writer = CheckpointWriter(run_dir, model)

    def metrics():
        tl, ta = _evaluate(model, xt, yt)
        vl, va = _evaluate(model, xp, yp)
        return {"train_loss": tl, "train_accuracy": ta, "test_loss": vl, "test_accuracy": va}

    row = metrics()
    writer.save_init(row)
    if on_epoch is not None:
        on_epoch(-1, row)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            if regularizer is not None:
                loss = loss + regularizer.penalty()
            loss.backward()
            opt.step()
        row = metrics()
        writer.save(epoch, row)
        if on_epoch is not None:
            on_epoch(epoch, row)


def train_digits(folder: str | os.PathLike, *, net: str = "vanilla", epochs: int = 30,
                 seed: int = 0, optimizer: str = "adam", lr: float | None = None,
                 batch_size: int = 32, train: int = 150, probe: int = 500,
                 regularizer=None, split_seed: int | None = None) -> dict:
    """Train a paper network on digits, saving ``init.pt`` and ``epoch_NNN.pt`` per epoch.

    Args:
        folder: output folder; gets ``run/`` (checkpoints + ``metrics.csv``) and ``probe.npz``
            (the held-out images ``x`` (N, 1, 16, 16) and labels ``y``).
        net: ``vanilla``, ``norm`` (BatchNorm) or ``drop`` (dropout).
        epochs, seed, batch_size: training length, seed of weights and data split, batch.
        optimizer, lr: ``adam`` (default lr 0.002; overfits 150 digits within ~15 epochs) or
            ``sgd`` (the papers' plain SGD, default lr 0.01, no momentum; needs more epochs).
        train, probe: sizes of the training split and the held-out probe/test split.
        split_seed: seed of the train/probe split (default ``seed``); keep it fixed across
            seeds so that every run shares one probe set and can go into one store.
        regularizer: optional callable ``model -> object with .penalty()`` (e.g.
            ``lambda m: NASReg(m, ...)``), added to the loss each step.

    Returns:
        ``{"run": Path, "probe": Path, "model": "MODULE:CALLABLE(...)"}`` for ``nasprobe probe``.
    """
    folder = Path(folder)
    torch.manual_seed(seed)
    x_tr, y_tr, x_pr, y_pr = digits_splits(train, probe, seed if split_seed is None else split_seed)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "probe.npz", x=x_pr, y=y_pr)
    model = NETS[net](widths=DIGITS_WIDTHS, in_channels=1, classes=10, input_size=16)
    reg = regularizer(model) if regularizer is not None else None
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr or 0.002)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr or 0.01)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', not {optimizer!r}")
    fit_digits(model, opt, (x_tr, y_tr, x_pr, y_pr), folder / "run", epochs=epochs, seed=seed,
               batch_size=batch_size, regularizer=reg)
    factory = {"vanilla": "vanilla_net", "norm": "norm_net", "drop": "drop_net"}[net]
    spec = (f"nasprobe_torch.models:{factory}(widths={list(DIGITS_WIDTHS)}, in_channels=1, "
            "classes=10, input_size=16)")
    return {"run": folder / "run", "probe": folder / "probe.npz", "model": spec}
