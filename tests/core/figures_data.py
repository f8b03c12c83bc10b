"""Synthetic stores in the layout of docs/store.md, for the analysis and figure tests.

``make_tree`` builds an ``xarray.DataTree`` (root dataset + ``heatmaps/<layer>`` groups) whose
NAS curves are flat, then rise linearly from a known epoch per layer (``nas_onset_true``
coordinate), and whose test loss is a noisy U with its minimum at ``loss_onset_true`` (root
attribute). Everything is deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

QUANTILES = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
NAS_BINS = (np.arange(100) + 0.5) * 0.01
CORR_BINS = -1.0 + (np.arange(200) + 0.5) * 0.01


def _layer_specs(n_layers: int):
    """(name, kind, channels, spatial shape) per layer: 2-D convs, a 1-D conv, dense last."""
    specs = []
    for i in range(n_layers):
        if i == n_layers - 1 and n_layers > 1:
            specs.append((f"fc{i}", "Gemm", 10, ()))
        elif i % 7 == 5:
            specs.append((f"conv1d{i}", "Conv", 8, (5,)))
        elif i % 7 == 6:
            specs.append((f"dense{i}", "MatMul", 16, ()))
        else:
            side = 4 + (i % 3)
            specs.append((f"conv{i}", "Conv", 4 + 4 * (i % 4), (side, side - 1)))
    return specs


def make_tree(n_runs: int = 1, n_layers: int = 2, loss: bool = True, n_epochs: int = 16,
              seed: int = 0, noise: float = 0.005, n_images: int = 2,
              missing_epoch: int | None = None) -> xr.DataTree:
    """A synthetic store.

    n_runs runs named ``run-s0..``; epochs -1..n_epochs-2; n_layers layers (see
    ``_layer_specs``); ``loss=False`` leaves out ``loss``/``accuracy``; ``missing_epoch``
    (an epoch value) sets every variable of that epoch to NaN (not probed).
    """
    rng = np.random.default_rng(seed)
    epochs = np.arange(-1, n_epochs - 1)
    specs = _layer_specs(n_layers)
    names = [s[0] for s in specs]
    runs = [f"run-s{i}" for i in range(n_runs)]
    nl, ne, nr = len(specs), len(epochs), n_runs
    loss_onset = int(epochs[ne // 2])
    nas_onset = np.array([max(int(epochs[min(1, ne - 1)]), loss_onset - 2 - (i % 3)) for i in range(nl)])
    base = 0.1 + 0.4 * np.arange(nl) / max(nl - 1, 1)
    ramp = np.clip((epochs[None, :] - nas_onset[:, None]) / 4.0, 0.0, 1.0)  # (layer, epoch)
    med = base[:, None] + (0.95 - base[:, None]) * 0.6 * ramp
    med = med[None] + rng.normal(0.0, noise, (nr, nl, ne))  # (run, layer, epoch)
    med = np.clip(med, 0.0, 0.99).transpose(0, 2, 1)  # (run, epoch, layer)
    q = np.clip(med[..., None] + (QUANTILES - 0.5) * 0.2, 0.0, 0.99)
    hist = np.exp(-0.5 * ((NAS_BINS - med[..., None]) / 0.05) ** 2)
    hist = np.round(hist / hist.sum(-1, keepdims=True) * 1000.0)
    width = 0.3 / (1.0 + np.maximum(epochs + 1, 0) / 4.0)  # correlations narrow over epochs
    centre = 0.1 * np.arange(nl)[:, None] / max(nl, 1)
    corr = np.exp(-0.5 * ((CORR_BINS[None, None, None, :] - centre[None, None, :, :])
                          / width[None, :, None, None]) ** 2)
    corr = np.broadcast_to(np.round(corr * 50.0), (nr, ne, nl, CORR_BINS.size)).copy()
    channels = np.array([s[2] for s in specs])
    mean = np.clip(med + 0.01, 0.0, 0.99)
    t = epochs - loss_onset
    lossv = 1.0 + 0.01 * t ** 2 + rng.normal(0.0, 0.01, (nr, ne))
    data = {
        "nas_median": (("run", "epoch", "layer"), med),
        "nas_mean": (("run", "epoch", "layer"), mean),
        "nas_min": (("run", "epoch", "layer"), np.zeros_like(med)),
        "nas_max": (("run", "epoch", "layer"), np.clip(med + 0.2, 0, 0.99)),
        "entropy_mean": (("run", "epoch", "layer"), np.log(channels * (1.0 - mean))),
        "nas_quantile": (("run", "epoch", "layer", "quantile"), q),
        "nas_hist": (("run", "epoch", "layer", "nas_bin"), hist),
        "corr_hist": (("run", "epoch", "layer", "corr_bin"), corr),
        "probed": (("run", "epoch"), np.ones((nr, ne), dtype=bool)),
    }
    # dead units: a share that grows over training, deeper layers more; the last (logits)
    # layer reaches no nonlinearity
    dead = np.clip(0.05 * np.arange(nl)[None, None, :] * ramp.T[None] + 0.02 * np.arange(nr)
                   [:, None, None], 0.0, 1.0)
    dead[:, :, -1] = np.nan if nl > 1 else dead[:, :, -1]
    data["dead_fraction"] = (("run", "epoch", "layer"), dead)
    if loss:
        data["loss"] = (("run", "epoch"), lossv)
        data["accuracy"] = (("run", "epoch"), 0.5 - 0.1 * np.abs(t) / ne + 0 * lossv)
    coords = {
        "run": runs, "epoch": epochs, "layer": names,
        "layer_kind": ("layer", [s[1] for s in specs]),
        "channels": ("layer", channels),
        "locations": ("layer", [int(np.prod(s[3])) if s[3] else 1 for s in specs]),
        "depth": ("layer", np.arange(nl)),
        "nonlinearity": ("layer", ["Relu"] * (nl - 1) + ["" if nl > 1 else "Relu"]),
        "nas_onset_true": ("layer", nas_onset),
        "quantile": QUANTILES, "nas_bin": NAS_BINS, "corr_bin": CORR_BINS,
    }
    root = xr.Dataset(data, coords=coords)
    root.attrs.update(nasprobe_version="0.1.0", tap="linear", probe_sha256="0" * 64,
                      probe_size=16, framework="onnx", sources="{}",
                      loss_onset_true=loss_onset)
    tree = {"/": root}
    for li, (name, _, _, shape) in enumerate(specs):
        dims = {1: ("t",), 2: ("y", "x")}.get(len(shape), ())
        grid = np.linspace(-0.15, 0.15, int(np.prod(shape)) or 1).reshape(shape)
        m = np.clip(mean[:, :, li].reshape(nr, ne, *([1] * len(shape))) + grid, 0.0, 0.99)
        img = np.clip(m[:, :, None] + rng.normal(0, 0.02, (nr, ne, n_images, *shape)), 0, 0.99)
        tree[f"heatmaps/{name}"] = xr.Dataset({
            "nas_map": (("run", "epoch", *dims), m),
            "nas_image_map": (("run", "epoch", "image", *dims), img),
        })
    dt = xr.DataTree.from_dict(tree)
    if missing_epoch is not None:
        dt = dt.map_over_datasets(lambda ds: _blank(ds, missing_epoch))
    return dt


def _blank(ds: xr.Dataset, epoch: int) -> xr.Dataset:
    out = ds.copy()
    for name, da in ds.data_vars.items():
        if name == "probed":
            out[name] = da & (da["epoch"] != epoch)
        elif "epoch" in da.dims:
            out[name] = da.where(da["epoch"] != epoch)
    return out


def make_dataset(**kw) -> xr.Dataset:
    """The root dataset of :func:`make_tree` (same arguments)."""
    return make_tree(**kw).to_dataset()
