"""Reading a NAS store: the per-run groups combined into one ``xarray.DataTree``.

:func:`open_store` is what users call (the view is described in docs/store.md). It lists each
run's commit markers first and reads only the slots they name, so values that are being
written at the same moment are never seen half-written (docs/store-design.md). Stores of
nasprobe 0.1 (one shared dataset with a ``probed`` flag) are read as they are.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr
import zarr
import zarr.storage
from zarr.core.buffer import cpu

from .errors import StoreError
from .storage import Location, location
from .store_layout import (
    CLAIMS,
    COMMITS,
    LAYOUT,
    RUNS,
    SCALARS,
    group_name,
    read_marker,
    run_name,
    spatial_dims,
)

__all__ = ["open_store", "store_layout", "committed_epochs", "LEGACY"]

#: What :func:`store_layout` answers for a store of nasprobe 0.1.
LEGACY = "0.1"
_COORDS = ("epoch", "layer", "layer_kind", "channels", "locations", "depth")
_HISTS = (("nas_quantile", "quantile"), ("nas_hist", "nas_bin"), ("corr_hist", "corr_bin"))


def store_layout(loc: Location) -> str | None:
    """``"runs/1"`` (one group per run and job), :data:`LEGACY`, or None (no store there)."""
    meta = loc.read("zarr.json")
    if meta is None:
        return None
    try:
        attrs = json.loads(meta).get("attributes", {})
    except ValueError as exc:
        raise StoreError(loc.url, f"has an unreadable zarr.json ({exc})") from exc
    if attrs.get("nasprobe_layout"):
        return attrs["nasprobe_layout"]
    return LEGACY if loc.exists("probed", "zarr.json") else None


def committed_epochs(loc: Location, key: str) -> dict[int, dict]:
    """The run ``key``'s commit markers: epoch → ``{"job", "index", "epoch"}``."""
    names = [n for n in loc.listdir(RUNS, key, COMMITS) if n.lstrip("-").isdigit()]
    got = loc.read_many([f"{RUNS}/{key}/{COMMITS}/{n}/zarr.json" for n in names])
    out = {}
    for n in names:
        m = read_marker(got[f"{RUNS}/{key}/{COMMITS}/{n}/zarr.json"])
        if m is not None:
            out[int(n)] = m
    return out


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
    layout = store_layout(loc)
    if layout is None:
        raise StoreError(loc.url, "is not a nasprobe store (no zarr.json)")
    if layout == LEGACY:
        return _open_legacy(loc)
    if layout != LAYOUT:
        raise StoreError(loc.url, f"has store layout {layout!r}, which this nasprobe does not "
                         "know; upgrade nasprobe")
    return _combine(loc)


# -- the current layout -------------------------------------------------------------------------
def _array_names(layers: list[str]) -> list[str]:
    """Paths of a job group's arrays (see :func:`nasprobe.store.Store.open_run`)."""
    names = ["epoch", "layer", "layer_kind", "channels", "locations", "depth", "loss", "accuracy",
             *SCALARS, *(n for n, _ in _HISTS)]
    for layer in layers:
        names += [f"heatmaps/{group_name(layer)}/nas_map", f"heatmaps/{group_name(layer)}/nas_image_map"]
    return names


def _chunk_keys(name: str, meta: dict, slots: list[int]) -> list[str]:
    """Keys of the chunks of array ``name`` that hold ``slots`` along its first axis (every
    chunk for the 1-D coordinates)."""
    shape = meta["shape"]
    chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    enc = meta.get("chunk_key_encoding", {})
    sep = enc.get("configuration", {}).get("separator", "/")
    prefix = "c" + sep if enc.get("name", "default") == "default" else ""
    grid = [range(-(-s // c)) if s else range(0) for s, c in zip(shape, chunks)]
    if name not in _COORDS:  # per-epoch variables: only the chunks of these slots
        grid[0] = sorted({i // chunks[0] for i in slots})
    return [f"{name}/{prefix}{sep.join(map(str, idx))}" if idx else f"{name}/{prefix}0"
            for idx in itertools.product(*grid)]


def _read_job(loc: Location, key: str, job: str, slots: list[int], attrs: dict) -> dict:
    """The arrays of one job group at ``slots``: its metadata in one batch of reads, then the
    chunks of those slots in another (concurrent requests on object stores), decoded by zarr
    from memory."""
    base = f"{RUNS}/{key}/{job}"
    layers = json.loads(attrs.get("layers", "[]"))
    names = _array_names(layers)
    groups = ["", "heatmaps"] + [f"heatmaps/{group_name(x)}" for x in layers]
    meta_keys = [f"{g}/zarr.json".lstrip("/") for g in groups] + [f"{n}/zarr.json" for n in names]
    got = loc.read_many([f"{base}/{k}" for k in meta_keys])
    docs = {k: got[f"{base}/{k}"] for k in meta_keys}
    missing = [k for k, v in docs.items() if v is None]
    if missing:
        raise StoreError(loc.url, f"job group {base} lacks {missing[0]}")
    chunk_keys = [c for n in names for c in _chunk_keys(n, json.loads(docs[f"{n}/zarr.json"]), slots)]
    got = loc.read_many([f"{base}/{k}" for k in chunk_keys])
    mem = {k: cpu.Buffer.from_bytes(v) for k, v in docs.items()}
    mem.update({k: cpu.Buffer.from_bytes(got[f"{base}/{k}"]) for k in chunk_keys
                if got[f"{base}/{k}"] is not None})
    grp = zarr.open_group(zarr.storage.MemoryStore(mem), mode="r", zarr_format=3,
                          use_consolidated=False)
    sl = np.asarray(slots, dtype=np.int64)
    out = {"attrs": attrs, "epoch": grp["epoch"][:][sl]}
    for name in ("layer", "layer_kind"):
        out[name] = [str(v) for v in grp[name][:]]
    for name in ("channels", "locations", "depth"):
        out[name] = grp[name][:]
    for name in list(SCALARS) + [n for n, _ in _HISTS] + ["loss", "accuracy"]:
        out[name] = grp[name].get_orthogonal_selection((sl,))
    for layer in layers:
        sub = grp[f"heatmaps/{group_name(layer)}"]
        out[(layer, "nas_map")] = sub["nas_map"].get_orthogonal_selection((sl,))
        out[(layer, "nas_image_map")] = sub["nas_image_map"].get_orthogonal_selection((sl,))
    return out


def _job_attrs(loc: Location, key: str, jobs: list[str]) -> dict[str, dict]:
    """The attributes of the run's job groups (one batch of reads); ``{}`` for a group being
    created right now."""
    got = loc.read_many([f"{RUNS}/{key}/{job}/zarr.json" for job in jobs])
    out = {}
    for job in jobs:
        try:
            out[job] = json.loads(got[f"{RUNS}/{key}/{job}/zarr.json"] or b"{}").get("attributes", {})
        except ValueError:
            out[job] = {}
    return out


def _read_metrics(loc: Location, key: str, group: str) -> dict[str, dict[int, float]]:
    grp = zarr.open_group(loc.child(RUNS, key, group).zarr_store(read_only=True), mode="r",
                          zarr_format=3, use_consolidated=False)
    epochs = grp["epoch"][:]
    return {name: dict(zip(epochs.tolist(), arr[:].tolist()))
            for name, arr in grp.arrays() if name != "epoch"}


def _merge_layers(lists: list[list[str]]) -> list[str]:
    """Union of layer lists keeping each list's order: a new layer goes right after the
    layer that precedes it in its own list."""
    out: list[str] = []
    for names in lists:
        prev = None
        for name in names:
            if name not in out:
                out.insert(0 if prev is None else out.index(prev) + 1, name)
            prev = name
    return out


def _run(loc: Location, key: str) -> dict | None:
    """One run's committed epochs, read whole (None when it has none yet)."""
    entries = [n for n in loc.listdir(RUNS, key)
               if n not in (COMMITS, CLAIMS, "zarr.json") and not n.startswith(".")]
    commits = committed_epochs(loc, key)
    if not commits:
        return None
    jobs = sorted(n for n in entries if not n.startswith("metrics-"))
    by_job: dict[str, list[tuple[int, int]]] = {}
    for epoch, m in commits.items():
        by_job.setdefault(m["job"], []).append((epoch, m["index"]))
    run = {"key": key, "name": run_name(key), "first": jobs[0] if jobs else key,
           "attrs": _job_attrs(loc, key, jobs), "jobs": {}, "extra": {}}
    for job in sorted(by_job):
        pairs = sorted(by_job[job])
        run["jobs"][job] = _read_job(loc, key, job, [i for _, i in pairs],
                                     run["attrs"].get(job, {}))
    for g in sorted(n for n in entries if n.startswith("metrics-")):
        for name, values in _read_metrics(loc, key, g).items():
            run["extra"].setdefault(name, {}).update(values)
    return run


def _runs(loc: Location) -> list[dict]:
    """Every run that has a committed epoch, in the order its first job started (runs are
    read at once: on object stores each takes a few round trips)."""
    keys = [k for k in loc.listdir(RUNS) if not k.startswith(".") and k != "zarr.json"]
    with ThreadPoolExecutor(8) as pool:
        runs = [r for r in pool.map(lambda k: _run(loc, k), keys) if r is not None]
    return sorted(runs, key=lambda r: (r["first"], r["name"]))


def _combine(loc: Location) -> xr.DataTree:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = zarr.open_group(loc.zarr_store(read_only=True), mode="r", zarr_format=3,
                               use_consolidated=False)
        attrs = dict(root.attrs)
        fixed = {n: root[n][:] for n in ("quantile", "nas_bin", "corr_bin")}
        runs = _runs(loc)
    epochs = sorted({int(e) for r in runs for j in r["jobs"].values() for e in j["epoch"]})
    layers = _merge_layers([j["layer"] for r in runs for j in r["jobs"].values()])
    info = {}
    for r in runs:
        for j in r["jobs"].values():
            for i, name in enumerate(j["layer"]):
                info.setdefault(name, {"layer_kind": j["layer_kind"][i],
                                       **{c: int(j[c][i]) for c in ("channels", "locations", "depth")}})
    R, E, L = len(runs), len(epochs), len(layers)
    e_at = {e: i for i, e in enumerate(epochs)}
    l_at = {n: i for i, n in enumerate(layers)}
    data = {n: np.full((R, E, L), np.nan) for n in SCALARS}
    for n, c in _HISTS:
        data[n] = np.full((R, E, L, len(fixed[c])), np.nan)
    for n in ("loss", "accuracy"):
        data[n] = np.full((R, E), np.nan)
    probed = np.zeros((R, E), np.int8)
    heat: dict[str, dict] = {}
    for ri, r in enumerate(runs):
        for j in r["jobs"].values():
            ei = [e_at[int(e)] for e in j["epoch"]]
            li = [l_at[n] for n in j["layer"]]
            probed[ri, ei] = 1
            for n in list(SCALARS) + [n for n, _ in _HISTS]:
                data[n][np.ix_([ri], ei, li)] = j[n][None]
            for n in ("loss", "accuracy"):
                data[n][ri, ei] = j[n]
            k = int(j["attrs"].get("keep_images", 0))
            for name in j["layer"]:
                h = heat.setdefault(name, {"parts": [], "k": 0})
                h["parts"].append((ri, ei, j[(name, "nas_map")], j[(name, "nas_image_map")]))
                h["k"] = max(h["k"], k)
    dims3 = ("run", "epoch", "layer")
    ds = xr.Dataset(
        {n: (dims3, data[n]) for n in SCALARS},
        coords={"run": ("run", np.array([r["name"] for r in runs], dtype=str)),
                "epoch": ("epoch", np.asarray(epochs, np.int64)),
                "layer": ("layer", np.array(layers, dtype=str)),
                "layer_kind": ("layer", np.array([info[n]["layer_kind"] for n in layers], dtype=str)),
                **{c: ("layer", np.array([info[n][c] for n in layers], np.int64))
                   for c in ("channels", "locations", "depth")},
                **{c: (c, v) for c, v in fixed.items()}})
    for n, c in _HISTS:
        ds[n] = (dims3 + (c,), data[n])
    for n in ("loss", "accuracy"):
        ds[n] = (("run", "epoch"), data[n])
    # Imported metrics (training logs): new variables, or over the probe's loss/accuracy.
    for m in sorted({m for r in runs for m in r["extra"]}):
        col = ds[m].values.copy() if m in ds else np.full((R, E), np.nan)
        for ri, r in enumerate(runs):
            for e, v in r["extra"].get(m, {}).items():
                if e in e_at and probed[ri, e_at[e]]:
                    col[ri, e_at[e]] = v
        ds[m] = (("run", "epoch"), col)
    ds["probed"] = (("run", "epoch"), probed)
    ds.attrs = _attrs(attrs, runs)
    tree = {"/": ds, "/heatmaps": xr.Dataset()}
    for name, h in heat.items():
        tree[f"/heatmaps/{group_name(name)}"] = _heatmap(name, h, R, E)
    return xr.DataTree.from_dict(tree)


def _heatmap(name: str, h: dict, R: int, E: int) -> xr.Dataset:  # noqa: N803 (R runs, E epochs)
    """One layer's maps on the full (run, epoch) grid; NaN-padded where runs' shapes differ."""
    nd = h["parts"][0][2].ndim - 1
    parts = [p for p in h["parts"] if p[2].ndim - 1 == nd]
    sp = tuple(max(p[2].shape[1 + d] for p in parts) for d in range(nd))
    maps = np.full((R, E, *sp), np.nan, np.float32)
    imgs = np.full((R, E, h["k"], *sp), np.nan, np.float32)
    for ri, ei, m, im in parts:
        for row, e in enumerate(ei):
            maps[(ri, e, *(slice(0, s) for s in m.shape[1:]))] = m[row]
            imgs[(ri, e, slice(0, im.shape[1]), *(slice(0, s) for s in im.shape[2:]))] = im[row]
    sd = spatial_dims(nd)
    return xr.Dataset({"nas_map": (("run", "epoch", *sd), maps),
                       "nas_image_map": (("run", "epoch", "image", *sd), imgs)},
                      attrs={"layer": name})


def _attrs(root: dict, runs: list[dict]) -> dict:
    """The view's root attributes: the store's, and provenance merged over each run's jobs."""
    out = {k: v for k, v in root.items()}
    prov, version, source, k = {}, None, None, 0
    for r in runs:
        p: dict = {}
        probes: list[str] = []  # every probe set a job of this run used (issue: --force)
        for job in sorted(r["attrs"]):
            a = r["attrs"][job]
            jp = json.loads(a.get("provenance", "{}"))
            if jp.get("probe_sha256") and jp["probe_sha256"] not in probes:
                probes.append(jp["probe_sha256"])
            for field in ("skipped", "nonfinite"):
                if field in jp or field in p:
                    jp[field] = {**p.get(field, {}), **jp.get(field, {})}
            p.update(jp)
            version = a.get("nasprobe_version", version)
            source = a.get("probe_source", source)
            k = max(k, int(a.get("keep_images", 0)))
        if len(probes) > 1:
            p["probe_sets"] = probes
        prov[r["name"]] = p
    if version is not None:
        out["nasprobe_version"] = version
    if source is not None:
        out["probe_source"] = source
    out["framework"] = ",".join(sorted({p.get("framework", "") for p in prov.values()} - {""}))
    out["runs"] = json.dumps(prov)
    out["sources"] = json.dumps({r: p.get("source") for r, p in prov.items()})
    out["keep_images"] = k
    return out


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
        warnings.simplefilter("ignore")
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
