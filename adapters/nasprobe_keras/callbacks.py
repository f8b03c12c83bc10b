"""Keras callbacks: per-epoch checkpoints nasprobe can read, and live NAS in TensorBoard.

* :class:`CheckpointCallback` writes ``init.keras`` at train begin (epoch -1),
  ``epoch_{epoch:03d}.keras`` at each epoch end (Keras' 0-based epoch: epoch ``e`` is the model
  after ``e + 1`` passes) and ``metrics.csv`` (``epoch,train_loss,train_accuracy,test_loss,
  test_accuracy`` from the logs ``loss, accuracy, val_loss, val_accuracy``).
* :class:`LiveNASCallback` writes, at each epoch end, the median NAS over all (probe image,
  location) pairs per layer as scalar ``nas_median/<layer>`` (the tag ``nasprobe tensorboard``
  uses) and the mean NAS map per layer as image ``nas_heatmap/<layer>`` (viridis on [0, 1], as
  ``nasprobe tensorboard`` draws it), with :class:`nasprobe.report.event_writer.EventWriter`
  (``tensorboard`` package, no TensorFlow).

Both save/probe the *inner* model when training a
:class:`nasprobe_keras.regularizers.Regularized` wrapper.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import keras
import numpy as np

from nasprobe.report.event_writer import EventWriter, heatmap_rgba

from .regularizers import NASMonitor, Regularized

__all__ = ["CheckpointCallback", "LiveNASCallback", "LOG_NAMES"]

#: Keras log key → ``metrics.csv`` column.
LOG_NAMES = {"loss": "train_loss", "accuracy": "train_accuracy",
             "val_loss": "test_loss", "val_accuracy": "test_accuracy"}


def _target(model):
    return model.inner if isinstance(model, Regularized) else model


class CheckpointCallback(keras.callbacks.Callback):
    """Save the model in ``folder`` in nasprobe's layout (``init.keras``, ``epoch_NNN.keras``,
    ``metrics.csv``).

    Args:
        folder: created if missing.
        model: the model to save (default: the model being trained, or the inner model of a
            ``Regularized`` wrapper).
        every: save a model when ``(epoch + 1) % every == 0``; the metrics row is written
            every epoch.

    A row already in ``metrics.csv`` for the same epoch (a restarted training) is replaced.
    """

    def __init__(self, folder, model=None, every: int = 1):
        super().__init__()
        self.folder = Path(folder)
        self.save_model = model
        self.every = every

    def _save(self, name):
        target = self.save_model or _target(self.model)
        path = self.folder / name
        tmp = self.folder / f"tmp_{name}"  # the .keras suffix is required by Model.save
        target.save(tmp)
        os.replace(tmp, path)

    def on_train_begin(self, logs=None):
        """Write ``init.keras`` (the untrained model), unless a restarted training has one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "init.keras").exists():
            self._save("init.keras")

    def on_epoch_end(self, epoch, logs=None):
        """Write the epoch's metrics row and, when due, ``epoch_NNN.keras``."""
        self._write_row(epoch, {LOG_NAMES[k]: float(v) for k, v in (logs or {}).items()
                                if k in LOG_NAMES})
        if (epoch + 1) % self.every == 0:
            self._save(f"epoch_{epoch:03d}.keras")

    def _write_row(self, epoch: int, row: dict) -> None:
        path = self.folder / "metrics.csv"
        columns = ("epoch",) + tuple(LOG_NAMES.values())
        rows = {}
        if path.exists():
            with open(path, newline="") as f:
                rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
        rows[int(epoch)] = {"epoch": int(epoch), **row}
        with open(path.with_name("metrics.csv.tmp"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, restval="")
            w.writeheader()
            w.writerows(rows[e] for e in sorted(rows))
        os.replace(path.with_name("metrics.csv.tmp"), path)


class LiveNASCallback(keras.callbacks.Callback):
    """NAS of a fixed probe set written to TensorBoard at each epoch end.

    Args:
        probe_x: probe inputs ``(P, ...)`` in the model's input layout (channels-last images).
        logdir: TensorBoard log folder (created).
        layers, tap, exclude_bias: as :class:`nasprobe_keras.regularizers.NASReg`.
        batch_size: probe images per forward pass (default all).

    ``medians`` holds ``{epoch: {layer: median NAS}}`` of what was written.
    """

    def __init__(self, probe_x, logdir, layers=None, tap="linear", exclude_bias=False,
                 batch_size=None):
        super().__init__()
        self.probe_x, self.logdir = probe_x, Path(logdir)
        self.layers, self.tap, self.exclude_bias = layers, tap, exclude_bias
        self.batch_size = batch_size
        self.medians: dict[int, dict[str, float]] = {}
        self._writer = None

    def on_train_begin(self, logs=None):
        """Open the event file in ``logdir``."""
        self._writer = EventWriter(self.logdir)

    def on_epoch_end(self, epoch, logs=None):
        """Probe, then write the medians and heatmaps at step ``epoch``."""
        monitor = NASMonitor(_target(self.model), self.layers, self.tap, self.exclude_bias)
        maps = monitor.measure(self.probe_x, self.batch_size)
        medians = {name: float(np.median(m)) for name, m in maps.items()}
        self._writer.write(epoch, {f"nas_median/{name}": v for name, v in medians.items()},
                           {f"nas_heatmap/{name}": heatmap_rgba(m.mean(axis=0))
                            for name, m in maps.items()})
        self._writer.flush()
        self.medians[int(epoch)] = medians

    def on_train_end(self, logs=None):
        """Close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
