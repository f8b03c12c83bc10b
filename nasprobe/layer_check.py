"""Before a probe job writes anything: do its runs' layers fit the store?

A store holds one ``channels`` value per layer name, so a run whose layer has a stored layer's
name but another width is refused: it is another architecture under the same names. The map
size (the layer's locations) may differ between *runs* — a fully convolutional net probed at
two image sizes is a legitimate comparison — and the combined view pads the smaller maps with
NaN (docs/store.md, *Heatmaps*). Within *one run* it may not: a run is one architecture at one
input size, so that its epochs stay comparable; adding epochs of another map size to a stored
run is refused. Both checks read only the stored job groups' coordinates and metadata, never
the values.
"""

from __future__ import annotations

from dataclasses import dataclass

import zarr

from .errors import StoreError
from .storage import Location
from .store_layout import LAYOUT, RUNS, LayerInfo, group_name, run_key, run_name
from .store_read import committed_epochs, store_layout

__all__ = ["PlannedRun", "StoredLayer", "stored_layers", "check_layers"]


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
    for key in loc.listdir(RUNS):
        if key.startswith(".") or key == "zarr.json":
            continue
        by_job: dict[str, list[int]] = {}
        for epoch, m in committed_epochs(loc, key).items():
            by_job.setdefault(m["job"], []).append(int(epoch))
        layers: dict[str, StoredLayer] = {}
        for job, epochs in sorted(by_job.items()):
            grp = zarr.open_group(loc.child(RUNS, key, job).zarr_store(read_only=True), mode="r",
                                  zarr_format=3, use_consolidated=False)
            for name, channels in zip(grp["layer"][:].tolist(), grp["channels"][:].tolist()):
                spatial = tuple(grp[f"heatmaps/{group_name(str(name))}/nas_map"].shape[1:])
                old = layers.get(str(name))
                if old is not None and (old.channels, old.spatial) == (int(channels), spatial):
                    epochs = sorted({*old.epochs, *epochs})
                layers[str(name)] = StoredLayer(int(channels), spatial, tuple(sorted(epochs)))
        out[run_name(key)] = layers
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
        todo = set(map(int, plan.epochs)) - set(committed_epochs(loc, run_key(plan.run)))
        for info in plan.layers:
            s = mine.get(info.name)
            if s is None or not todo or s.spatial == tuple(info.spatial):
                continue
            raise StoreError(loc.url, f"layer {info.name!r} of run {plan.run!r} has maps of "
                             f"{_shape(tuple(info.spatial))} locations in {plan.source}, but "
                             f"{_shape(s.spatial)} in the run's stored epochs "
                             f"{', '.join(map(str, s.epochs))}: one run is one architecture at "
                             "one input size; probe these checkpoints as another run (--run "
                             "NAME) or into another --out")
