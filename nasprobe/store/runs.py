"""The runs of a NAS store read as plain arrays and dicts, with zarr and json alone (zarr
imported by the functions that decode arrays: a probe job into a new store never needs it).

This is the layer below :func:`nasprobe.store.reader.open_store` (which assembles an xarray view
from it) and what ``nasprobe info`` reads through :func:`summary`, so that a look at a store
does not pay for importing xarray, pandas and dask. Commit markers are listed first and only
the slots they name are read (docs/store-design.md).
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nasprobe.errors import StoreError

from .layout import (
    CLAIMS,
    COMMITS,
    LAYOUT,
    RUNS,
    SCALARS,
    SHAPES,
    group_name,
    read_marker,
    run_name,
)
from .limits import (
    check_array,
    check_decoded,
    check_layers_attr,
    check_marker,
    check_metric_arrays,
    check_slots,
    damaged,
    json_object,
    safe_int,
)
from .provenance import run_probe_sets
from .records import JobArrays, LayerMaps, RunRecord, RunSummary, StoreSummary
from .storage import Location, location

__all__ = ["LEGACY", "HISTS", "store_layout", "known_layout", "committed_epochs", "read_runs",
           "merge_layers", "layer_table",
           "view_attrs", "summary", "metric_order"]

#: What :func:`store_layout` answers for a store of nasprobe 0.1.
LEGACY = "0.1"
_COORDS = ("epoch", "layer", "layer_kind", "channels", "locations", "depth")
#: Written since unit activity was added (docs/measures.md, "Dead units"): read where present,
#: absent from older job groups (and then absent from the view, not zero).
OPTIONAL = ("nonlinearity", "dead_fraction")
#: Histogram-like variables and their last dimension.
HISTS = (("nas_quantile", "quantile"), ("nas_hist", "nas_bin"), ("corr_hist", "corr_bin"))


def store_layout(loc: Location) -> str | None:
    """``"runs/1"`` (one group per run and job), :data:`LEGACY`, or None (no store there)."""
    meta = loc.read("zarr.json")
    if meta is None:
        return None
    try:
        doc = json.loads(meta)
    except (ValueError, RecursionError) as exc:
        raise StoreError(loc.url, f"has an unreadable zarr.json ({exc})") from exc
    attrs = doc.get("attributes", {}) if isinstance(doc, dict) else None
    if not isinstance(attrs, dict):
        raise StoreError(loc.url, "has a zarr.json that is not a zarr group's metadata")
    if isinstance(attrs.get("nasprobe_layout"), str) and attrs["nasprobe_layout"]:
        return attrs["nasprobe_layout"]
    return LEGACY if loc.exists("probed", "zarr.json") else None


def known_layout(loc: Location) -> str:
    """The store's layout, :data:`~nasprobe.store.layout.LAYOUT` or :data:`LEGACY`.

    Raises:
        StoreError: nothing that nasprobe wrote is at ``loc``, or a layout this nasprobe does
            not know (written by a newer one).
    """
    layout = store_layout(loc)
    if layout is None:
        raise StoreError(loc.url, "is not a nasprobe store (no zarr.json)")
    if layout not in (LAYOUT, LEGACY):
        raise StoreError(loc.url, f"has store layout {layout!r}, which this nasprobe does not "
                         "know; upgrade nasprobe")
    return layout


def committed_epochs(loc: Location, key: str) -> dict[int, dict]:
    """The run ``key``'s commit markers: epoch → ``{"job", "index", "epoch"}`` (as written:
    readers check them, see :func:`nasprobe.store.limits.check_marker`)."""
    names = [n for n in loc.listdir(RUNS, key, COMMITS)
             if n.lstrip("-").isdigit() and len(n) <= 20]
    got = loc.read_many([f"{RUNS}/{key}/{COMMITS}/{n}/zarr.json" for n in names])
    out = {}
    for n in names:
        m = read_marker(got[f"{RUNS}/{key}/{COMMITS}/{n}/zarr.json"])
        if m is not None:
            out[int(n)] = m
    return out


def _array_names(layers: list[str]) -> list[str]:
    """Paths of a job group's arrays (see :func:`nasprobe.store.writer.Store.open_run`)."""
    names = ["epoch", "layer", "layer_kind", "channels", "locations", "depth", "loss", "accuracy",
             *SCALARS, *(n for n, _ in HISTS)]
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
    if name not in _COORDS + ("nonlinearity",):  # per-epoch variables: only the chunks of these slots
        grid[0] = sorted({i // chunks[0] for i in slots})
    return [f"{name}/{prefix}{sep.join(map(str, idx))}" if idx else f"{name}/{prefix}0"
            for idx in itertools.product(*grid)]


def _read_job(loc: Location, key: str, job: str, pairs: list[tuple[int, int]], attrs: dict,
              values: bool = True) -> JobArrays:
    """The arrays of one job group at the slots of ``pairs`` (epoch, slot): its metadata in
    one batch of reads (each document checked, :mod:`nasprobe.store.limits`), then the chunks
    of those slots in another (concurrent requests on object stores), decoded by zarr from
    memory. Without ``values`` only the coordinates (epoch and the layers) are read."""
    base = f"{RUNS}/{key}/{job}"
    slots = [i for _, i in pairs]
    layers = check_layers_attr(loc.url, base, attrs)
    names = _array_names(layers) if values else list(_COORDS)
    optional = ["nonlinearity", "dead_fraction"]
    if values:
        optional += [f"heatmaps/{group_name(x)}/unit_activity" for x in layers]
    groups = [""]
    if values:
        groups += ["heatmaps"] + [f"heatmaps/{group_name(x)}" for x in layers]
    meta_keys = [f"{g}/zarr.json".lstrip("/") for g in groups] + [f"{n}/zarr.json" for n in names]
    opt_keys = [f"{n}/zarr.json" for n in optional]
    got = loc.read_many([f"{base}/{k}" for k in meta_keys + opt_keys])
    docs = {k: got[f"{base}/{k}"] for k in meta_keys}
    missing = [k for k, v in docs.items() if v is None]
    if missing:
        raise StoreError(loc.url, f"job group {base} lacks {missing[0]}")
    present = [n for n in optional if got[f"{base}/{n}/zarr.json"] is not None]
    has_activity = "dead_fraction" in present
    if not values:  # the activity's presence is known from its metadata alone
        present = [n for n in present if n != "dead_fraction"]
    docs.update({f"{n}/zarr.json": got[f"{base}/{n}/zarr.json"] for n in present})
    names += present
    metas = {n: json_object(docs[f"{n}/zarr.json"]) for n in names}
    for n in names:
        check_array(loc.url, f"{base}/{n}", metas[n], n in _COORDS + ("nonlinearity",))
    chunk_keys = [c for n in names for c in _chunk_keys(n, metas[n], slots)]
    got = loc.read_many([f"{base}/{k}" for k in chunk_keys])
    from zarr.buffer import cpu  # zarr is imported where a store is read, not by every job

    mem = {k: cpu.Buffer.from_bytes(v) for k, v in docs.items()}
    mem.update({k: cpu.Buffer.from_bytes(got[f"{base}/{k}"]) for k in chunk_keys
                if got[f"{base}/{k}"] is not None})
    with damaged(loc.url, base):
        out = _decode(loc, base, mem, pairs, layers, present, values)
    out.attrs, out.has_activity = attrs, has_activity
    return out


def _decode(loc: Location, base: str, mem: dict, pairs: list[tuple[int, int]],
            layers: list[str], present: list[str], values: bool) -> JobArrays:
    """The arrays of :func:`_read_job`, decoded by zarr from the documents and chunks
    ``mem``; their shapes checked against the job's epochs and layers."""
    import zarr.storage

    grp = zarr.open_group(zarr.storage.MemoryStore(mem), mode="r", zarr_format=3,
                          use_consolidated=False)
    slots = [i for _, i in pairs]
    all_epochs = grp["epoch"][:]
    check_slots(loc.url, base, slots, all_epochs, [e for e, _ in pairs])
    sl = np.asarray(slots, dtype=np.int64)
    names = ("layer", "layer_kind", *(["nonlinearity"] if "nonlinearity" in present else []))
    coords = {name: [str(v) for v in grp[name][:]] for name in names}
    coords.update({name: grp[name][:] for name in ("channels", "locations", "depth")})
    check_decoded(loc.url, base, coords, {}, {}, layers, len(sl))
    out = JobArrays({}, all_epochs[sl], coords["layer"], coords["layer_kind"],
                    coords["channels"], coords["locations"], coords["depth"],
                    coords.get("nonlinearity"))
    if not values:
        return out
    for name in list(SCALARS) + [h for h, _ in HISTS] + ["loss", "accuracy"] + \
            [x for x in present if x == "dead_fraction"]:
        out.variables[name] = grp[name].get_orthogonal_selection((sl,))
    for layer in layers:
        sub = grp[f"heatmaps/{group_name(layer)}"]
        read = {name: sub[name].get_orthogonal_selection((sl,)) for name in
                ("nas_map", "nas_image_map", "unit_activity")
                if name != "unit_activity" or f"heatmaps/{group_name(layer)}/{name}" in present}
        out.maps[layer] = LayerMaps(**read)
    check_decoded(loc.url, base, coords, out.variables, out.maps, layers, len(sl))
    return out


def _job_attrs(loc: Location, key: str, jobs: list[str]) -> dict[str, dict]:
    """The attributes of the run's job groups (one batch of reads); ``{}`` for a group being
    created right now."""
    got = loc.read_many([f"{RUNS}/{key}/{job}/zarr.json" for job in jobs])
    out = {}
    for job in jobs:
        attrs = json_object(got[f"{RUNS}/{key}/{job}/zarr.json"]).get("attributes", {})
        out[job] = attrs if isinstance(attrs, dict) else {}
    return out


def _read_metrics(loc: Location, key: str, group: str) -> dict[str, dict[int, float]]:
    """An imported metrics group: name → epoch → value (its 1-D arrays checked against the
    limits of :mod:`nasprobe.store.limits` before they are read)."""
    import zarr

    where = f"{RUNS}/{key}/{group}"
    with damaged(loc.url, where):
        grp = zarr.open_group(loc.child(RUNS, key, group).zarr_store(read_only=True), mode="r",
                              zarr_format=3, use_consolidated=False)
        arrays = dict(grp.arrays())
        check_metric_arrays(loc.url, where, arrays)
        epochs = arrays["epoch"][:].tolist()
        return {name: dict(zip(epochs, arr[:].tolist()))
                for name, arr in arrays.items() if name != "epoch"}


def merge_layers(lists: list[list[str]]) -> list[str]:
    """Union of layer lists keeping each list's order: a new layer goes right after the
    layer that precedes it in its own list (a linked list: time in proportion to the names)."""
    head = object()
    nxt: dict = {head: None}
    for names in lists:
        prev = head
        for name in names:
            if name not in nxt:
                nxt[name], nxt[prev] = nxt[prev], name
            prev = name
    out, at = [], nxt[head]
    while at is not None:
        out.append(at)
        at = nxt[at]
    return out


def _run(loc: Location, key: str, values: bool = True) -> RunRecord | None:
    """One run's committed epochs, read whole (None when it has none yet); without
    ``values``, only their coordinates and attributes."""
    entries = [n for n in loc.listdir(RUNS, key)
               if n not in (COMMITS, CLAIMS, SHAPES, "zarr.json") and not n.startswith(".")]
    commits = committed_epochs(loc, key)
    if not commits:
        return None
    jobs = sorted(n for n in entries if not n.startswith("metrics-"))
    by_job: dict[str, list[tuple[int, int]]] = {}
    for epoch, m in commits.items():
        check_marker(loc.url, f"{RUNS}/{key}/{COMMITS}/{epoch}", epoch, m, set(jobs))
        by_job.setdefault(m["job"], []).append((epoch, m["index"]))
    run = RunRecord(key, run_name(key), jobs[0] if jobs else key, _job_attrs(loc, key, jobs))
    for job in sorted(by_job):
        pairs = sorted(by_job[job])
        run.jobs[job] = _read_job(loc, key, job, pairs, run.attrs.get(job, {}), values)
    for g in sorted(n for n in entries if n.startswith("metrics-")):
        for name, metric in _read_metrics(loc, key, g).items():
            run.extra.setdefault(name, {}).update(metric)
    return run


def read_runs(loc: Location, values: bool = True) -> list[RunRecord]:
    """Every run that has a committed epoch, in the order its first job started (runs are
    read at once: on object stores each takes a few round trips), as :class:`RunRecord`: per
    job a :class:`JobArrays` of its committed epochs (only the coordinates without
    ``values``), and the imported metrics."""
    keys = [k for k in loc.listdir(RUNS) if not k.startswith(".") and k != "zarr.json"]
    with ThreadPoolExecutor(8) as pool:
        runs = [r for r in pool.map(lambda k: _run(loc, k, values), keys) if r is not None]
    return sorted(runs, key=lambda r: (r.first, r.name))


def layer_table(runs: list[RunRecord]) -> dict[str, dict]:
    """The layers of ``runs`` (from :func:`read_runs`) in the view's order
    (:func:`merge_layers`): name → ``layer_kind``, ``channels``, ``locations``, ``depth`` as
    the first job that has the layer stored them, and ``nonlinearity`` where a job that has
    the layer recorded it (jobs of nasprobe before unit activity did not)."""
    jobs = [j for r in runs for j in r.jobs.values()]
    info: dict[str, dict] = {}
    for j in jobs:
        for i, name in enumerate(j.layer):
            info.setdefault(name, {"layer_kind": j.layer_kind[i], "channels": int(j.channels[i]),
                                   "locations": int(j.locations[i]), "depth": int(j.depth[i])})
            if j.nonlinearity is not None and "nonlinearity" not in info[name]:
                info[name]["nonlinearity"] = j.nonlinearity[i]
    return {n: info[n] for n in merge_layers([j.layer for j in jobs])}


def view_attrs(root: dict, runs: list[RunRecord]) -> dict:
    """The view's root attributes: the store's ``root`` attributes, and provenance merged over
    each run's jobs (``runs`` from :func:`read_runs`): ``runs`` (JSON, run → provenance),
    ``sources``, ``framework``, ``keep_images``, ``nasprobe_version``, ``probe_source``,
    ``epoch_unit`` (what the ``epoch`` axis counts: ``epoch``, ``step`` or ``epoch/step``)."""
    out = {k: v for k, v in root.items()}
    prov, version, source, k = {}, None, None, 0
    for r in runs:
        p: dict = {}
        for job in sorted(r.attrs):
            a = r.attrs[job]
            jp = json_object(a.get("provenance"))
            for kind in ("skipped", "nonfinite"):
                if not isinstance(jp.get(kind, {}), dict):
                    jp.pop(kind)  # an edited record: not a file → reason map
                if kind in jp or kind in p:
                    jp[kind] = {**p.get(kind, {}), **jp.get(kind, {})}
            p.update(jp)
            version = a.get("nasprobe_version", version)
            source = a.get("probe_source", source)
            k = max(k, safe_int(a.get("keep_images", 0)))
        # The probe set of each committed epoch (several after --force with another one).
        p["probe_sets"] = run_probe_sets(r.attrs, {job: list(j.epoch) for job, j
                                                   in r.jobs.items()}, root)
        p.pop("probe_sha256", None)  # a job's own; probe_sets says which epochs used which
        if "no_preact" in p:  # layer names; an edited record may hold anything
            names = p["no_preact"] if isinstance(p["no_preact"], list) else []
            p["no_preact"] = [str(x) for x in names]
        prov[r.name] = p
    if version is not None:
        out["nasprobe_version"] = version
    if source is not None:
        out["probe_source"] = source
    out["framework"] = ",".join(sorted({p.get("framework", "") for p in prov.values()} - {""}))
    # What the epoch axis counts: "step" when every run's checkpoints are training steps
    # (Hugging Face Trainer folders), "epoch" when none are, "epoch/step" when mixed.
    units = {str(p.get("epoch_unit", "epoch")) for p in prov.values()} or {"epoch"}
    out["epoch_unit"] = units.pop() if len(units) == 1 else "epoch/step"
    out["runs"] = json.dumps(prov)
    out["sources"] = json.dumps({r: p.get("source") for r, p in prov.items()})
    out["keep_images"] = k
    return out


def summary(path) -> StoreSummary | None:
    """A store's runs, epochs, layers and provenance, read with zarr and json only (no
    values, no xarray): fast enough for a command-line look. None for a store of nasprobe
    0.1, which only :func:`nasprobe.store.reader.open_store` reads.

    Raises:
        StoreError: nothing that nasprobe wrote is at ``path``, or an unknown layout.
    """
    loc = location(path)
    if known_layout(loc) == LEGACY:
        return None
    root = json_object(loc.read("zarr.json")).get("attributes", {})
    runs = read_runs(loc, values=False)
    attrs = view_attrs(root, runs)
    prov = json.loads(attrs.pop("runs"))
    attrs.pop("sources", None)
    table = layer_table(runs)
    return StoreSummary(
        attrs,
        [RunSummary(r.name, sorted({int(e) for j in r.jobs.values() for e in j.epoch}),
                    prov.get(r.name, {})) for r in runs],
        [(n, t["layer_kind"], t["channels"], t["locations"]) for n, t in table.items()],
        metric_order({"loss", "accuracy", *(m for r in runs for m in r.extra)}),
        {n: t["nonlinearity"] for n, t in table.items() if "nonlinearity" in t},
        any(j.has_activity for r in runs for j in r.jobs.values()))


def metric_order(names) -> list[str]:
    """Per-epoch metric ``names`` in the order ``nasprobe info`` lists them: the probe's loss
    and accuracy, the training ones, then the rest alphabetically."""
    first = [m for m in ("loss", "accuracy", "train_loss", "train_accuracy") if m in names]
    return first + sorted(set(names) - set(first))
