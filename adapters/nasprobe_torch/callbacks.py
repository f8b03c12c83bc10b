"""Training callbacks for PyTorch: per-epoch checkpoints nasprobe can read, and live NAS.

* :class:`CheckpointWriter` writes ``init.pt`` (epoch -1) and ``epoch_{epoch:03d}.pt`` (the
  model's ``state_dict``) plus ``metrics.csv`` (``epoch,train_loss,train_accuracy,test_loss,
  test_accuracy``), the layout ``nasprobe probe FOLDER`` and
  ``nasprobe.store.training_logs.read_training_log`` understand. Epochs are 0-based: epoch ``e`` is
  the model after ``e + 1`` passes over the training data.
* ``CheckpointCallback`` (attribute resolved lazily; needs the ``lightning`` package) does
  the same from a Lightning ``Trainer``, with the arguments of the Keras adapter's
  ``CheckpointCallback``.

Names: a class the framework calls (a Lightning or Keras callback) ends in ``Callback``; one
that your own training loop calls (plain PyTorch has no callbacks) does not:
:class:`CheckpointWriter`, :class:`LiveNAS`.
* :class:`LiveNAS` writes median NAS per layer (scalars ``nas_median/<layer>``, the tag
  ``nasprobe tensorboard`` uses) and the mean NAS heatmap per layer (images
  ``nas_heatmap/<layer>``, viridis on ``[0, 1]``) to TensorBoard with
  :class:`nasprobe.report.event_writer.EventWriter` (needs the ``tensorboard`` package).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nasprobe.errors import install_hint
from nasprobe.report.event_writer import EventWriter, heatmap_rgba

from .regularizers import NASMonitor
from .taps import unwrap

__all__ = ["CheckpointWriter", "LiveNAS", "CheckpointCallback",  # noqa: F822 (module __getattr__)
           "METRIC_COLUMNS"]

#: Columns of ``metrics.csv`` after ``epoch``.
METRIC_COLUMNS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


class CheckpointWriter:
    """Per-epoch checkpoints of ``model`` in ``folder``.

    Args:
        folder: created if missing.
        model: the model whose ``state_dict`` is saved (DDP/DataParallel unwrapped).
        every: write a checkpoint when ``(epoch + 1) % every == 0`` (the metrics row is written
            every epoch).

    A restarted training may call :meth:`save` again for an epoch: the file and the metrics
    row are replaced, not duplicated.
    """

    def __init__(self, folder: str | os.PathLike, model: nn.Module, every: int = 1):
        if every < 1:
            raise ValueError(f"every must be >= 1, not {every}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.every = every

    def _write(self, name: str) -> Path:
        path = self.folder / name
        tmp = path.with_name(path.name + ".tmp")
        torch.save(unwrap(self.model).state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def save_init(self, metrics: dict | None = None) -> Path:
        """Write ``init.pt`` (the untrained model, epoch -1) and, with ``metrics``, its row."""
        if metrics:
            self.write_metrics(-1, metrics)
        return self._write("init.pt")

    def save(self, epoch: int, metrics: dict | None = None) -> Path | None:
        """Write ``epoch_{epoch:03d}.pt`` (when due, see ``every``) and the epoch's metrics row.

        Args:
            epoch: 0-based epoch.
            metrics: any of ``train_loss, train_accuracy, test_loss, test_accuracy`` (floats or
                0-d tensors); other keys raise ``ValueError``.

        Returns:
            The checkpoint path, or ``None`` when this epoch is not due.
        """
        if metrics:
            self.write_metrics(epoch, metrics)
        if (epoch + 1) % self.every:
            return None
        return self._write(f"epoch_{epoch:03d}.pt")

    def write_metrics(self, epoch: int, metrics: dict) -> None:
        """Insert or replace the row of ``epoch`` in ``metrics.csv`` (rows sorted by epoch)."""
        unknown = set(metrics) - set(METRIC_COLUMNS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; allowed: {METRIC_COLUMNS}")
        path = self.folder / "metrics.csv"
        rows: dict[int, dict] = {}
        if path.exists():
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    rows[int(row["epoch"])] = row
        rows[int(epoch)] = {"epoch": int(epoch), **{k: _number(v) for k, v in metrics.items()}}
        tmp = path.with_name("metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=("epoch",) + METRIC_COLUMNS, restval="")
            w.writeheader()
            for e in sorted(rows):
                w.writerow(rows[e])
        os.replace(tmp, path)


def _number(v) -> float:
    return float(v.item() if hasattr(v, "item") else v)


class LiveNAS:
    """NAS of a fixed probe batch written to TensorBoard while training.

    Args:
        model: the model (DDP unwrapped).
        probe_x: probe inputs ``(P, ...)``, a tensor or array, moved to the model's device.
        logdir: TensorBoard log folder (or pass ``writer``, a
            :class:`nasprobe.report.event_writer.EventWriter`).
        layers, tap, exclude_bias: as :class:`nasprobe_torch.regularizers.NASMonitor`.
        batch_size: probe images per forward pass (default: all at once).

    :meth:`log` runs the probe in eval mode under ``no_grad`` (restoring train mode), and writes,
    per layer, the median of NAS over all (probe image, location) pairs as scalar
    ``nas_median/<layer>`` (the tag ``nasprobe tensorboard`` uses) and the per-location mean
    over probe images as image ``nas_heatmap/<layer>``.
    """

    def __init__(self, model: nn.Module, probe_x, logdir=None, layers=None, tap: str = "linear",
                 exclude_bias: bool = False, batch_size: int | None = None, writer=None):
        self.model = unwrap(model)
        self.probe_x = torch.as_tensor(probe_x)
        param = next(self.model.parameters(), None)
        if param is not None and self.probe_x.is_floating_point():
            self.probe_x = self.probe_x.to(param.dtype)
        self.batch_size = batch_size or len(self.probe_x)
        self.layers, self.tap, self.exclude_bias = layers, tap, exclude_bias
        self.writer = writer if writer is not None else EventWriter(logdir)

    def compute(self) -> dict[str, np.ndarray]:
        """``{layer: NAS maps (P, *locations)}`` of the probe set, float32 numpy
        (:meth:`NASMonitor.measure <nasprobe_torch.regularizers.NASMonitor.measure>`)."""
        monitor = NASMonitor(self.model, self.layers, self.tap, self.exclude_bias)
        try:
            return monitor.measure(self.probe_x, self.batch_size)
        finally:
            monitor.remove()

    def log(self, epoch: int) -> dict[str, float]:
        """Write this epoch's scalars and heatmaps (step = ``epoch``); returns the medians."""
        maps = self.compute()
        medians = {name: float(np.median(m)) for name, m in maps.items()}
        self.writer.write(epoch, {f"nas_median/{name}": v for name, v in medians.items()},
                          {f"nas_heatmap/{name}": heatmap_rgba(m.mean(axis=0))
                           for name, m in maps.items()})
        self.writer.flush()
        return medians

    def close(self) -> None:
        """Close the writer."""
        self.writer.close()


def _lightning_callback_class():
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("CheckpointCallback needs the 'lightning' package: "
                          f"{install_hint('lightning')}") from e

    # Lightning metric names → nasprobe's; first match wins.
    names = {
        "train_loss": ("train_loss_epoch", "train_loss"),
        "train_accuracy": ("train_accuracy_epoch", "train_accuracy", "train_acc_epoch", "train_acc"),
        "test_loss": ("test_loss", "val_loss_epoch", "val_loss"),
        "test_accuracy": ("test_accuracy", "val_accuracy", "val_acc_epoch", "val_acc"),
    }

    class CheckpointCallback(Callback):
        """Lightning callback: ``init.pt`` at fit start, ``epoch_NNN.pt`` and ``metrics.csv``
        at each training epoch end (after validation), from ``trainer.callback_metrics``
        (``train_loss``/``train_acc[uracy]``, ``val_loss``/``val_acc[uracy]``, ``_epoch``
        suffixes accepted). Only the global-zero process writes.

        Args:
            folder: checkpoint folder.
            model: the ``nn.Module`` to save (e.g. ``pl_module.net`` so that keys have no
                prefix); default the ``LightningModule`` itself.
            every: as :class:`CheckpointWriter`.
        """

        def __init__(self, folder, model=None, every: int = 1):
            self.folder, self.every, self.model = folder, every, model
            self.writer = None

        def _metrics(self, trainer):
            got = trainer.callback_metrics
            out = {}
            for ours, theirs in names.items():
                for k in theirs:
                    if k in got:
                        out[ours] = _number(got[k])
                        break
            return out

        def on_fit_start(self, trainer, pl_module):
            self.writer = CheckpointWriter(self.folder, self.model or pl_module, self.every)
            if trainer.is_global_zero and not (self.writer.folder / "init.pt").exists():
                self.writer.save_init()

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.is_global_zero and not trainer.sanity_checking:
                self.writer.save(trainer.current_epoch, self._metrics(trainer))

    class NASCheckpointCallback(CheckpointCallback):
        """Deprecated name of :class:`CheckpointCallback` (arguments ``folder, every,
        model``, in that order)."""

        def __init__(self, folder, every: int = 1, model=None):
            warnings.warn("NASCheckpointCallback is deprecated: use CheckpointCallback(folder, "
                          "model=None, every=1)", DeprecationWarning, stacklevel=2)
            super().__init__(folder, model=model, every=every)

    return {"CheckpointCallback": CheckpointCallback,
            "NASCheckpointCallback": NASCheckpointCallback}


def __getattr__(name):
    if name in ("CheckpointCallback", "NASCheckpointCallback"):
        globals().update(_lightning_callback_class())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
