"""Label-free stopping rules: when to stop training, from the NAS of unlabelled probe images.

Every rule reads one run's NAS series (an ``xarray.Dataset`` with ``nas_median`` over
``(epoch, layer)`` and, for ``quantile``, ``nas_quantile`` over ``(epoch, layer, quantile)``:
a store's root dataset with one run selected, or what a ``NASEarlyStopping`` callback collected)
and returns the epoch at which it fires — training stops after that epoch — or ``None``.
No labels are used. docs/label-free-stopping.md describes the rules and measures them against
validation-loss early stopping.

**Causal by construction.** Whether a rule fires at epoch ``t`` depends only on epochs
``<= t``: at every epoch the series *up to that epoch* is smoothed on its own with
:func:`nasprobe.measures.onsets.smooth` (Gaussian, ``sigma`` epochs, ``mode="nearest"``), so a later
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

* ``rise`` — naive: the smoothed deep signal is ``delta`` above its first value;
* ``plateau`` — the deep layers are saturated;
* ``creep`` — after the first saturated epoch ``t_s``, the smoothed deep signal is ``delta``
  above its minimum since ``t_s``;
* ``gap`` — as ``creep``, with the shallow-to-deep gap;
* ``quantile`` — as ``creep``, with the upper quantile of the deep layers.

Each rule's defaults (:data:`DEFAULTS`) are the parameters the study chose on its tuning half.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import xarray as xr

from nasprobe.errors import NasprobeError

from .onsets import smooth

__all__ = ["RULES", "DEFAULTS", "Series", "series", "stop_epoch", "stop_epochs", "rise",
           "plateau", "creep", "gap", "quantile", "deep_layers", "check_params", "RECOMMENDED",
           "SIGNAL_PARAMS", "prepare"]

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


#: Each rule's parameters and their defaults: the values chosen on the tuning half of the
#: study in docs/label-free-stopping.md (signal parameters included; ``deep``/``shallow``
#: None = :func:`deep_layers` / the first layer).
DEFAULTS: dict[str, dict] = {
    "rise": {"delta": 0.3, "min_epochs": 5, "patience": 3, "sigma": 2.0},
    "plateau": {"window": 8, "tol": 0.005, "min_rise": 0.05, "min_epochs": 0, "patience": 3,
                "sigma": 2.0},
    "creep": {"delta": 0.04, "window": 5, "tol": 0.01, "min_rise": 0.05, "min_epochs": 0,
              "patience": 1, "sigma": 1.0},
    "gap": {"delta": 0.02, "window": 8, "tol": 0.02, "min_rise": 0.05, "min_epochs": 0,
            "patience": 3, "sigma": 2.0},
    "quantile": {"delta": 0.01, "q": 0.95, "window": 5, "tol": 0.02, "min_rise": 0.05,
                 "min_epochs": 0, "patience": 1, "sigma": 2.0},
}
for _d in DEFAULTS.values():
    _d.update(deep=None, shallow=None)

#: The rule the callbacks use by default (with its :data:`DEFAULTS`): in the study
#: (docs/label-free-stopping.md) the four rules that wait for saturation end within 0.002
#: nats of each other on the tuning half, and ``plateau`` is the one that fires in most runs
#: (the others mostly never fire); it was also the best rule on the report half. No rule
#: beat validation-loss early stopping there.
RECOMMENDED = "plateau"


def check_params(rule: str, params: dict) -> None:
    """Raise :class:`NasprobeError` for an unknown rule or a parameter it does not take."""
    if rule not in DEFAULTS:
        raise NasprobeError(f"unknown rule {rule!r}; rules: {', '.join(DEFAULTS)}")
    unknown = set(params) - set(DEFAULTS[rule])
    if unknown:
        raise NasprobeError(f"rule {rule!r} takes no parameter {sorted(unknown)}; it takes "
                            f"{', '.join(DEFAULTS[rule])}")


def prepare(rule: str, data, params: dict) -> tuple[Series, dict]:
    """The Series (built from a Dataset, or given) and the rule's full threshold parameters."""
    check_params(rule, params)
    if isinstance(data, Series):
        given = sorted(k for k in params if k in SIGNAL_PARAMS)
        if given:
            raise NasprobeError(f"{given} shape the signals: pass them to series()")
        s = data
    else:
        sig = {k: v for k, v in {**DEFAULTS[rule], **params}.items() if k in SIGNAL_PARAMS}
        s = series(data, **sig)
    full = {**DEFAULTS[rule], **params}
    return s, {k: v for k, v in full.items() if k not in SIGNAL_PARAMS}


def rise(data, **params) -> int | None:
    """Naive rule: fire when the smoothed deep NAS is ``delta`` (NAS units) above its value at
    the first epoch.

    data: a Dataset (see :func:`series`) or a :class:`Series`; params: ``delta``,
    ``min_epochs``, ``patience`` and, with a Dataset, the signal parameters (defaults:
    :data:`DEFAULTS`). Returns the epoch it fires at, or None."""
    s, p = prepare("rise", data, params)
    return _fire(s, _rise_rows(s.prefix("deep"), p["delta"]), p["min_epochs"], p["patience"])


def plateau(data, **params) -> int | None:
    """Fire when the deep layers saturate: the smoothed deep NAS has risen ``min_rise`` above
    its minimum and less than ``tol`` over the last ``window`` epochs (NAS units).
    data, params: as :func:`rise`. Returns the epoch it fires at, or None."""
    s, p = prepare("plateau", data, params)
    cond = _saturated(s, p["window"], p["tol"], p["min_rise"])
    return _fire(s, cond, p["min_epochs"], p["patience"])


def _after_saturation(rule: str, signal: str, data, params: dict) -> int | None:
    s, p = prepare(rule, data, params)
    start = _first_saturation(s, p["window"], p["tol"], p["min_rise"])
    return _fire(s, _rise_after(s, signal, start, p["delta"]), p["min_epochs"], p["patience"])


def creep(data, **params) -> int | None:
    """Fire when, after the deep layers first saturate (``window``, ``tol``, ``min_rise`` as
    :func:`plateau`), their smoothed NAS rises ``delta`` above its minimum since then.
    data, params: as :func:`rise`. Returns the epoch it fires at, or None."""
    return _after_saturation("creep", "deep", data, params)


def gap(data, **params) -> int | None:
    """As :func:`creep`, with the gap ``deep - shallow`` rising ``delta`` after saturation."""
    return _after_saturation("gap", "gap", data, params)


def quantile(data, **params) -> int | None:
    """As :func:`creep`, with the deep layers' NAS quantile ``q`` (default 0.95, the upper
    tail of the histogram; needs ``nas_quantile``) rising ``delta`` after saturation."""
    return _after_saturation("quantile", "upper", data, params)


#: The rules by name.
RULES: dict[str, Callable] = {"rise": rise, "plateau": plateau, "creep": creep, "gap": gap,
                              "quantile": quantile}


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

