"""What a figure shows: the selected runs and layers, runs grouped into configurations.

A *group* is a set of runs drawn as one curve with a min/median/max band (e.g. three seeds of
one configuration). Groups come from, in this order: the ``groups`` argument
(``{"vanilla": ["vanilla-s0", "vanilla-s1"], ...}``); a coordinate named ``config`` on the
``run`` dimension; otherwise all selected runs form one group named after them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from nasprobe.errors import NasprobeError
from nasprobe.measures.onsets import loss_onset
from nasprobe.store.layout import group_name

__all__ = ["Selection", "select", "heatmap_maps", "on_patch_grid"]


@dataclass
class Selection:
    """The data of one figure.

    ds: root dataset restricted to the selected runs and layers (layers in graph order).
    tree: the DataTree it came from, or None for a plain Dataset (no heatmap groups).
    groups: ordered mapping group name -> list of run names (each non-empty).
    """

    ds: xr.Dataset
    tree: xr.DataTree | None
    groups: dict[str, list[str]]
    _bands: dict = field(default_factory=dict, repr=False)

    @property
    def epochs(self) -> np.ndarray:
        """Epochs, int array (n_epochs,), ascending (-1 = untrained)."""
        return np.asarray(self.ds["epoch"].values)

    @property
    def epoch_label(self) -> str:
        """What the epoch axis counts, for axis labels: ``"epoch"``, or ``"step"`` for runs of
        training steps (Hugging Face Trainer folders; the store's ``epoch_unit``)."""
        return str(self.ds.attrs.get("epoch_unit", "epoch"))

    def patch_grid(self, runs) -> tuple[int, int] | None:
        """The ``(rows, columns)`` of patches of a vision transformer, when every one of
        ``runs`` records the same one (the ``patch_grid`` of their provenance), else None."""
        try:
            prov = json.loads(self.ds.attrs.get("runs", "{}"))
        except ValueError:
            return None
        grids = {tuple(prov.get(r, {}).get("patch_grid") or ()) for r in runs}
        grid = grids.pop() if len(grids) == 1 else ()
        return (int(grid[0]), int(grid[1])) if len(grid) == 2 else None

    @property
    def layers(self) -> list[str]:
        """Selected layer names in graph (depth) order."""
        return [str(v) for v in self.ds["layer"].values]

    def band(self, var: str, group: str, layer: str | None = None):
        """Median, min and max over the group's runs of ``var`` (per epoch).

        Returns three float arrays of shape (n_epochs,), NaN where no run has a value.
        ``var`` has dims (run, epoch) without ``layer``, (run, epoch, layer) with it.
        """
        key = (var, group)
        if key not in self._bands:
            da = self.ds[var].sel(run=self.groups[group])
            dims = ("run", "epoch", "layer") if "layer" in da.dims else ("run", "epoch")
            v = np.asarray(da.transpose(*dims).values, dtype=float)
            v = v.reshape(v.shape[0], v.shape[1], -1)  # (run, epoch, layer or 1)
            has = np.isfinite(v).any(axis=0)
            med = np.full(v.shape[1:], np.nan)
            lo, hi = med.copy(), med.copy()
            if has.any():
                med[has] = np.nanmedian(v[:, has], axis=0)
                lo[has] = np.nanmin(v[:, has], axis=0)
                hi[has] = np.nanmax(v[:, has], axis=0)
            self._bands[key] = (med, lo, hi)
        j = 0 if layer is None else self.layers.index(layer)
        return tuple(a[:, j] for a in self._bands[key])

    def loss(self, group: str):
        """Median test loss over the group's runs, (n_epochs,) float, or None when the store
        has no ``loss`` or it is all NaN for this group."""
        if "loss" not in self.ds:
            return None
        med = self.band("loss", group)[0]
        return med if np.isfinite(med).any() else None

    def loss_onset(self, group: str) -> int | None:
        """Loss onset (epoch) of the group's median loss, see :func:`nasprobe.measures.onsets.loss_onset`."""
        loss = self.loss(group)
        return None if loss is None else loss_onset(loss, self.epochs)


def _as_list(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _select_layers(names: list[str], layers) -> list[str]:
    if layers is None:
        return names
    if isinstance(layers, str) and layers not in names:
        try:
            pattern = re.compile(layers)
        except re.error as exc:
            raise NasprobeError(f"--layers {layers!r}: not a valid regular expression "
                                f"({exc})") from None
        chosen = [n for n in names if pattern.search(n)]
    else:
        wanted = set(_as_list(layers))
        missing = wanted.difference(names)
        if missing:
            raise ValueError(f"unknown layers {sorted(missing)}; the store has {names}")
        chosen = [n for n in names if n in wanted]
    if not chosen:
        raise ValueError(f"no layer matches {layers!r}; the store has {names}")
    return chosen


def select(obj, runs=None, layers=None, groups=None) -> Selection:
    """Restrict a store to some runs and layers and group its runs.

    obj: an ``xarray.DataTree`` (a store) or ``xarray.Dataset`` (its root dataset).
    runs: run names (list or comma-separated string); default all (or all runs in ``groups``).
    layers: layer names (list), or a regular expression matched with ``re.search``; default
    all. Layers stay in graph order. groups: see the module docstring.
    """
    tree = obj if isinstance(obj, xr.DataTree) else None
    ds = obj.to_dataset() if tree is not None else obj
    all_runs = [str(r) for r in ds["run"].values]
    run_list = _as_list(runs)
    if run_list is None and groups:
        run_list = [r for members in groups.values() for r in _as_list(members)]
    if run_list is not None:
        missing = set(run_list).difference(all_runs)
        if missing:
            raise ValueError(f"unknown runs {sorted(missing)}; the store has {all_runs}")
        ds = ds.sel(run=[r for r in all_runs if r in set(run_list)])
    if "depth" in ds.coords:
        ds = ds.sortby("depth")
    ds = ds.sel(layer=_select_layers([str(v) for v in ds["layer"].values], layers))
    kept = [str(r) for r in ds["run"].values]
    if groups:
        grouped = {str(k): [r for r in _as_list(v) if r in kept] for k, v in groups.items()}
    elif "config" in ds.coords and ds["config"].dims == ("run",):
        grouped = {}
        for r, c in zip(kept, ds["config"].values):
            grouped.setdefault(str(c), []).append(r)
    else:
        grouped = {",".join(kept) if len(kept) <= 3 else f"{len(kept)} runs": kept}
    grouped = {k: v for k, v in grouped.items() if v}
    if not grouped:
        raise ValueError("no run selected")
    return Selection(ds=ds, tree=tree, groups=grouped)


def _heatmap_node(tree: xr.DataTree, layer: str):
    if "heatmaps" not in tree.children:
        return None
    hm = tree["heatmaps"]
    if group_name(layer) in hm.children:
        return hm[group_name(layer)]
    for child in hm.children.values():
        if child.attrs.get("layer") == layer:
            return child
    for name in (layer, layer.replace("/", "_")):  # stores written before group_name escaped
        if name in hm.children:
            return hm[name]
    return None


def on_patch_grid(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """One map of ``p + r*c`` tokens ``(T,)`` as an ``(r + 1, c + 1)`` image: patch ``(i, j)``
    at ``[1 + i, 1 + j]``, the ``p`` leading (class) tokens at ``[0, 0]`` and ``[0, 1]`` ...
    apart from the grid; NaN elsewhere."""
    r, c = grid
    p = tokens.size - r * c
    img = np.full((r + 1, c + 1), np.nan)
    img[1:, 1:] = tokens[p:].reshape(r, c)
    img[0, :p] = tokens[:p]
    return img


def heatmap_maps(sel: Selection, layer: str, runs: list[str], epochs) -> list[np.ndarray]:
    """Mean NAS maps of ``layer`` at each of ``epochs``, averaged over ``runs`` (NaN-aware).

    Returns one 2-D float array per epoch: (y, x) for 2-D layers, (1, t) for 1-D layers and (1, 1) for
    dense ones (3-D maps are flattened to (z*y, x)). A vision transformer's token layer (runs
    with a ``patch_grid`` of r x c, maps of p + r*c tokens, p <= 2 class/distillation tokens
    first) is laid out on its patch grid: ``(r + 1, c + 1)``, the patches at the lower right,
    the p leading tokens apart in the top row (left corner on), NaN between. Read from
    ``heatmaps/<group>/nas_map`` where the group is the layer name,
    :func:`nasprobe.store.layout.group_name` of it, or has a
    ``layer`` attribute equal to it; without one (a plain Dataset, or a store without maps) the
    layer's ``nas_mean`` is shown as a 1x1 cell. All-NaN where the epoch was not probed.
    """
    node = _heatmap_node(sel.tree, layer) if sel.tree is not None else None
    epochs = list(epochs)
    if node is not None and "nas_map" in node.ds:
        da = node.ds["nas_map"].sel(run=runs, epoch=epochs)
    else:
        da = sel.ds["nas_mean"].sel(run=runs, layer=layer, epoch=epochs)
    da = da.transpose("run", "epoch", ...)
    v = np.asarray(da.values, dtype=float)
    n = np.isfinite(v).sum(axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.where(n > 0, np.nansum(v, axis=0) / np.maximum(n, 1), np.nan)
    out = []
    grid = sel.patch_grid(runs)
    for m in mean:  # (*spatial) per epoch
        if m.ndim == 0:
            out.append(m.reshape(1, 1))
        elif m.ndim == 1 and grid and 0 < m.size - grid[0] * grid[1] <= 2:
            out.append(on_patch_grid(m, grid))
        elif m.ndim == 1:
            out.append(m[None, :])
        else:
            out.append(m.reshape(-1, m.shape[-1]))
    return out
