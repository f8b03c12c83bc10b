"""Names of the store's layout on disk, shared by its writer and its reader.

See docs/store-design.md for the layout and why it needs no locks, docs/store.md for the
combined view that :func:`nasprobe.open_store` returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote, unquote

import numpy as np

from nasprobe.errors import StoreError

__all__ = ["LAYOUT", "SCALARS", "SHAPES", "LayerInfo", "group_name", "spatial_dims", "run_key",
           "run_name", "marker", "read_marker", "group_json", "OWN_NAMES", "check_metric_name"]

#: Value of the root attribute ``nasprobe_layout`` of stores with one group per run and job.
LAYOUT = "runs/1"
#: Per (run, epoch, layer) statistics stored as scalars.
SCALARS = ("nas_median", "nas_mean", "nas_min", "nas_max", "entropy_mean")
#: Folder of the runs' groups, and the marker folders inside each run's group.
RUNS, COMMITS, CLAIMS = "runs", "commits", "claims"
#: The group inside a run's group whose attributes record, once, the layers (channels, map
#: shape) of the first job that opened the run: the run's shapes from then on.
SHAPES = "shapes"


@dataclass(frozen=True)
class LayerInfo:
    """A layer as stored: name, operator kind, channels D, location shape, depth (graph order),
    and the nonlinearity that follows it (``""`` for none, None when unknown: a store copied
    from one written before unit activity was measured; docs/measures.md, "Dead units")."""

    name: str
    kind: str
    channels: int
    spatial: tuple[int, ...]
    depth: int
    nonlinearity: str | None = None

    @property
    def locations(self) -> int:
        """Number of locations (product of the spatial shape; 1 for a dense layer)."""
        return int(np.prod(self.spatial, dtype=np.int64))


def group_name(layer: str) -> str:
    r"""Name of a layer's heatmap group: the layer name with ``%``, ``/`` and ``\`` written as
    ``%25``, ``%2F``, ``%5C``, a leading ``.`` as ``%2E`` and a leading ``__`` as ``%5F_`` — one
    group per layer (``a/b`` and ``a_b`` stay apart) and never a path (``..``). The group's
    ``layer`` attribute holds the name itself."""
    name = layer.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")
    if name.startswith((".", "__")):  # "." and ".." are paths; "__" is reserved by zarr
        name = ("%2E" if name[0] == "." else "%5F") + name[1:]
    return name or "%00"


def spatial_dims(n: int) -> tuple[str, ...]:
    """Dimension names of an ``n``-D NAS map: ``()``, ``(t,)``, ``(y, x)``, ``(z, y, x)``."""
    return {0: (), 1: ("t",), 2: ("y", "x"), 3: ("z", "y", "x")}.get(n, tuple(f"s{i}" for i in range(n)))


def run_key(run: str) -> str:
    """The run's group name: the name percent-escaped (``/``, ``%``, a leading ``.`` or ``_``)."""
    key = quote(run, safe="-+=,@~")
    if key.startswith((".", "_")) or not key:
        key = f"%{ord(key[0]):02X}" + key[1:] if key else "%00"
    return key


def run_name(key: str) -> str:
    """Inverse of :func:`run_key`."""
    return "" if key == "%00" else unquote(key)


def group_json(attrs: dict) -> bytes:
    """A zarr v3 group's metadata document (deterministic bytes for the same attributes)."""
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs},
                      sort_keys=True).encode()


def marker(job: str, index: int, epoch: int) -> bytes:
    """A commit (or claim) marker: an empty zarr group ``<epoch>/zarr.json`` whose attributes
    say which job holds the epoch, at which index (a group, so that the store stays a valid
    zarr hierarchy that xarray and zarr open without complaint)."""
    return group_json({"job": job, "index": int(index), "epoch": int(epoch)})


def read_marker(data: bytes | None) -> dict | None:
    """A marker's content, or None for a missing or unreadable one."""
    if not data:
        return None
    try:
        out = json.loads(data).get("attributes", {})
    except (ValueError, AttributeError):
        return None
    return out if isinstance(out, dict) and "job" in out else None


#: Names of the view's own variables, coordinates and groups: never a metric's name.
OWN_NAMES = frozenset({*SCALARS, "nas_quantile", "nas_hist", "corr_hist", "probed", "run", "epoch",
                       "layer", "layer_kind", "channels", "locations", "depth", "quantile",
                       "nas_bin", "corr_bin", "image", "heatmaps", "dead_fraction",
                       "nonlinearity", "unit_activity", "channel"})


def check_metric_name(path: str, name: str) -> None:
    """Refuse a metric name that is a path or one of the store's own names (``loss`` and
    ``accuracy`` may be imported: they are per-epoch metrics; see
    ``nasprobe.store.training_logs.store_metric_names``, which renames log columns to pass this).

    Raises:
        StoreError: naming the store and the metric.
    """
    if not name or "/" in name or "\\" in name or name.startswith(".") or name == "zarr.json":
        raise StoreError(path, f"metric name {name!r} is not a plain name; refused")
    if name in OWN_NAMES:
        raise StoreError(path, f"metric name {name!r} is one of the store's own variables; "
                               "refused (import it under another name)")
