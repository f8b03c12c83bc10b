"""Checks on a store's metadata before it is read: the store may come from someone else.

Everything a reader takes from the store's documents — commit markers, array shapes and
chunk grids, job attributes — decides which objects are read and how much memory is
allocated. Each is checked here first, so that an edited or hostile store is a
:class:`~nasprobe.errors.StoreError` naming the object (exit 2 on the command line), never a
read outside the store, a traceback, or an allocation of gigabytes from a few bytes:

* a commit marker must name a job group of its own run (never a path such as
  ``../../other.zarr/runs/b/<job>``), an epoch equal to its folder's, and a slot inside that
  job's arrays that holds the same epoch;
* arrays must have a regular chunk grid and zarr's chunk key encoding (a separator that is
  a path, such as ``/../``, would read objects outside the array); a job's coordinates at most :data:`MAX_COORD`
  entries in at most :data:`MAX_CHUNKS` chunks; one epoch of a variable at most
  :data:`MAX_SLOT_ELEMENTS` values in at most :data:`MAX_CHUNKS` chunks, and a chunk at most
  :data:`MAX_SLOT_ELEMENTS` values (nasprobe writes one chunk per coordinate, and one per
  epoch or block of epochs of each variable, see docs/store-design.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

from nasprobe.errors import StoreError

__all__ = ["MAX_COORD", "MAX_SLOT_ELEMENTS", "MAX_CHUNKS", "MAX_LAYERS", "json_object",
           "safe_int", "check_marker", "check_array", "check_layers_attr", "check_slots",
           "check_decoded", "check_metric_arrays", "damaged"]

#: Entries of one job group's coordinate (its epochs).
MAX_COORD = 2 ** 20
#: Layers of one job group.
MAX_LAYERS = 2 ** 16
#: Values of one epoch of one variable (2**26 float32: 256 MiB, e.g. 64 images of 1024² maps).
MAX_SLOT_ELEMENTS = 2 ** 26
#: Chunks of one coordinate, or of one epoch of one variable.
MAX_CHUNKS = 64


@contextmanager
def damaged(url: str, where: str) -> Iterator[None]:
    """Inside: any error decoding the store's object ``where`` (zarr raises many kinds for
    an edited document) becomes a :class:`~nasprobe.errors.StoreError` naming it."""
    try:
        yield
    except (StoreError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 (zarr's many errors for a bad document)
        raise StoreError(url, f"{where}: cannot be read ({type(exc).__name__}: {exc}); the "
                         "store was edited or damaged") from exc


def json_object(data: bytes | str | None) -> dict:
    """A JSON document that must be an object: ``{}`` when missing, unreadable or not an
    object (callers that need it whole check what they use)."""
    try:
        got = json.loads(data) if data else {}
    except (ValueError, TypeError, RecursionError):
        return {}
    return got if isinstance(got, dict) else {}


def safe_int(value, default: int = 0) -> int:
    """``value`` as an ``int`` when it is a whole JSON number or numeric text (bools are not),
    else ``default``."""
    if isinstance(value, bool):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_marker(url: str, where: str, epoch: int, marker: dict, jobs: set[str]) -> None:
    """Refuse a commit marker ``where`` (of folder ``epoch``) that does not name one of the
    run's ``jobs`` (a listed group name, never a path), a whole slot index >= 0, and its own
    epoch.

    Raises:
        StoreError: naming the store and the marker.
    """
    job, index = marker.get("job"), marker.get("index")
    if not isinstance(job, str) or job not in jobs:
        raise StoreError(url, f"commit marker {where} names job {job!r}, which is not a job "
                         "group of its run; the store was edited or damaged")
    if not _whole(index) or index < 0:
        raise StoreError(url, f"commit marker {where} has slot index {index!r}, not a whole "
                         "number >= 0; the store was edited or damaged")
    if marker.get("epoch", epoch) != epoch:
        raise StoreError(url, f"commit marker {where} says epoch {marker.get('epoch')!r} in "
                         f"the folder of epoch {epoch}; the store was edited or damaged")


def check_slots(url: str, base: str, slots: list[int], epochs, wanted: list[int]) -> None:
    """Each committed slot must lie inside the job's ``epochs`` coordinate and hold the epoch
    its marker names (``wanted``, in the order of ``slots``).

    Raises:
        StoreError: naming the job group, the slot and the epochs.
    """
    for slot, epoch in zip(slots, wanted):
        if slot >= len(epochs):
            raise StoreError(url, f"a commit marker of epoch {epoch} points at slot {slot} of "
                             f"{base}, which has {len(epochs)} slots; the store was edited or "
                             "damaged")
        if int(epochs[slot]) != epoch:
            raise StoreError(url, f"a commit marker of epoch {epoch} points at slot {slot} of "
                             f"{base}, which holds epoch {int(epochs[slot])}; the store was "
                             "edited or damaged")


def check_layers_attr(url: str, base: str, attrs: dict) -> list[str]:
    """The job group's ``layers`` attribute: a JSON list of at most :data:`MAX_LAYERS` names.

    Raises:
        StoreError: naming the job group.
    """
    try:
        layers = json.loads(attrs.get("layers", "[]"))
    except (ValueError, TypeError, RecursionError):
        layers = None
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers) \
            or len(layers) > MAX_LAYERS:
        raise StoreError(url, f"{base}: its 'layers' attribute is not a list of at most "
                         f"{MAX_LAYERS} layer names; the store was edited or damaged")
    return layers


def check_array(url: str, path: str, meta: dict, coordinate: bool) -> tuple[list, list]:
    """(shape, chunk shape) of the array ``path`` from its metadata ``meta``, within the
    limits of the module docstring (for a ``coordinate``: the whole array; otherwise one
    epoch, i.e. everything after the first axis).

    Raises:
        StoreError: naming the array and what it declares.
    """
    shape = meta.get("shape")
    try:
        chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    except (KeyError, TypeError):
        chunks = None
    if not isinstance(shape, list) or not isinstance(chunks, list) or len(shape) != len(chunks) \
            or not all(_whole(s) and s >= 0 for s in shape) \
            or not all(_whole(c) and c >= 1 for c in chunks) or not shape:
        raise StoreError(url, f"{path}: declares shape {shape!r} in chunks of {chunks!r}, not "
                         "a regular chunk grid; the store was edited or damaged")
    enc = meta.get("chunk_key_encoding", {"name": "default"})
    conf = enc.get("configuration", {}) if isinstance(enc, dict) else None
    if not isinstance(conf, dict) or enc.get("name", "default") not in ("default", "v2") \
            or conf.get("separator", "/") not in ("/", "."):
        raise StoreError(url, f"{path}: declares the chunk key encoding {enc!r}, not zarr's "
                         "'default' or 'v2' with a '/' or '.' separator; the store was edited "
                         "or damaged")
    grid = [math.ceil(s / c) for s, c in zip(shape, chunks)]
    if coordinate:
        size, count, what = shape[0] if len(shape) == 1 else -1, grid[0], "entries"
        limit = MAX_COORD
    else:
        size, count, what = math.prod(shape[1:]), math.prod(grid[1:]), "values per epoch"
        limit = MAX_SLOT_ELEMENTS
    if not 0 <= size <= limit or count > MAX_CHUNKS:
        raise StoreError(url, f"{path}: declares shape {shape} in chunks of {chunks} "
                         f"({'?' if size < 0 else size} {what} in {count} chunks; at most {limit} "
                         f"in {MAX_CHUNKS} are read); the store was edited or damaged")
    if not coordinate and math.prod(chunks) > MAX_SLOT_ELEMENTS:  # a chunk is decoded whole
        raise StoreError(url, f"{path}: declares chunks of {chunks} ({math.prod(chunks)} "
                         f"values; at most {MAX_SLOT_ELEMENTS} are read at once); the store "
                         "was edited or damaged")
    return shape, chunks


#: Variables of a job group per (epoch, layer), per epoch, and per (epoch, layer, bin).
_PER_LAYER = ("nas_median", "nas_mean", "nas_min", "nas_max", "entropy_mean", "dead_fraction")
_PER_EPOCH = ("loss", "accuracy")
_PER_BIN = ("nas_quantile", "nas_hist", "corr_hist")


def check_decoded(url: str, base: str, coords: dict, variables: dict, maps: dict,
                  layers: list[str], n: int) -> None:
    """The arrays a reader decoded from the job group ``base``, for ``n`` committed epochs,
    must agree with its ``layers`` attribute: each layer coordinate (``coords``: name → one
    entry per layer, ``layer`` the names themselves) one entry per layer, each of
    ``variables`` (name → array) its epochs × layers, and in ``maps`` (layer → an object
    with ``nas_map``, ``nas_image_map``, ``unit_activity``) each layer's image maps one rank
    above its maps.

    Raises:
        StoreError: naming the job group or the array.
    """
    nl = len(layers)
    if coords["layer"] != layers or len(set(layers)) != nl or \
            any(len(v) != nl for v in coords.values()):
        raise StoreError(url, f"{base}: its layer coordinates disagree with its 'layers' "
                         "attribute (or name a layer twice); the store was edited or damaged")
    want = {**{x: (n, nl) for x in _PER_LAYER}, **{x: (n,) for x in _PER_EPOCH}}
    for name in (x for x in (*_PER_LAYER, *_PER_EPOCH, *_PER_BIN) if x in variables):
        array = variables[name]
        shape = array.shape if name in want else array.shape[:2]
        if shape != want.get(name, (n, nl)) or (name in _PER_BIN and array.ndim != 3):
            raise StoreError(url, f"{base}/{name}: has shape {array.shape} for {n} epochs "
                             f"of {nl} layers; the store was edited or damaged")
    for layer, m in maps.items():
        act = m.unit_activity
        if m.nas_image_map.ndim != m.nas_map.ndim + 1 or (act is not None and act.ndim != 2):
            raise StoreError(url, f"{base}: the heatmaps of layer {layer!r} disagree in rank "
                             "(maps, image maps, unit activity); the store was edited or "
                             "damaged")


def check_metric_arrays(url: str, where: str, arrays: dict) -> None:
    """The arrays of an imported metrics group ``where`` (name → zarr array): each 1-D, at
    most :data:`MAX_COORD` epochs in at most :data:`MAX_CHUNKS` chunks, checked before any
    is read.

    Raises:
        StoreError: naming the array.
    """
    for name, arr in arrays.items():
        if arr.ndim != 1 or arr.shape[0] > MAX_COORD or arr.nchunks > MAX_CHUNKS:
            raise StoreError(url, f"{where}/{name}: declares shape {arr.shape} in "
                             f"{arr.nchunks} chunks, not a metric per epoch; the store was "
                             "edited or damaged")
