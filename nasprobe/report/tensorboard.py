r"""A store → TensorBoard event files (``nasprobe tensorboard STORE LOGDIR``).

One TensorBoard run folder per store run, ``LOGDIR/<run>`` (a ``/`` or ``\`` in a run name
becomes ``_``), each holding one event file named ``events.out.tfevents.*.nasprobe`` with, at
``step = epoch`` (the untrained model is step ``-1``):

* scalars ``nas_median/<layer>`` and ``nas_mean/<layer>`` (NAS, dimensionless in [0, 1]);
* scalars ``loss``, ``accuracy`` and, when the store has them, ``train_loss``,
  ``train_accuracy``;
* images ``nas_heatmap/<layer>``: the layer's mean NAS map (``heatmaps/<layer>/nas_map``) as a
  heatmap (viridis on [0, 1]; see :func:`nasprobe.report.event_writer.heatmap_rgba`).

NaN values (epochs a run does not have) are not written. Only nasprobe's own event files (the
``.nasprobe`` suffix) are ever replaced (``overwrite``); other event files in the folder, such
as the training's own logs, are left as they are. Event files are written by
:class:`nasprobe.report.event_writer.EventWriter` (no TensorFlow); this needs the ``tensorboard``
extra: ``pip install 'nasprobe[tensorboard]'``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from nasprobe.errors import NasprobeError

from .event_writer import (
    EVENT_FILE_PREFIX,
    EventWriter,
    LogdirError,
    heatmap_rgba,
    tensorboard_protos,
)

__all__ = ["write_tensorboard", "run_folder",
           "SCALAR_VARIABLES", "LAYER_SCALARS", "TB_SUFFIX"]

#: Per-layer scalars, written as ``<name>/<layer>``.
LAYER_SCALARS = ("nas_median", "nas_mean")
#: Per-run scalars, written under their own name when the store has them.
SCALAR_VARIABLES = ("loss", "accuracy", "train_loss", "train_accuracy")
#: Suffix of the event files nasprobe writes: the only ones ``overwrite`` removes.
TB_SUFFIX = ".nasprobe"


def run_folder(run: str) -> str:
    """Folder name of a store run inside LOGDIR (path separators replaced by ``_``)."""
    name = str(run).replace("/", "_").replace("\\", "_").strip()
    return name if name not in ("", ".", "..") else f"run_{name.strip('.') or 'unnamed'}"


def _heatmap_layers(tree: xr.DataTree) -> dict[str, xr.DataArray]:
    """{layer: nas_map (run, epoch, *spatial)} of the ``heatmaps/<layer>`` groups."""
    if "heatmaps" not in tree.children:
        return {}
    out = {}
    for name, node in tree["heatmaps"].children.items():
        if "nas_map" in node.dataset.data_vars:
            out[str(node.attrs.get("layer", name))] = node.dataset["nas_map"]
    return out


def _prepare(logdir: Path, runs, overwrite: bool) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for run in runs:
        folder = logdir / run_folder(run)
        if folder in folders.values():
            other = next(r for r, f in folders.items() if f == folder)
            raise LogdirError(f"{logdir}: runs {other!r} and {run!r} would share the folder "
                              f"{folder.name!r}")
        folders[str(run)] = folder
    for folder in folders.values():
        old = sorted(folder.glob(f"{EVENT_FILE_PREFIX}*{TB_SUFFIX}")) if folder.is_dir() else []
        if old and not overwrite:
            raise LogdirError(f"{folder}: already holds nasprobe's TensorBoard event files; "
                              "pass --overwrite to replace them (other event files are "
                              "never touched)")
        for path in old:
            path.unlink()
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def write_tensorboard(store, logdir: str | os.PathLike, *, overwrite: bool = False,
                      runs=None) -> dict[str, Path]:
    """Write a store's NAS, loss/accuracy and heatmaps as TensorBoard event files.

    Args:
        store: a store path, or its ``xarray.DataTree`` / root ``xarray.Dataset``.
        logdir: the TensorBoard log folder; run ``r`` goes to ``logdir/<r>``.
        overwrite: replace the event files an earlier export left in those folders
            (otherwise that is an error: TensorBoard would show both); event files nasprobe did
            not write are kept.
        runs: the runs to write (default: all).

    Returns:
        ``{run: folder}`` of the folders written.
    """
    from .html import as_tree

    tensorboard_protos()  # fail before touching LOGDIR when tensorboard is missing
    tree = as_tree(store)
    ds = tree.to_dataset(inherit=True)
    known = [str(r) for r in ds["run"].values]
    runs = known if runs is None else [str(r) for r in runs]
    unknown = [r for r in runs if r not in known]
    if unknown:
        raise NasprobeError(f"no run {', '.join(map(repr, unknown))} in the store "
                            f"(runs: {', '.join(known) or 'none'})")
    folders = _prepare(Path(logdir), runs, overwrite)
    heatmaps = _heatmap_layers(tree)
    wall = time.time()
    for run, folder in folders.items():
        with EventWriter(folder, filename_suffix=TB_SUFFIX) as writer:
            for epoch in ds["epoch"].values:
                scalars, images = _epoch_values(ds.sel(run=run, epoch=epoch),
                                                {k: m.sel(run=run, epoch=epoch).values
                                                 for k, m in heatmaps.items()})
                writer.write(int(epoch), scalars, images, wall_time=wall)
    return folders


def _epoch_values(ds: xr.Dataset, maps: dict[str, np.ndarray]
                  ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Scalars and heatmap images of one (run, epoch): ``ds`` without run/epoch dims, ``maps``
    per layer (the writer leaves out non-finite scalars; all-NaN maps are left out here)."""
    scalars: dict[str, float] = {}
    for var in LAYER_SCALARS:
        if var in ds:
            for layer, v in zip(ds["layer"].values, ds[var].transpose("layer").values):
                scalars[f"{var}/{layer}"] = float(v)
    for var in SCALAR_VARIABLES:
        if var in ds:
            scalars[var] = float(ds[var])
    images = {f"nas_heatmap/{layer}": heatmap_rgba(nas_map) for layer, nas_map in maps.items()
              if np.isfinite(nas_map).any()}
    return scalars, images
