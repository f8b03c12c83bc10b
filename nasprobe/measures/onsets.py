"""Moments of overfitting: the loss onset and the NAS onset of each layer.

Both onsets are read from curves smoothed with a Gaussian kernel of ``sigma`` epochs
(``scipy.ndimage.gaussian_filter1d``, ``mode="nearest"``), as in the 2020 paper (Fig. 3).
Epochs are expected on a regular grid (step 1 in practice); ``sigma`` is converted to samples
with the median epoch step. NaN entries (epochs not probed) are dropped before smoothing.

**Loss onset** — the epoch of the minimum of the smoothed loss, *provided* the smoothed loss
rises meaningfully afterwards: ``max(s[i_min:]) - s[i_min]`` must exceed both
``rel_tol`` (default 1 %) of the smoothed curve's range and ``noise_k`` standard
deviations of the noise left in the smoothed curve (the residual ``raw - smoothed`` estimated
robustly with the median absolute deviation, scaled by the Gaussian kernel's noise gain
``1 / sqrt(2 sqrt(pi) sigma)``). The residuals are taken where the rise is judged — from
``2 sigma`` before the minimum to the end, widened leftwards to at least half the curve and
16 points — because those of a fast early descent are smoothing bias, not noise: counted in,
they hid a clear but slow rise on 30-epoch runs. By default ``noise_k = 3.5 sqrt(2 ln n_eff)`` with
``n_eff = n / (2 sigma)`` independent stretches in ``n`` epochs: the largest swing smoothed
noise alone makes on a curve of that length (about 7 for 30 epochs, 9 for 300), so a noisy
plateau is not taken for a rise. A loss that never rises that much has no onset: ``None``.
The minimum of a smoothed curve is the paper's definition; for an asymmetric valley it sits
slightly on the shallower side (for ``a exp(-e/tau) + b e`` about ``sigma**2 / (2 tau)``
epochs later than the raw minimum).

**NAS onset** — the epoch where the smoothed NAS starts its sustained rise. Let ``i_hi`` be the
smoothed maximum and ``i_lo`` the minimum before it; the rise ``s[i_hi] - s[i_lo]`` must exceed
``min_rise`` (default 0.05 NAS units) and ``noise_k`` noise deviations (as above), and it
must be *sustained*: the last value keeps at least half of it (``s[-1] - s[i_lo] >= rise/2``).
Within ``[i_lo, i_hi]`` the onset is where the rise begins: walking back from the steepest
smoothed slope, the first epoch whose slope is still at least half the steepest one
(half-maximum slope; for a flat-then-linear curve this is exactly the kink).

**Lead time** = loss onset − NAS onset, in epochs (positive: NAS rose before the loss).
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def gaussian_filter1d(y: np.ndarray, sigma: float, mode: str = "nearest") -> np.ndarray:
    """:func:`scipy.ndimage.gaussian_filter1d`, imported on first use: scipy is not loaded
    by the command line until onsets are computed."""
    from scipy.ndimage import gaussian_filter1d as smooth_1d

    return smooth_1d(y, sigma, mode=mode)


__all__ = ["smooth", "loss_onset", "nas_onset", "onsets"]

_KERNEL_NOISE_GAIN = 1.0 / np.sqrt(2.0 * np.sqrt(np.pi))
#: fewest residuals the loss-onset noise estimate uses (it widens leftwards to reach them)
_MIN_NOISE_POINTS = 16


def _finite(values, epochs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(values, dtype=np.float64).ravel()
    e = np.asarray(epochs, dtype=np.float64).ravel()
    if y.shape != e.shape:
        raise ValueError(f"curve has {y.size} values but {e.size} epochs")
    keep = np.isfinite(y) & np.isfinite(e)
    order = np.argsort(e[keep], kind="stable")
    return y[keep][order], e[keep][order]


def _sigma_samples(e: np.ndarray, sigma: float) -> float:
    step = float(np.median(np.diff(e))) if e.size > 1 else 1.0
    return sigma / step if step > 0 else sigma


def smooth(values, epochs, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-smooth a curve over epochs.

    values, epochs: 1-D arrays of the same length (any units; epochs in epochs).
    sigma: kernel standard deviation in epochs. Returns ``(smoothed, epochs)`` for the
    finite entries only, sorted by epoch (both 1-D, length = number of finite values).
    """
    y, e = _finite(values, epochs)
    if y.size == 0:
        return y, e
    return gaussian_filter1d(y, _sigma_samples(e, sigma), mode="nearest"), e


def _smoothed_noise(y: np.ndarray, s: np.ndarray, sigma_samples: float) -> float:
    """Standard deviation of the noise left in the smoothed curve (same units as y)."""
    resid = y - s
    mad = float(np.median(np.abs(resid - np.median(resid))))
    return 1.4826 * mad * _KERNEL_NOISE_GAIN / np.sqrt(max(sigma_samples, 1e-9))


def _noise_k(n: int, sigma_samples: float, noise_k: float | None) -> float:
    if noise_k is not None:
        return float(noise_k)
    n_eff = max(n / (2.0 * max(sigma_samples, 1e-9)), 2.0)
    return 3.5 * float(np.sqrt(2.0 * np.log(n_eff)))


def _smoothed_curve(values, epochs, sigma: float, noise_k: float | None):
    """``(epochs, smoothed values, noise bound)`` of the finite points, or None below 3 points.

    The noise bound is the largest swing noise alone would cause on a curve of this length
    (``noise_k`` deviations of the smoothed residual noise)."""
    y, e = _finite(values, epochs)
    if y.size < 3:
        return None
    sig = _sigma_samples(e, sigma)
    s = gaussian_filter1d(y, sig, mode="nearest")
    return e, s, _noise_k(y.size, sig, noise_k) * _smoothed_noise(y, s, sig)


def loss_onset(loss, epochs, sigma: float = 2.0, rel_tol: float = 0.01,
               noise_k: float | None = None) -> int | None:
    """Epoch after which the smoothed loss rises (the moment of overfitting), or None.

    loss: 1-D array of loss values (NaN = unknown); epochs: 1-D array of the same length.
    sigma: smoothing in epochs. Criterion: see the module docstring (minimum of the smoothed
    curve, accepted only when the rise after it exceeds ``rel_tol`` of the curve's range and
    ``noise_k`` noise deviations). Returns the epoch (int) or None when the loss never rises.
    """
    y, e = _finite(loss, epochs)
    if y.size < 3:
        return None
    sig = _sigma_samples(e, sigma)
    s = gaussian_filter1d(y, sig, mode="nearest")
    i_min = int(np.argmin(s))
    # The noise that matters is the noise where the rise is judged: from a little before the
    # minimum to the end. Residuals of the fast early descent are smoothing bias, not noise.
    start = max(0, min(i_min - int(np.ceil(2 * sig)), y.size - max(_MIN_NOISE_POINTS, y.size // 2)))
    noise = _noise_k(y.size, sig, noise_k) * _smoothed_noise(y[start:], s[start:], sig)
    rise = float(np.max(s[i_min:]) - s[i_min])
    span = float(np.max(s) - np.min(s))
    threshold = max(rel_tol * span, noise)
    if span <= 0 or rise <= threshold:
        return None
    return int(round(e[i_min]))


def nas_onset(nas, epochs, sigma: float = 2.0, min_rise: float = 0.05,
              noise_k: float | None = None) -> int | None:
    """Epoch where a layer's smoothed NAS starts its sustained rise, or None.

    nas: 1-D array of NAS values in [0, 1] (e.g. the layer's median NAS per epoch, NaN =
    unknown); epochs: 1-D array of the same length; sigma: smoothing in epochs.
    Criterion (module docstring): a rise of more than ``min_rise`` NAS and ``noise_k`` noise
    deviations from the minimum to the later maximum, of which the last value keeps at
    least half; the onset is the half-maximum-slope point before the steepest rise.
    """
    curve = _smoothed_curve(nas, epochs, sigma, noise_k)
    if curve is None:
        return None
    e, s, noise = curve
    i_hi = int(np.argmax(s))
    i_lo = int(np.argmin(s[: i_hi + 1]))
    rise = float(s[i_hi] - s[i_lo])
    threshold = max(min_rise, noise)
    if i_hi <= i_lo or rise <= threshold or s[-1] - s[i_lo] < 0.5 * rise:
        return None
    slope = np.gradient(s, e)
    j = i_lo + int(np.argmax(slope[i_lo: i_hi + 1]))
    half = 0.5 * slope[j]
    while j > i_lo and slope[j - 1] >= half:
        j -= 1
    return int(round(e[j]))


def _onset_or_nan(value: int | None) -> float:
    return np.nan if value is None else float(value)


def onsets(ds: xr.Dataset, sigma: float = 2.0, nas_var: str = "nas_median") -> xr.Dataset:
    """Loss onset per run, NAS onset and lead time per (run, layer).

    ds: a store's root dataset (dims run, epoch, layer; ``loss`` optional).
    Returns a Dataset with ``loss_onset`` (run), ``nas_onset`` (run, layer) and
    ``lead_time`` (run, layer) = loss_onset − nas_onset, all in epochs (float; NaN = no
    onset). Layer coordinates (depth, ...) are kept.
    """
    epochs = ds["epoch"].values
    runs = ds["run"].values
    layers = ds["layer"].values
    loss = ds["loss"] if "loss" in ds else None
    lo = np.array([_onset_or_nan(None if loss is None else
                                 loss_onset(loss.sel(run=r).values, epochs, sigma))
                   for r in runs], dtype=float)
    nas = ds[nas_var].transpose("run", "epoch", "layer").values
    no = np.array([[_onset_or_nan(nas_onset(nas[i, :, j], epochs, sigma))
                    for j in range(len(layers))] for i in range(len(runs))],
                  dtype=float).reshape(len(runs), len(layers))  # also a store with no run yet
    layer_coords = {k: v for k, v in ds.coords.items() if v.dims == ("layer",)}
    out = xr.Dataset(
        {"loss_onset": (("run",), lo, {"units": "epoch"}),
         "nas_onset": (("run", "layer"), no, {"units": "epoch"}),
         "lead_time": (("run", "layer"), lo[:, None] - no,
                       {"units": "epoch", "long_name": "loss onset - NAS onset"})},
        coords={"run": runs, **layer_coords},
    )
    out.attrs.update(sigma=float(sigma), nas_variable=nas_var,
                     criterion="see nasprobe.measures.onsets module docstring")
    return out
