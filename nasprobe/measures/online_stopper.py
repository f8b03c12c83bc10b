"""Applying a stopping rule epoch by epoch while training (the framework-free part of the
``NASEarlyStopping`` callbacks of the PyTorch and Keras adapters).

The callbacks hand each epoch's NAS maps to a :class:`Stopper`, which summarises them as a
store does (median and quantiles per layer) and applies a rule of :mod:`nasprobe.measures.stopping` to
the series so far. docs/label-free-stopping.md describes the rules and what they are worth.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from nasprobe.errors import NasprobeError

from .aggregate import QUANTILES
from .stopping import DEFAULTS, RULES, SIGNAL_PARAMS, check_params, prepare

__all__ = ["summarize", "Stopper", "StopperResults"]

_log = logging.getLogger("nasprobe.measures.stopping")


def summarize(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-layer summaries of NAS maps as the store keeps them: ``{layer: (median,
    quantiles (5,))}``-like dict ``{"nas_median": (L,), "nas_quantile": (L, 5)}`` over all
    (probe image, location) values of each map (any shape, NAS units), layers in ``maps``
    order; quantiles at :data:`nasprobe.measures.aggregate.QUANTILES`."""
    med, qs = [], []
    for m in maps.values():
        v = np.asarray(m, dtype=np.float64).ravel()
        med.append(float(np.median(v)))
        qs.append(np.quantile(v, QUANTILES))
    return {"nas_median": np.array(med), "nas_quantile": np.array(qs).reshape(len(med), -1)}


class Stopper:
    """A rule applied epoch by epoch while training (framework-free part of the
    ``NASEarlyStopping`` callbacks).

    rule, params: as :func:`stop_epoch` (``patience``, ``min_epochs`` and the rule's own).
    Feed it each epoch's NAS maps with :meth:`update`; it keeps the series (:meth:`dataset`),
    and :attr:`stop_epoch` once the rule has fired. Log lines go to the ``nasprobe.measures.stopping``
    logger (INFO: the signals seen and the decision, each epoch).
    """

    def __init__(self, rule: str, **params):
        check_params(rule, params)
        self.rule, self.params = rule, {**DEFAULTS[rule], **params}
        self.epochs: list[int] = []
        self.layers: list[str] | None = None
        self.rows: list[dict[str, np.ndarray]] = []
        self.stop_epoch: int | None = None
        self.signals: list[dict[str, float]] = []

    def update(self, epoch: int, maps: dict[str, np.ndarray]) -> bool:
        """Record epoch ``epoch``'s NAS maps (``{layer: map}``, every layer, the prediction
        layer last) and apply the rule to the series so far; True once it has fired (stop now)."""
        names = [str(k) for k in maps]
        if self.layers is None:
            self.layers = names
        elif names != self.layers:
            raise NasprobeError(f"epoch {epoch}: layers {names} differ from {self.layers}")
        if self.epochs and epoch <= self.epochs[-1]:
            raise NasprobeError(f"epoch {epoch} is not after epoch {self.epochs[-1]}")
        self.epochs.append(int(epoch))
        self.rows.append(summarize(maps))
        s, _ = prepare(self.rule, self.dataset(), self.params)
        seen = {k: float(v[-1]) for k, v in s.raw.items() if v.size}
        self.signals.append({"epoch": int(epoch), **seen})
        thresholds = {k: v for k, v in self.params.items() if k not in SIGNAL_PARAMS}
        fired = self.stop_epoch is None and RULES[self.rule](s, **thresholds) is not None
        if fired:
            self.stop_epoch = int(epoch)
        values = ", ".join(f"{k}={v:.4f}" for k, v in seen.items() if np.isfinite(v))
        _log.info("epoch %d: %s; rule %s %s", epoch, values, self.rule,
                  "fires: stop" if fired else "does not fire")
        return self.stop_epoch is not None

    def dataset(self) -> xr.Dataset:
        """The series so far: ``nas_median`` (epoch, layer), ``nas_quantile`` (epoch, layer,
        quantile), as in a store with one run."""
        if not self.rows:
            raise NasprobeError("no epoch recorded yet")
        return xr.Dataset(
            {"nas_median": (("epoch", "layer"), np.stack([r["nas_median"] for r in self.rows])),
             "nas_quantile": (("epoch", "layer", "quantile"),
                              np.stack([r["nas_quantile"] for r in self.rows]))},
            coords={"epoch": np.array(self.epochs), "layer": self.layers,
                    "quantile": np.array(QUANTILES)})


class StopperResults:
    """What an early-stopping callback exposes of its :class:`Stopper` (``self.stopper``).

    Shared by the framework callbacks so that each only measures NAS and decides when to stop.
    """

    stopper: Stopper

    @property
    def stop_epoch(self) -> int | None:
        """The epoch at which the rule fired, or None."""
        return self.stopper.stop_epoch

    @property
    def signals(self) -> list[dict[str, float]]:
        """Per recorded epoch: ``{"epoch", "deep", "shallow", "gap", "upper"}`` (NAS units)."""
        return self.stopper.signals

    def dataset(self) -> xr.Dataset:
        """The NAS series seen so far (``nas_median``, ``nas_quantile``; as a store's run)."""
        return self.stopper.dataset()
