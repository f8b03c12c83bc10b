"""Label-free early stopping for Keras ``model.fit``: stop when a NAS rule fires on unlabelled
probe images.

:class:`NASEarlyStoppingCallback` measures the untrained model at train begin (epoch -1) and, at
every epoch end, the NAS maps of every Conv/Dense layer (the prediction layer included) on
``probe_x``; they are summarised as a store keeps them (median, quantiles) and a rule of
:mod:`nasprobe.measures.stopping` is applied to the series so far. When it fires,
``model.stop_training`` is set. The rule is causal, so ``nasprobe onsets STORE --rule NAME``
on checkpoints of the same run gives the same epoch. What the rules are worth:
docs/label-free-stopping.md.
"""

from __future__ import annotations

import warnings

import keras

from nasprobe.measures.online_stopper import Stopper, StopperResults
from nasprobe.measures.stopping import RECOMMENDED
from nasprobe_keras.regularizers import NASMonitor, Regularized

__all__ = ["NASEarlyStoppingCallback", "NASEarlyStopping"]


class NASEarlyStoppingCallback(StopperResults, keras.callbacks.Callback):
    """Keras callback: stop training when a label-free NAS rule fires.

    The arguments of the PyTorch adapter's ``NASEarlyStopping`` (and its Lightning
    ``NASEarlyStoppingCallback``).

    Args:
        probe_x: unlabelled probe inputs ``(P, ...)`` in the model's input layout.
        rule: a rule of :data:`nasprobe.measures.stopping.RULES` (default
            :data:`nasprobe.measures.stopping.RECOMMENDED`); its parameters default to
            :data:`nasprobe.measures.stopping.DEFAULTS` (chosen by the study).
        patience: the rule's condition must hold this many consecutive epochs.
        min_epochs: never stop before this (0-based) epoch.
        model: the model to measure (default: the model being trained, or the inner model of
            a ``Regularized`` wrapper).
        layers: which layers to tap (default ``"."``: every Conv/Dense, the prediction layer
            last; the rules' default deep layers are the two before it).
        tap, exclude_bias: as :class:`nasprobe_keras.regularizers.NASReg`.
        batch_size: probe images per forward pass (default all).
        **params: the rule's other parameters.

    Attributes: ``stop_epoch`` (None until the rule fires), ``signals`` (per epoch the
    signals the rule saw), :meth:`dataset` (the NAS series). A ``Regularized`` wrapper's inner
    model is measured. Each decision is logged on the ``nasprobe.measures.stopping`` logger (INFO).
    """

    def __init__(self, probe_x, rule: str | None = None, *, patience: int | None = None,
                 min_epochs: int | None = None, model=None, layers=".", tap: str = "linear",
                 exclude_bias: bool = False, batch_size: int | None = None, **params):
        super().__init__()
        self.measured_model = model
        if patience is not None:
            params["patience"] = patience
        if min_epochs is not None:
            params["min_epochs"] = min_epochs
        self.probe_x, self.batch_size = probe_x, batch_size
        self.layers, self.tap, self.exclude_bias = layers, tap, exclude_bias
        self.stopper = Stopper(RECOMMENDED if rule is None else rule, **params)
        self.rule, self.params = self.stopper.rule, self.stopper.params

    def _measure(self) -> dict:
        target = self.measured_model or self.model
        if isinstance(target, Regularized):
            target = target.inner
        monitor = NASMonitor(target, self.layers, self.tap, self.exclude_bias)
        return monitor.measure(self.probe_x, self.batch_size)

    def on_train_begin(self, logs=None):
        """Measure the untrained model (epoch -1) unless a restarted training already did."""
        if not self.stopper.epochs:
            self.stopper.update(-1, self._measure())

    def on_epoch_end(self, epoch, logs=None):
        """Measure the epoch; stop training when the rule fires."""
        if self.stopper.update(epoch, self._measure()):
            self.model.stop_training = True


class NASEarlyStopping(NASEarlyStoppingCallback):
    """Deprecated name of :class:`NASEarlyStoppingCallback` (Keras callbacks end in
    ``Callback`` here, as :class:`~nasprobe_keras.callbacks.CheckpointCallback` does)."""

    def __init__(self, probe_x, rule: str | None = None, **kwargs):
        warnings.warn("nasprobe_keras NASEarlyStopping is deprecated: use "
                      "NASEarlyStoppingCallback (same arguments)", DeprecationWarning,
                      stacklevel=2)
        super().__init__(probe_x, rule, **kwargs)
