"""Before a probe job writes anything: do its runs' layers fit the store?

A store holds one ``channels`` value per layer name, so a run whose layer has a stored layer's
name but another width is refused: it is another architecture under the same names. The map
size (the layer's locations) may differ between *runs* — a fully convolutional net probed at
two image sizes is a legitimate comparison — and the combined view pads the smaller maps with
NaN (docs/store.md, *Heatmaps*). Within *one run* it may not: a run is one architecture at one
input size, so that its epochs stay comparable; adding epochs of another map size to a stored
run is refused. Both checks read only the stored job groups' coordinates and metadata, never
the values.

Jobs on one run at the same time both pass these checks before either has stored an epoch, so
the first job to open a run also records its layers in the run's ``shapes`` group, created
exclusively (:func:`fix_run_shapes`); every later job, concurrent or not, must agree with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from nasprobe.errors import StoreError

from .layout import LAYOUT, RUNS, SHAPES, LayerInfo, group_json, group_name, run_key
from .runs import committed_epochs, read_runs, store_layout
from .storage import Location

__all__ = ["PlannedRun", "StoredLayer", "stored_layers", "check_layers", "fix_run_shapes"]


@dataclass(frozen=True)
class PlannedRun:
    """A run a probe job is about to write: its name, the checkpoint that gave its
    architecture (named in messages), its layers and the epochs it will probe."""

    run: str
    source: str
    layers: list[LayerInfo]
    epochs: list[int]


@dataclass(frozen=True)
class StoredLayer:
    """A layer of a stored run: channels ``D``, map shape (``()`` for a dense layer), and the
    committed epochs of the run that were measured with it."""

    channels: int
    spatial: tuple[int, ...]
    epochs: tuple[int, ...]


def stored_layers(loc: Location) -> dict[str, dict[str, StoredLayer]]:
    """Per run name, per layer name: how the run's committed epochs stored it (empty for a
    store that does not exist or is not of the current layout)."""
    if store_layout(loc) != LAYOUT:
        return {}
    out: dict[str, dict[str, StoredLayer]] = {}
    for r in read_runs(loc, values=False):
        layers: dict[str, StoredLayer] = {}
        for job, j in sorted(r.jobs.items()):
            names = [str(n) for n in j.layer]
            docs = loc.read_many([f"{RUNS}/{r.key}/{job}/heatmaps/{group_name(n)}/nas_map/"
                                  "zarr.json" for n in names])
            job_epochs = {int(e) for e in j.epoch}
            for name, channels, doc in zip(names, j.channels, docs.values()):
                spatial = tuple(json.loads(doc)["shape"][1:]) if doc else ()
                epochs = set(job_epochs)
                old = layers.get(name)
                if old is not None and (old.channels, old.spatial) == (int(channels), spatial):
                    epochs |= set(old.epochs)
                layers[name] = StoredLayer(int(channels), spatial, tuple(sorted(epochs)))
        out[r.name] = layers
    return out


def _shape(spatial: tuple[int, ...]) -> str:
    return "×".join(map(str, spatial)) if spatial else "1 location (dense)"


def check_layers(loc: Location, runs: list[PlannedRun]) -> None:
    """Refuse, before anything is written, a run whose layer has a known layer's name but
    another number of channels (known from the store or from this job's other runs), or a
    stored run whose new epochs would have another map shape than its stored epochs.

    Raises:
        StoreError: naming the store, the run, the layer, the checkpoint and both shapes.
    """
    stored = stored_layers(loc)
    known: dict[str, tuple[int, str]] = {}
    for layers in stored.values():
        for name, s in layers.items():
            known.setdefault(name, (s.channels, "the store"))
    for plan in runs:
        for info in plan.layers:
            c, where = known.setdefault(info.name, (int(info.channels), f"run {plan.run!r}"))
            if c != int(info.channels):
                raise StoreError(loc.url, f"layer {info.name!r} of run {plan.run!r} has "
                                 f"{info.channels} channels, but {c} in {where}: another "
                                 "architecture under the same layer names; use another --out")
        mine = stored.get(plan.run, {})
        moved = [(info, mine[info.name]) for info in plan.layers
                 if info.name in mine and mine[info.name].spatial != tuple(info.spatial)]
        if not moved or set(map(int, plan.epochs)) <= set(committed_epochs(loc, run_key(plan.run))):
            continue  # same shapes, or nothing left to write into the run
        info, s = moved[0]
        raise StoreError(loc.url, f"layer {info.name!r} of run {plan.run!r} has maps of "
                         f"{_shape(tuple(info.spatial))} locations in {plan.source}, but "
                         f"{_shape(s.spatial)} in the run's stored epochs "
                         f"{', '.join(map(str, s.epochs))}: one run is one architecture at one "
                         "input size; probe these checkpoints as another run (--run NAME) or "
                         "into another --out")


def _layer_text(channels: int, spatial) -> str:
    return f"{channels} channels, maps of {_shape(tuple(spatial))} locations"


def fix_run_shapes(loc: Location, run: str, layers: list[LayerInfo], job: str) -> None:
    """Record ``layers`` (channels, map shape) as the run's shapes if this job is the first
    to open ``run`` (an exclusive create of ``runs/<run>/shapes``), else check them against
    that record: two jobs on one run at two input sizes would otherwise mix their maps.

    Raises:
        StoreError: naming the store, the run, the layer, the job that fixed the run, and
            both shapes; or an unreadable record.
    """
    key = run_key(run)
    mine = {x.name: [int(x.channels), [int(s) for s in x.spatial]] for x in layers}
    if loc.create(group_json({"job": job, "layers": mine}), RUNS, key, SHAPES, "zarr.json"):
        return
    try:
        fixed = json.loads(loc.read(RUNS, key, SHAPES, "zarr.json"))["attributes"]
        first, known = str(fixed["job"]), dict(fixed["layers"])
    except (TypeError, ValueError, KeyError) as exc:
        raise StoreError(loc.url, f"run {run!r} has an unreadable {SHAPES} record "
                         f"({exc.__class__.__name__})") from exc
    for name, (channels, spatial) in mine.items():
        if name in known and [channels, spatial] != [int(known[name][0]), list(known[name][1])]:
            raise StoreError(loc.url, f"layer {name!r} of run {run!r} has "
                             f"{_layer_text(channels, spatial)}, but job {first} opened the "
                             f"run with {_layer_text(*known[name])}: one run is one "
                             "architecture at one input size; probe these checkpoints as "
                             "another run (--run NAME) or into another --out")
