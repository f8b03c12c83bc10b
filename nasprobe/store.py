"""The NAS store: a zarr v3 group that xarray reads as a DataTree (docs/store.md).

Layout: 1-D coordinate arrays ``run``, ``epoch``, ``layer`` (+ ``layer_kind``, ``channels``,
``locations``, ``depth``), variables chunked one (run, epoch) per chunk, and a commit flag
``probed`` (run, epoch) written last. Runs and epochs are kept in the order they were added
(no rewrite when a run or an epoch is added); :func:`open_store` sorts epochs and hides slots
that were reserved but never committed, so a run killed mid-epoch leaves nothing half-written
visible, and the same command continues where it stopped.

Writing happens in two steps so that many processes can write at once without locks:
:meth:`Store.reserve` (one process: grows arrays, assigns slots, consolidates metadata), then
:meth:`Store.write_epoch` per (run, epoch) (touches only that slot's chunks).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from .aggregate import NAS_BINS, QUANTILES
from .correlation import CORR_BINS
from .errors import StoreError

__all__ = ["LayerInfo", "Store", "open_store", "group_name"]

_EPOCH_FILL = -(2**62)
_LAYER_CHUNK = 256
_LAYER_COORDS = "layer_kind channels locations depth"
SCALARS = ("nas_median", "nas_mean", "nas_min", "nas_max", "entropy_mean")


@dataclass(frozen=True)
class LayerInfo:
    """A layer as stored: name, operator kind, channels D, location shape, depth (graph order)."""

    name: str
    kind: str
    channels: int
    spatial: tuple[int, ...]
    depth: int

    @property
    def locations(self) -> int:
        """Number of locations (product of the spatial shape; 1 for a dense layer)."""
        return int(np.prod(self.spatial, dtype=np.int64))


def group_name(layer: str) -> str:
    """Name of a layer's heatmap group (``/`` is not allowed in group names)."""
    return layer.replace("/", "_")


def _spatial_dims(n: int) -> tuple[str, ...]:
    return {0: (), 1: ("t",), 2: ("y", "x"), 3: ("z", "y", "x")}.get(n, tuple(f"s{i}" for i in range(n)))


class Store:
    """Writer for one store path. Cheap to create and picklable (it holds only the path)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._handles: dict[str, zarr.Array] = {}

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def _array(self, name: str) -> zarr.Array:
        """An array by path, opened once (handles are dropped whenever shapes change)."""
        if name not in self._handles:
            self._handles[name] = zarr.open_array(str(self.path / name), mode="r+", zarr_format=3)
        return self._handles[name]

    # -- opening -------------------------------------------------------------------------
    def _root(self, mode: str = "r+") -> zarr.Group:
        try:
            return zarr.open_group(str(self.path), mode=mode, zarr_format=3,
                                   **({} if mode in ("w", "w-") else {"use_consolidated": False}))
        except (OSError, PermissionError) as exc:
            raise StoreError(self.path, f"cannot be written: {exc}") from exc

    def exists(self) -> bool:
        """True when a store is already at the path."""
        return (self.path / "zarr.json").exists()

    def create_or_check(self, attrs: dict, force: bool = False, layer_chunk: int = _LAYER_CHUNK
                        ) -> None:
        """Create the store, or check that an existing one was written with the same probe set,
        tap mode and bias setting (``force`` allows another probe set). ``layer_chunk`` (the
        first run's layer count) sizes chunks along ``layer`` so an epoch writes whole chunks."""
        if self.exists():
            old = dict(self._root("r").attrs)
            for key in ("tap", "exclude_bias"):
                if key in old and old[key] != attrs[key]:
                    raise StoreError(self.path, f"was written with {key}={old[key]!r}, this run "
                                     f"uses {attrs[key]!r}; use another --out")
            if old.get("probe_sha256") != attrs["probe_sha256"] and not force:
                raise StoreError(self.path, "was written with another probe set (sha256 "
                                 f"{str(old.get('probe_sha256'))[:12]}…, this one "
                                 f"{attrs['probe_sha256'][:12]}…); results would not be "
                                 "comparable; use another --out or --force")
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(self.path, f"cannot be created: {exc}") from exc
        root = self._root("w-")
        root.attrs.update({**attrs, "runs": "{}", "sources": "{}"})
        mk = self._make
        lc = max(1, int(layer_chunk))
        mk(root, "run", (0,), str, ("run",), "", (64,))
        mk(root, "epoch", (0,), "int64", ("epoch",), _EPOCH_FILL, (1024,))
        mk(root, "layer", (0,), str, ("layer",), "", (_LAYER_CHUNK,))
        mk(root, "layer_kind", (0,), str, ("layer",), "", (_LAYER_CHUNK,))
        for name in ("channels", "locations", "depth"):
            mk(root, name, (0,), "int64", ("layer",), -1, (_LAYER_CHUNK,))
        for name, values in (("quantile", np.array(QUANTILES)),
                             ("nas_bin", (NAS_BINS[:-1] + NAS_BINS[1:]) / 2),
                             ("corr_bin", (CORR_BINS[:-1] + CORR_BINS[1:]) / 2)):
            mk(root, name, values.shape, "float64", (name,), np.nan, values.shape)[:] = values
        mk(root, "probed", (0, 0), "int8", ("run", "epoch"), 0, (1, 1))
        lay = ("run", "epoch", "layer")
        for name in SCALARS:
            mk(root, name, (0, 0, 0), "float64", lay, np.nan, (1, 1, lc), _LAYER_COORDS)
        mk(root, "nas_quantile", (0, 0, 0, 5), "float64", lay + ("quantile",), np.nan, (1, 1, lc, 5), _LAYER_COORDS)
        mk(root, "nas_hist", (0, 0, 0, 100), "int64", lay + ("nas_bin",), 0, (1, 1, lc, 100), _LAYER_COORDS)
        mk(root, "corr_hist", (0, 0, 0, 200), "int64", lay + ("corr_bin",), 0, (1, 1, lc, 200), _LAYER_COORDS)
        for name in ("loss", "accuracy"):
            mk(root, name, (0, 0), "float64", ("run", "epoch"), np.nan, (1, 1))
        root.create_group("heatmaps")
        self._consolidate()

    def _consolidate(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "consolidated metadata is not part of zarr v3"
            zarr.consolidate_metadata(str(self.path))

    @staticmethod
    def _make(group, name, shape, dtype, dims, fill, chunks, coords=None):
        attrs = {"coordinates": coords} if coords else {}
        return group.create_array(name, shape=shape, dtype=dtype, dimension_names=dims,
                                  fill_value=fill, chunks=chunks, attributes=attrs)

    # -- reserving slots (single writer) ---------------------------------------------------
    def reserve(self, run: str, epochs: list[int], layers: list[LayerInfo], keep_images: int,
                provenance: dict) -> tuple[int, dict[int, int], set[int]]:
        """Add ``run``, ``epochs`` and ``layers`` where missing; returns ``(run_index,
        {epoch: epoch_index}, epochs already probed for this run)``. ``provenance`` is stored
        under the run in the ``runs`` attribute."""
        self._handles.clear()
        root = self._root()
        runs = list(root["run"][:])
        if run not in runs:
            runs.append(run)
        run_i = runs.index(run)
        ep = list(root["epoch"][:])
        for e in epochs:
            if e not in ep:
                free = [i for i, v in enumerate(ep) if v == _EPOCH_FILL]
                if free:
                    ep[free[0]] = e
                else:
                    ep.append(e)
        names = list(root["layer"][:])
        new_layers = [layer for layer in layers if layer.name not in names]
        n_run, n_ep, n_lay = len(runs), len(ep), len(names) + len(new_layers)
        for arr in self._arrays(root):
            dims = arr.metadata.dimension_names
            shape = tuple({"run": n_run, "epoch": n_ep, "layer": n_lay}.get(d, s)
                          for d, s in zip(dims, arr.shape))
            if shape != arr.shape:
                arr.resize(shape)
        root["run"][:] = np.array(runs, dtype=object)
        root["epoch"][:] = np.array(ep, dtype=np.int64)
        if new_layers:
            sl = slice(len(names), n_lay)
            root["layer"][sl] = np.array([layer.name for layer in new_layers], dtype=object)
            root["layer_kind"][sl] = np.array([layer.kind for layer in new_layers], dtype=object)
            root["channels"][sl] = [layer.channels for layer in new_layers]
            root["locations"][sl] = [layer.locations for layer in new_layers]
            root["depth"][sl] = [layer.depth for layer in new_layers]
        heat = root["heatmaps"]
        k = int(root.attrs.get("keep_images", keep_images))
        root.attrs["keep_images"] = k
        for layer in layers:
            g = group_name(layer.name)
            if g in heat:
                continue
            grp = heat.create_group(g, attributes={"layer": layer.name})
            sd = _spatial_dims(len(layer.spatial))
            self._make(grp, "nas_map", (n_run, n_ep, *layer.spatial), "float32",
                       ("run", "epoch", *sd), np.nan, (1, 1, *layer.spatial))
            self._make(grp, "nas_image_map", (n_run, n_ep, k, *layer.spatial), "float32",
                       ("run", "epoch", "image", *sd), np.nan, (1, 1, k, *layer.spatial))
        allruns = json.loads(root.attrs.get("runs", "{}"))
        allruns[run] = provenance
        root.attrs["runs"] = json.dumps(allruns)
        root.attrs["sources"] = json.dumps({r: p.get("source") for r, p in allruns.items()})
        fws = sorted({p.get("framework", "") for p in allruns.values()} - {""})
        root.attrs["framework"] = ",".join(fws)
        self._consolidate()
        probed = root["probed"][run_i, :] if n_ep else np.zeros(0)
        done = {e for i, e in enumerate(ep) if probed[i]}
        return run_i, {e: ep.index(e) for e in epochs}, done

    @staticmethod
    def _arrays(root):
        for _, arr in root.arrays():
            yield arr
        for _, grp in root["heatmaps"].groups():
            for _, arr in grp.arrays():
                yield arr

    # -- writing one (run, epoch): touches only its own chunks --------------------------------
    def write_epoch(self, run_i: int, epoch_i: int, summaries: dict[str, dict],
                    metrics: dict[str, float] | None = None,
                    corr: dict[str, np.ndarray] | None = None) -> None:
        """Write one epoch's results and then its commit flag.

        Args:
            summaries: layer → :meth:`nasprobe.aggregate.LayerStats.summary` dict.
            metrics: ``loss``/``accuracy`` (and other run × epoch variables) for this epoch.
            corr: layer → ``corr_hist`` counts (200,).
        """
        a = self._array
        if "layers" not in self._handles:
            self._handles["layers"] = list(a("layer")[:])  # type: ignore[assignment]
        names = self._handles["layers"]
        idx = [names.index(layer) for layer in summaries]
        for name in SCALARS:
            a(name).oindex[run_i, epoch_i, idx] = [summaries[layer][name] for layer in summaries]
        a("nas_quantile").oindex[run_i, epoch_i, idx, :] = np.stack([s["nas_quantile"] for s in summaries.values()])
        a("nas_hist").oindex[run_i, epoch_i, idx, :] = np.stack([s["nas_hist"] for s in summaries.values()])
        if corr:
            cidx = [names.index(layer) for layer in corr]
            a("corr_hist").oindex[run_i, epoch_i, cidx, :] = np.stack(list(corr.values()))
        for layer, s in summaries.items():
            g = f"heatmaps/{group_name(layer)}"
            a(f"{g}/nas_map")[run_i, epoch_i] = s["nas_map"]
            img_arr = a(f"{g}/nas_image_map")
            img = s["nas_image_map"][: img_arr.shape[2]]
            if len(img):
                img_arr[run_i, epoch_i, : len(img)] = img
        for name, value in (metrics or {}).items():
            try:
                arr = a(name)
            except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError):
                arr = self._metric_array(self._root(), name)
            arr[run_i, epoch_i] = value
        a("probed")[run_i, epoch_i] = 1

    def _metric_array(self, root, name):
        if name not in root:
            self._make(root, name, root["probed"].shape, "float64", ("run", "epoch"), np.nan, (1, 1))
            self._consolidate()
        return root[name]

    def write_metrics(self, run: str, metrics: dict[str, dict[int, float]]) -> int:
        """Write imported per-epoch metrics (name → {epoch: value}) for the epochs of ``run``
        in the store; returns how many values were written."""
        root = self._root()
        runs = list(root["run"][:])
        if run not in runs:
            raise StoreError(self.path, f"has no run {run!r} (runs: {', '.join(runs) or 'none'})")
        run_i, ep = runs.index(run), list(root["epoch"][:])
        for name in metrics:
            _check_metric_name(self.path, root, name)
        n = 0
        for name, values in metrics.items():
            arr = self._metric_array(root, name)
            for epoch, value in values.items():
                if epoch in ep:
                    arr[run_i, ep.index(epoch)] = value
                    n += 1
        return n


def _check_metric_name(path: Path, root, name: str) -> None:
    """Refuse a metric name that is a path or one of the store's own (non-metric) members
    (``nasprobe.training_logs.store_metric_names`` renames log columns to pass this)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or name == "zarr.json":
        raise StoreError(path, f"metric name {name!r} is not a plain name; refused")
    if name in root:
        member = root[name]
        dims = tuple(getattr(getattr(member, "metadata", None), "dimension_names", None) or ())
        if name == "probed" or dims != ("run", "epoch"):
            raise StoreError(path, f"metric name {name!r} is one of the store's own variables; "
                                   "refused (import it under another name)")


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


def open_store(path: str | os.PathLike) -> xr.DataTree:
    """Open a store as an ``xarray.DataTree``: epochs sorted, only committed (run, epoch) values.

    The root holds ``nas_*`` (run, epoch, layer[, quantile|nas_bin]), ``corr_hist``, ``loss``,
    ``accuracy`` and ``probed``; ``heatmaps/<layer>`` holds ``nas_map`` and ``nas_image_map``.
    """
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(path, "is not a nasprobe store (no zarr.json)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = xr.open_datatree(str(path), engine="zarr")
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
