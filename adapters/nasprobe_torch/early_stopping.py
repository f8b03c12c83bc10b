"""Label-free early stopping for PyTorch: stop when a NAS rule fires on unlabelled probe images.

* :class:`NASEarlyStopping` for a plain training loop: :meth:`~NASEarlyStopping.start` before
  the first epoch (measures the untrained model as epoch -1), then
  ``if stopper.step(epoch): break`` after every epoch. Its arguments are those of the Keras
  adapter's ``NASEarlyStoppingCallback``, ``model`` given by keyword (Keras and Lightning
  know the model being trained; a plain loop must name it).
* ``NASEarlyStoppingCallback`` (attribute resolved lazily; needs the ``lightning`` package)
  does the same from a Lightning ``Trainer`` (``trainer.should_stop``).

After every epoch the NAS maps of every Conv/Linear layer (the prediction layer included) on
``probe_x`` are summarised as a store keeps them (median, quantiles) and the rule of
:mod:`nasprobe.measures.stopping` is applied to the series so far. The rule is causal, so
``nasprobe onsets STORE --rule NAME`` on checkpoints of the same run gives the same epoch.
What the study measured about the rules (and their limits) is in docs/label-free-stopping.md.
"""

from __future__ import annotations

import warnings

import numpy as np
from torch import nn

from nasprobe.errors import install_hint
from nasprobe.measures.online_stopper import Stopper, StopperResults
from nasprobe.measures.stopping import RECOMMENDED

__all__ = ["NASEarlyStopping", "NASEarlyStoppingCallback"]  # noqa: F822 (module __getattr__)


class _NoWriter:
    """LiveNAS is only asked to compute here: nothing goes to TensorBoard."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    add_image = flush = close = add_scalar


class NASEarlyStopping(StopperResults):
    """Decide after each epoch whether to stop, from NAS of unlabelled probe images.

    Args:
        probe_x: unlabelled probe inputs ``(P, ...)`` (tensor or array).
        rule: a rule of :data:`nasprobe.measures.stopping.RULES` (default: the study's recommendation,
            :data:`nasprobe.measures.stopping.RECOMMENDED`); its parameters default to
            :data:`nasprobe.measures.stopping.DEFAULTS` (chosen by the study).
        patience: the rule's condition must hold this many consecutive epochs.
        min_epochs: never stop before this (0-based) epoch.
        model: the network (DDP unwrapped), keyword only; its Conv/Linear layers are tapped.
            (``NASEarlyStopping(model, probe_x, ...)``, the old order, still works with a
            ``DeprecationWarning``.)
        layers: which layers to tap (default ``"."``: every Conv/Linear, the prediction layer
            last; the rules' default deep layers are the two before it).
        tap, exclude_bias, batch_size: as :class:`nasprobe_torch.LiveNAS`.
        **params: the rule's other parameters (see :data:`nasprobe.measures.stopping.DEFAULTS`).

    Attributes: ``stop_epoch`` (None until the rule fires), ``signals`` (per epoch the
    signals the rule saw), :meth:`dataset` (the NAS series). Each decision is logged on the
    ``nasprobe.measures.stopping`` logger (INFO).
    """

    def __init__(self, probe_x, rule=None, *args, patience: int | None = None,
                 min_epochs: int | None = None, model: nn.Module | None = None, layers=".",
                 tap: str = "linear", exclude_bias: bool = False,
                 batch_size: int | None = None, **params):
        from nasprobe_torch import LiveNAS

        if isinstance(probe_x, nn.Module):  # the old order: (model, probe_x, rule)
            warnings.warn("NASEarlyStopping(model, probe_x, ...) is deprecated: use "
                          "NASEarlyStopping(probe_x, rule, model=model, ...)",
                          DeprecationWarning, stacklevel=2)
            if model is not None:
                raise TypeError("NASEarlyStopping: model given twice")
            model, probe_x, rule = probe_x, rule, (args[0] if args else None)
            args = args[1:]
        if args:
            raise TypeError(f"NASEarlyStopping takes 2 positional arguments (probe_x, rule), "
                            f"{2 + len(args)} were given")
        if model is None:
            raise TypeError("NASEarlyStopping needs the network: NASEarlyStopping(probe_x, "
                            "model=net)")
        rule = RECOMMENDED if rule is None else rule
        if patience is not None:
            params["patience"] = patience
        if min_epochs is not None:
            params["min_epochs"] = min_epochs
        self.stopper = Stopper(rule, **params)
        self.rule, self.params = rule, self.stopper.params
        self._live = LiveNAS(model, probe_x, layers=layers, tap=tap, exclude_bias=exclude_bias,
                             batch_size=batch_size, writer=_NoWriter())

    def measure(self) -> dict[str, np.ndarray]:
        """NAS maps ``{layer: (P, *locations)}`` of the probe set now (eval mode, no grad)."""
        return self._live.compute()

    def start(self) -> None:
        """Record the untrained model as epoch -1 (call once before training)."""
        self.stopper.update(-1, self.measure())

    def step(self, epoch: int) -> bool:
        """Measure after 0-based ``epoch`` and apply the rule; True once it has fired: stop."""
        return self.stopper.update(epoch, self.measure())


def _lightning_callback_class():
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("NASEarlyStoppingCallback needs the 'lightning' package: "
                          f"{install_hint('lightning')}") from e

    class NASEarlyStoppingCallback(Callback):
        """Lightning callback: measure the untrained model at fit start, then after every
        training epoch (validation included) apply the rule; when it fires,
        ``trainer.should_stop = True``.

        Args:
            probe_x: unlabelled probe inputs.
            rule: as :class:`NASEarlyStopping`.
            model: the ``nn.Module`` to tap (e.g. ``pl_module.net``); default the
                ``LightningModule``.
            patience, min_epochs, layers, tap, exclude_bias, batch_size, **params: as
                :class:`NASEarlyStopping`.

        ``stopping`` is the :class:`NASEarlyStopping` once fitting started.
        """

        def __init__(self, probe_x, rule: str | None = None, model=None, *,
                     patience: int | None = None, min_epochs: int | None = None, layers=".",
                     tap: str = "linear", exclude_bias: bool = False,
                     batch_size: int | None = None, **params):
            self.probe_x, self.rule, self.model = probe_x, rule, model
            self.kwargs = dict(patience=patience, min_epochs=min_epochs, layers=layers, tap=tap,
                               exclude_bias=exclude_bias, batch_size=batch_size, **params)
            self.stopping: NASEarlyStopping | None = None

        def on_fit_start(self, trainer, pl_module):
            if self.stopping is None:
                self.stopping = NASEarlyStopping(self.probe_x, self.rule,
                                                 model=self.model or pl_module, **self.kwargs)
                self.stopping.start()

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            if self.stopping.step(trainer.current_epoch):
                trainer.should_stop = True

    return NASEarlyStoppingCallback


def __getattr__(name):
    if name == "NASEarlyStoppingCallback":
        cls = _lightning_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
