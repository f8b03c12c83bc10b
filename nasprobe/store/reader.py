"""Reading a NAS store: the per-run groups combined into one ``xarray.DataTree``.

:func:`open_store` is what users call (the view is described in docs/store.md). It lists each
run's commit markers first and reads only the slots they name, so values that are being
written at the same moment are never seen half-written (docs/store-design.md). Stores of
nasprobe 0.1 (one shared dataset with a ``probed`` flag) are read as they are.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import xarray as xr
import zarr
import zarr.storage

from nasprobe.errors import StoreError

from .layout import SCALARS, group_name, spatial_dims
from .limits import MAX_SLOT_ELEMENTS, check_array, damaged, json_object, safe_int
from .runs import (
    HISTS,
    LEGACY,
    known_layout,
    layer_table,
    read_runs,
    view_attrs,
)
from .storage import Location, location, quiet_zarr_warnings

__all__ = ["open_store", "DEAD_ATTRS", "ACTIVITY_ATTRS"]

#: Attributes of the view's ``dead_fraction`` and ``unit_activity`` (docs/measures.md).
DEAD_ATTRS = {"long_name": "share of channels never above zero at the nonlinearity's input",
              "note": "dead units for ReLU-like nonlinearities (coordinate nonlinearity); for "
                      "GELU, SiLU, sigmoid or tanh, channels never in the positive half; NaN "
                      "for layers that reach no nonlinearity"}
ACTIVITY_ATTRS = {"long_name": "share of (probe image, location) pairs where the channel's "
                               "nonlinearity input is above zero"}


def open_store(path: str | os.PathLike) -> xr.DataTree:
    """Open a store (local path or fsspec URL) as an ``xarray.DataTree``.

    The root holds ``nas_*`` (run, epoch, layer[, quantile|nas_bin]), ``corr_hist``, ``loss``,
    ``accuracy``, imported metrics and ``probed`` (run, epoch); ``heatmaps/<layer>`` holds
    ``nas_map`` and ``nas_image_map``. Epochs are sorted and only committed (run, epoch) cells
    hold values; layers are the union of the runs' layers (NaN where a run lacks one).

    Raises:
        StoreError: nothing that nasprobe wrote is at ``path``.
    """
    loc = location(path)
    return _open_legacy(loc) if known_layout(loc) == LEGACY else _combine(loc)


# -- the current layout -------------------------------------------------------------------------
def _root(loc: Location) -> tuple[dict, dict[str, np.ndarray]]:
    """The root's attributes and its constant coordinates (``quantile``, ``nas_bin``,
    ``corr_bin``), their metadata checked first (:mod:`nasprobe.store.limits`)."""
    names = ("quantile", "nas_bin", "corr_bin")
    for n in names:
        check_array(loc.url, n, json_object(loc.read(n, "zarr.json")), coordinate=True)
    with damaged(loc.url, "the root group"), warnings.catch_warnings():
        quiet_zarr_warnings()
        root = zarr.open_group(loc.zarr_store(read_only=True), mode="r", zarr_format=3,
                               use_consolidated=False)
        return dict(root.attrs), {n: np.asarray(root[n][:], np.float64) for n in names}


def _combine(loc: Location) -> xr.DataTree:
    attrs, fixed = _root(loc)
    with warnings.catch_warnings():
        quiet_zarr_warnings()
        runs = read_runs(loc)
    epochs = sorted({int(e) for r in runs for j in r.jobs.values() for e in j.epoch})
    info = layer_table(runs)
    layers = list(info)
    R, E, L = len(runs), len(epochs), len(layers)
    e_at = {e: i for i, e in enumerate(epochs)}
    l_at = {n: i for i, n in enumerate(layers)}
    data = {n: np.full((R, E, L), np.nan) for n in SCALARS}
    for n, c in HISTS:
        data[n] = np.full((R, E, L, len(fixed[c])), np.nan)
    for n in ("loss", "accuracy"):
        data[n] = np.full((R, E), np.nan)
    probed = np.zeros((R, E), np.int8)
    dead = None  # dead_fraction: only where some job wrote it (absent from older stores)
    if any("dead_fraction" in j.variables for r in runs for j in r.jobs.values()):
        dead = np.full((R, E, L), np.nan)
    heat: dict[str, dict] = {}
    for ri, r in enumerate(runs):
        for j in r.jobs.values():
            ei = [e_at[int(e)] for e in j.epoch]
            li = [l_at[n] for n in j.layer]
            var = j.variables
            probed[ri, ei] = 1
            for n, c in HISTS:
                if var[n].shape[2] != len(fixed[c]):
                    raise StoreError(loc.url, f"run {r.name!r}: {n} has {var[n].shape[2]} "
                                     f"bins, the store's {c} {len(fixed[c])}; the store was "
                                     "edited or damaged")
            for n in list(SCALARS) + [n for n, _ in HISTS]:
                data[n][np.ix_([ri], ei, li)] = var[n][None]
            for n in ("loss", "accuracy"):
                data[n][ri, ei] = var[n]
            if dead is not None and "dead_fraction" in var:
                dead[np.ix_([ri], ei, li)] = var["dead_fraction"][None]
            k = safe_int(j.attrs.get("keep_images", 0))
            for name in j.layer:
                h = heat.setdefault(name, {"parts": [], "k": 0, "act": []})
                maps = j.maps[name]
                h["parts"].append((ri, ei, maps.nas_map, maps.nas_image_map))
                # never more images than stored
                h["k"] = max(h["k"], min(k, maps.nas_image_map.shape[1]))
                if maps.unit_activity is not None:
                    h["act"].append((ri, ei, maps.unit_activity))
    dims3 = ("run", "epoch", "layer")
    ds = xr.Dataset(
        {n: (dims3, data[n]) for n in SCALARS},
        coords={"run": ("run", np.array([r.name for r in runs], dtype=str)),
                "epoch": ("epoch", np.asarray(epochs, np.int64)),
                "layer": ("layer", np.array(layers, dtype=str)),
                "layer_kind": ("layer", np.array([info[n]["layer_kind"] for n in layers], dtype=str)),
                **{c: ("layer", np.array([info[n][c] for n in layers], np.int64))
                   for c in ("channels", "locations", "depth")},
                **{c: (c, v) for c, v in fixed.items()}})
    for n, c in HISTS:
        ds[n] = (dims3 + (c,), data[n])
    for n in ("loss", "accuracy"):
        ds[n] = (("run", "epoch"), data[n])
    if any("nonlinearity" in info[n] for n in layers):
        ds = ds.assign_coords(nonlinearity=("layer", np.array(
            [info[n].get("nonlinearity", "") for n in layers], dtype=str)))
    if dead is not None:
        ds["dead_fraction"] = (dims3, dead, DEAD_ATTRS)
    # Imported metrics (training logs): new variables, or over the probe's loss/accuracy.
    for m in sorted({m for r in runs for m in r.extra}):
        col = ds[m].values.copy() if m in ds else np.full((R, E), np.nan)
        for ri, r in enumerate(runs):
            for e, v in r.extra.get(m, {}).items():
                if e in e_at and probed[ri, e_at[e]]:
                    col[ri, e_at[e]] = v
        ds[m] = (("run", "epoch"), col)
    ds["probed"] = (("run", "epoch"), probed)
    ds.attrs = view_attrs(attrs, runs)
    tree = {"/": ds, "/heatmaps": xr.Dataset()}
    for name, h in heat.items():
        tree[f"/heatmaps/{group_name(name)}"] = _heatmap(name, h, R, E, loc.url)
    return xr.DataTree.from_dict(tree)


def _heatmap(name: str, h: dict, R: int, E: int, url: str) -> xr.Dataset:  # noqa: N803 (R runs, E epochs)
    """One layer's maps on the full (run, epoch) grid; NaN-padded where runs' shapes differ.

    Raises:
        StoreError: the padded maps of one (run, epoch) would exceed
            :data:`~nasprobe.store.limits.MAX_SLOT_ELEMENTS` (maps of one layer name whose
            shapes differ wildly, as an edited store can declare).
    """
    nd = h["parts"][0][2].ndim - 1
    parts = [p for p in h["parts"] if p[2].ndim - 1 == nd]
    sp = tuple(max(max(p[2].shape[1 + d], p[3].shape[2 + d]) for p in parts) for d in range(nd))
    if math.prod(sp) * max(h["k"], 1) > MAX_SLOT_ELEMENTS:
        raise StoreError(url, f"the maps of layer {name!r} have shapes "
                         f"{sorted({p[2].shape[1:] for p in parts})} whose padded union "
                         f"{sp} × {h['k']} images is over {MAX_SLOT_ELEMENTS} values per epoch")
    maps = np.full((R, E, *sp), np.nan, np.float32)
    imgs = np.full((R, E, h["k"], *sp), np.nan, np.float32)
    for ri, ei, m, im in parts:
        for row, e in enumerate(ei):
            maps[(ri, e, *(slice(0, s) for s in m.shape[1:]))] = m[row]
            k = min(im.shape[1], h["k"])  # images kept: at most as many as stored
            imgs[(ri, e, slice(0, k), *(slice(0, s) for s in im.shape[2:]))] = im[row, :k]
    sd = spatial_dims(nd)
    ds = xr.Dataset({"nas_map": (("run", "epoch", *sd), maps),
                     "nas_image_map": (("run", "epoch", "image", *sd), imgs)},
                    attrs={"layer": name})
    if h["act"]:  # unit_activity: only where some job wrote it (absent from older stores)
        d = max(a.shape[1] for _, _, a in h["act"])
        act = np.full((R, E, d), np.nan)
        for ri, ei, a in h["act"]:
            act[ri, ei, : a.shape[1]] = a
        ds["unit_activity"] = (("run", "epoch", "channel"), act, ACTIVITY_ATTRS)
    return ds


# -- nasprobe 0.1 stores ---------------------------------------------------------------------
def _tidy(ds: xr.Dataset, keep: np.ndarray, order: np.ndarray, probed: xr.DataArray) -> xr.Dataset:
    ds = ds.isel(epoch=keep).isel(epoch=order) if "epoch" in ds.dims else ds
    for name in list(ds.variables):
        var = ds.variables[name]
        if var.dtype.kind == "T":  # numpy StringDType → plain str for every tool downstream
            values = np.array(var.values.tolist(), dtype=str).reshape(var.shape)
            if name in ds.coords:
                ds = ds.assign_coords({name: (var.dims, values, var.attrs)})
            else:
                ds[name] = (var.dims, values, var.attrs)
    for name, var in ds.data_vars.items():
        if {"run", "epoch"} <= set(var.dims) and name != "probed":
            ds[name] = var.where(probed)
    return ds


def _open_legacy(loc: Location) -> xr.DataTree:
    """A store of nasprobe 0.1: one dataset over (run, epoch), a ``probed`` commit flag."""
    with warnings.catch_warnings():
        quiet_zarr_warnings()
        raw = xr.open_datatree(loc.zarr_store(read_only=True), engine="zarr")
    root = raw.to_dataset(inherit=False).load()
    probed = root["probed"].astype(bool)
    keep = np.flatnonzero(probed.any("run").values)
    order = np.argsort(root["epoch"].values[keep], kind="stable")
    probed_k = probed.isel(epoch=keep).isel(epoch=order)
    tree = {"/": _tidy(root, keep, order, probed_k)}
    for node in raw.subtree:
        if node is raw:
            continue
        ds = node.to_dataset(inherit=False)
        tree[node.path] = _tidy(ds, keep, order, probed_k.drop_vars(list(probed_k.coords)))
    return xr.DataTree.from_dict(tree)
