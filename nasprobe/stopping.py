"""Label-free stopping rules: when to stop training, from the NAS of unlabelled probe images.

Every rule reads one run's NAS series (an ``xarray.Dataset`` with ``nas_median`` over
``(epoch, layer)`` and, for ``quantile``, ``nas_quantile`` over ``(epoch, layer, quantile)``:
a store's root dataset with one run selected, or what a ``NASEarlyStopping`` callback collected)
and returns the epoch at which it fires — training stops after that epoch — or ``None``.
No labels are used. docs/label-free-stopping.md describes the rules and measures them against
validation-loss early stopping.

**Causal by construction.** Whether a rule fires at epoch ``t`` depends only on epochs
``<= t``: at every epoch the series *up to that epoch* is smoothed on its own with
:func:`nasprobe.onsets.smooth` (Gaussian, ``sigma`` epochs, ``mode="nearest"``), so a later
epoch never changes an earlier decision. Applied after the fact to a whole run, a rule
therefore returns exactly the epoch at which a callback evaluating it every epoch stops.
Epochs are taken in order, one step apart (``window`` counts epochs as entries); NaN entries
(epochs not probed) are dropped.

**Signals** (per epoch, NAS units):

* ``deep`` — the mean over the *deep* layers of their median NAS. By default the deep layers
  are the two layers before the last one (the last layer of the series is taken to be the
  prediction layer, whose sparsity is wanted), e.g. conv4 and fc1 of VanillaNet.
* ``shallow`` — the same over the *shallow* layers (default: the first layer).
* ``gap`` — ``deep - shallow``.
* ``upper`` — the mean over the deep layers of NAS quantile ``q`` (default 0.95) over probe
  images and locations: the upper tail of the NAS histogram.

**Saturation** of the deep layers at epoch ``t`` (``s`` = the smoothed ``deep`` prefix):
``s[t] - min(s) >= min_rise`` (it has risen) and ``s[t] - s[t - window] < tol`` (it no longer
rises much).

**Rules** (each also takes ``min_epochs``: never fire before that epoch; ``patience``: the
condition must hold at ``patience`` consecutive epochs, and the rule fires at the last):

=========== ==========================================================================
``rise``    naive: the smoothed deep signal is ``delta`` above its first value
``plateau`` the deep layers are saturated
``creep``   after the first saturated epoch ``t_s``, the smoothed deep signal is ``delta``
            above its minimum since ``t_s``
``gap``     as ``creep`` with the shallow-to-deep gap
``quantile`` as ``creep`` with the upper quantile of the deep layers
=========== ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import xarray as xr

from .errors import NasprobeError
from .onsets import smooth

__all__ = ["RULES", "DEFAULTS", "Series", "series", "stop_epoch", "stop_epochs", "rise",
           "plateau", "creep", "gap", "quantile", "deep_layers", "check_params", "RECOMMENDED",
           "SIGNAL_PARAMS"]

#: Parameters that shape the signals (not the rule's thresholds).
SIGNAL_PARAMS = ("deep", "shallow", "q", "sigma")


def deep_layers(layers: Sequence[str], n: int = 2) -> list[str]:
    """The default deep layers: the ``n`` layers before the last (prediction) layer; with
    fewer layers, every layer but the last, or the only one."""
    layers = [str(v) for v in layers]
    hidden = layers[:-1] or layers
    return hidden[-n:]


def _prefix_rows(values: np.ndarray, epochs: np.ndarray, sigma: float) -> np.ndarray:
    """``(T, T)`` array whose row ``t`` is the prefix ``values[:t+1]`` smoothed on its own
    (NaN after column ``t``)."""
    n = values.size
    out = np.full((n, n), np.nan)
    for t in range(n):
        out[t, :t + 1] = values[:t + 1] if sigma <= 0 else smooth(values[:t + 1],
                                                                  epochs[:t + 1], sigma)[0]
    return out


@dataclass
class Series:
    """One run's stopping signals, smoothed prefix by prefix (see the module docstring).

    epochs: ``(T,)`` epochs with a finite deep signal, ascending. ``raw``: ``{signal: (T,)}``
    unsmoothed values; ``rows``: ``{signal: (T, T)}`` smoothed prefixes (row ``t`` = the
    signal up to epoch ``epochs[t]`` smoothed with ``sigma``). Build with :func:`series`.
    """

    epochs: np.ndarray
    raw: dict[str, np.ndarray]
    sigma: float
    deep: list[str]
    shallow: list[str]
    q: float
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    def prefix(self, name: str) -> np.ndarray:
        """Smoothed prefixes of signal ``name`` (``(T, T)``, computed on first use)."""
        if name not in self.rows:
            values = self.raw[name]
            if not np.isfinite(values).all():
                what = "nas_quantile" if name == "upper" else "nas_median"
                raise NasprobeError(f"signal {name!r} needs {what} at every probed epoch")
            self.rows[name] = _prefix_rows(values, self.epochs, self.sigma)
        return self.rows[name]


def _layer_list(value, layers: list[str], default: list[str], what: str) -> list[str]:
    if value is None:
        return default
    chosen = [value] if isinstance(value, str) else [str(v) for v in value]
    missing = [v for v in chosen if v not in layers]
    if missing or not chosen:
        raise NasprobeError(f"{what} layers {missing or chosen} not among the series' layers "
                            f"{layers}")
    return chosen


def series(ds: xr.Dataset, *, deep=None, shallow=None, q: float = 0.95,
           sigma: float = 1.0) -> Series:
    """The signals of one run.

    ds: ``nas_median`` with dims ``(epoch, layer)`` (a ``run`` dimension of length 1 is
    dropped), optional ``nas_quantile`` ``(epoch, layer, quantile)``.
    deep, shallow: layer names (defaults: :func:`deep_layers`, the first layer).
    q: the quantile of the ``upper`` signal (one of the stored ``quantile`` coordinates).
    sigma: Gaussian smoothing in epochs (0 = none).
    """
    if "nas_median" not in ds:
        raise NasprobeError("the NAS series has no 'nas_median' variable")
    if "run" in ds.dims:
        if ds.sizes["run"] != 1:
            raise NasprobeError(f"select one run (the series has {ds.sizes['run']})")
        ds = ds.isel(run=0)
    med = ds["nas_median"].transpose("epoch", "layer")
    layers = [str(v) for v in ds["layer"].values]
    deep = _layer_list(deep, layers, deep_layers(layers), "deep")
    shallow = _layer_list(shallow, layers, layers[:1], "shallow")
    epochs = np.asarray(ds["epoch"].values, dtype=np.float64)
    values = {
        "deep": med.sel(layer=deep).values.mean(axis=1),
        "shallow": med.sel(layer=shallow).values.mean(axis=1),
    }
    values["gap"] = values["deep"] - values["shallow"]
    if "nas_quantile" in ds:
        qs = np.asarray(ds["quantile"].values, dtype=np.float64)
        if not np.isclose(qs, q).any():
            raise NasprobeError(f"q={q} is not a stored quantile ({qs.tolist()})")
        upper = ds["nas_quantile"].isel(quantile=int(np.argmin(np.abs(qs - q))))
        values["upper"] = upper.transpose("epoch", "layer").sel(layer=deep).values.mean(axis=1)
    else:
        values["upper"] = np.full(epochs.shape, np.nan)
    keep = np.isfinite(values["deep"]) & np.isfinite(epochs)
    order = np.argsort(epochs[keep], kind="stable")
    raw = {k: np.asarray(v, dtype=np.float64)[keep][order] for k, v in values.items()}
    return Series(epochs[keep][order], raw, float(sigma), deep, shallow, float(q))


# --------------------------------------------------------------------------- conditions
# Each returns a boolean array (T,): does the condition hold at epoch index t, judged on the
# smoothed prefix up to t.

def _rise_rows(rows: np.ndarray, delta: float) -> np.ndarray:
    return np.array([rows[t, t] - rows[t, 0] >= delta for t in range(rows.shape[0])], bool)


def _saturated(s: Series, window: int, tol: float, min_rise: float) -> np.ndarray:
    rows = s.prefix("deep")
    out = np.zeros(rows.shape[0], bool)
    for t in range(window, rows.shape[0]):
        p = rows[t, :t + 1]
        out[t] = p[t] - p.min() >= min_rise and p[t] - p[t - window] < tol
    return out


def _rise_after(s: Series, signal: str, start: int | None, delta: float) -> np.ndarray:
    """Signal ``delta`` above its minimum since index ``start`` (False before it)."""
    rows = s.prefix(signal)
    out = np.zeros(rows.shape[0], bool)
    if start is None:
        return out
    for t in range(start, rows.shape[0]):
        p = rows[t, start:t + 1]
        out[t] = p[-1] - p.min() >= delta
    return out


def _first_saturation(s: Series, window: int, tol: float, min_rise: float) -> int | None:
    hits = np.flatnonzero(_saturated(s, window, tol, min_rise))
    return int(hits[0]) if hits.size else None


def _fire(s: Series, cond: np.ndarray, min_epochs: int, patience: int) -> int | None:
    if patience < 1:
        raise NasprobeError(f"patience must be >= 1, not {patience}")
    run = 0
    for t, ok in enumerate(cond):
        run = run + 1 if ok else 0
        if run >= patience and s.epochs[t] >= min_epochs:
            return int(round(s.epochs[t]))
    return None


def _as_series(data, signal_kw: dict) -> Series:
    if isinstance(data, Series):
        if signal_kw:
            raise NasprobeError(f"{sorted(signal_kw)} shape the signals: pass them to series()")
        return data
    return series(data, **signal_kw)


def _signal_kw(kw: dict) -> dict:
    return {k: kw.pop(k) for k in SIGNAL_PARAMS if k in kw}


def rise(data, *, delta: float = 0.1, min_epochs: int = 0, patience: int = 1, **signal_kw):
    """Naive rule: fire when the smoothed deep NAS is ``delta`` (NAS units) above its value at
    the first epoch. data: a Dataset (see :func:`series`; ``signal_kw`` go there) or a
    :class:`Series`. Returns the epoch it fires at, or None."""
    s = _as_series(data, signal_kw)
    return _fire(s, _rise_rows(s.prefix("deep"), delta), min_epochs, patience)


def plateau(data, *, window: int = 5, tol: float = 0.01, min_rise: float = 0.05,
            min_epochs: int = 0, patience: int = 1, **signal_kw):
    """Fire when the deep layers saturate: the smoothed deep NAS has risen ``min_rise`` above
    its minimum and less than ``tol`` over the last ``window`` epochs (NAS units).
    data, signal_kw: as :func:`rise`. Returns the epoch it fires at, or None."""
    s = _as_series(data, signal_kw)
    return _fire(s, _saturated(s, window, tol, min_rise), min_epochs, patience)


def _after_saturation(signal: str):
    def rule(data, *, delta: float = 0.02, window: int = 5, tol: float = 0.01,
             min_rise: float = 0.05, min_epochs: int = 0, patience: int = 1, **signal_kw):
        s = _as_series(data, signal_kw)
        start = _first_saturation(s, window, tol, min_rise)
        return _fire(s, _rise_after(s, signal, start, delta), min_epochs, patience)
    return rule


_creep = _after_saturation("deep")
_gap = _after_saturation("gap")
_quantile = _after_saturation("upper")


def creep(data, **params):
    """Fire when, after the deep layers first saturate (``window``, ``tol``, ``min_rise`` as
    :func:`plateau`), their smoothed NAS rises ``delta`` above its minimum since then.
    data, signal_kw: as :func:`rise`. Returns the epoch it fires at, or None."""
    return _creep(data, **params)


def gap(data, **params):
    """As :func:`creep`, with the gap ``deep - shallow`` rising ``delta`` after saturation."""
    return _gap(data, **params)


def quantile(data, **params):
    """As :func:`creep`, with the deep layers' NAS quantile ``q`` (default 0.95, the upper
    tail of the histogram; needs ``nas_quantile``) rising ``delta`` after saturation."""
    return _quantile(data, **params)


#: The rules by name.
RULES: dict[str, Callable] = {"rise": rise, "plateau": plateau, "creep": creep, "gap": gap,
                              "quantile": quantile}

#: Each rule's parameters with their defaults (signal parameters included).
_COMMON = {"min_epochs": 0, "patience": 1, "sigma": 1.0, "deep": None, "shallow": None}
_SAT = {"window": 5, "tol": 0.01, "min_rise": 0.05}
DEFAULTS: dict[str, dict] = {
    "rise": {"delta": 0.1, **_COMMON},
    "plateau": {**_SAT, **_COMMON},
    "creep": {"delta": 0.02, **_SAT, **_COMMON},
    "gap": {"delta": 0.02, **_SAT, **_COMMON},
    "quantile": {"delta": 0.02, "q": 0.95, **_SAT, **_COMMON},
}


#: The rule and parameters the callbacks use by default: the best rule of the study in
#: docs/label-free-stopping.md, with the parameters chosen on its tuning half.
RECOMMENDED: tuple[str, dict] = ("creep", {})


def check_params(rule: str, params: dict) -> None:
    """Raise :class:`NasprobeError` for an unknown rule or a parameter it does not take."""
    if rule not in RULES:
        raise NasprobeError(f"unknown rule {rule!r}; rules: {', '.join(RULES)}")
    unknown = set(params) - set(DEFAULTS[rule])
    if unknown:
        raise NasprobeError(f"rule {rule!r} takes no parameter {sorted(unknown)}; it takes "
                            f"{', '.join(DEFAULTS[rule])}")


def stop_epoch(data, rule: str, **params) -> int | None:
    """The epoch at which ``rule`` fires on one run's series (Dataset or :class:`Series`),
    or None when it never fires. ``params``: the rule's (see :data:`DEFAULTS`)."""
    check_params(rule, params)
    return RULES[rule](data, **params)


def stop_epochs(ds: xr.Dataset, rule: str, **params) -> xr.DataArray:
    """``rule``'s stop epoch for every run of a store's dataset (dims run, epoch, layer):
    a float DataArray over ``run`` (NaN = never fires)."""
    check_params(rule, params)
    if "run" not in ds.dims:
        ds = ds.expand_dims("run")
    out = []
    for r in ds["run"].values:
        e = stop_epoch(ds.sel(run=[r]), rule, **params)
        out.append(np.nan if e is None else float(e))
    return xr.DataArray(np.array(out), dims=("run",), coords={"run": ds["run"].values},
                        name="stop_epoch", attrs={"units": "epoch", "rule": rule})

