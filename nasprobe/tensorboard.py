"""A store → TensorBoard event files (``nasprobe tensorboard STORE LOGDIR``).

One TensorBoard run folder per store run, ``LOGDIR/<run>`` (a ``/`` or ``\\`` in a run name
becomes ``_``), each holding one event file named ``events.out.tfevents.*.nasprobe`` with, at
``step = epoch`` (the untrained model is step ``-1``):

* scalars ``nas_median/<layer>`` and ``nas_mean/<layer>`` (NAS, dimensionless in [0, 1]);
* scalars ``loss``, ``accuracy`` and, when the store has them, ``train_loss``,
  ``train_accuracy``;
* images ``nas_heatmap/<layer>``: the layer's mean NAS map (``heatmaps/<layer>/nas_map``)
  coloured with viridis on the fixed range [0, 1] (NaN locations transparent). A map of shape
  ``(y, x)`` is an ``y × x`` image, a ``(t,)`` map a ``1 × t`` strip, a map without spatial
  dims one pixel, a map with more spatial dims (``(z, y, x)`` of a Conv3d) its ``y × x``
  slices side by side, in order; every image is enlarged by an integer factor ``k`` (nearest neighbour,
  ``k = max(1, 128 // longest side)``) so that TensorBoard shows it at a readable size.

NaN values (epochs a run does not have) are not written. Only nasprobe's own event files (the
``.nasprobe`` suffix) are ever replaced (``overwrite``); other event files in the folder, such
as the training's own logs, are left as they are. Event files are written with
TensorBoard's own ``EventFileWriter`` and protocol buffers (no TensorFlow); this needs the
``tensorboard`` extra: ``pip install 'nasprobe[tensorboard]'``.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import NasprobeError

__all__ = ["LogdirError", "write_tensorboard", "heatmap_rgba", "heatmap_scale", "run_folder",
           "SCALAR_VARIABLES", "LAYER_SCALARS"]

#: Per-layer scalars, written as ``<name>/<layer>``.
LAYER_SCALARS = ("nas_median", "nas_mean")
#: Per-run scalars, written under their own name when the store has them.
SCALAR_VARIABLES = ("loss", "accuracy", "train_loss", "train_accuracy")
TB_PREFIX = "events.out.tfevents"
#: Suffix of the event files nasprobe writes: the only ones ``overwrite`` removes.
TB_SUFFIX = ".nasprobe"


class LogdirError(NasprobeError):
    """A TensorBoard log folder that cannot be written."""


def _tb():
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise LogdirError("writing TensorBoard event files needs the 'tensorboard' extra: "
                          "pip install 'nasprobe[tensorboard]'") from None
    return event_pb2, summary_pb2, EventFileWriter


def run_folder(run: str) -> str:
    """Folder name of a store run inside LOGDIR (path separators replaced by ``_``)."""
    name = str(run).replace("/", "_").replace("\\", "_").strip()
    return name if name not in ("", ".", "..") else f"run_{name.strip('.') or 'unnamed'}"


def heatmap_scale(shape: tuple[int, ...]) -> int:
    """Integer enlargement factor for a heatmap of ``shape`` (rows, cols): the longest side
    becomes at least 128 pixels (or stays as it is when already longer)."""
    return max(1, 128 // max(shape))


def heatmap_rgba(nas_map: np.ndarray) -> np.ndarray:
    """Viridis colours of a NAS map on [0, 1], enlarged by :func:`heatmap_scale`.

    nas_map: array of shape ``(y, x)``, ``(t,)``, ``()`` or ``(..., y, x)`` (NAS, NaN = no
    value); with more than 2 dims the ``y × x`` slices are placed side by side (C order).
    Returns uint8 RGBA of shape ``(rows * k, cols * k, 4)``; NaN pixels are transparent.
    """
    import matplotlib

    values = np.asarray(nas_map, dtype=np.float64)
    values = values.reshape((1,) * (2 - values.ndim) + values.shape) if values.ndim < 2 else values
    if values.ndim > 2:  # (..., y, x) → (y, n * x): the slices in a row
        rows, cols = values.shape[-2:]
        values = values.reshape(-1, rows, cols).transpose(1, 0, 2).reshape(rows, -1)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    rgba = cmap(np.ma.masked_invalid(np.clip(values, 0.0, 1.0)), bytes=True)
    k = heatmap_scale(values.shape)
    return np.repeat(np.repeat(rgba, k, axis=0), k, axis=1)


def _png(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


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
        old = sorted(folder.glob(f"{TB_PREFIX}*{TB_SUFFIX}")) if folder.is_dir() else []
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

    :param store: a store path, or its ``xarray.DataTree`` / root ``xarray.Dataset``.
    :param logdir: the TensorBoard log folder; run ``r`` goes to ``logdir/<r>``.
    :param overwrite: replace the event files an earlier export left in those folders
        (otherwise that is an error: TensorBoard would show both); event files nasprobe did
        not write are kept.
    :param runs: the runs to write (default: all).
    :returns: ``{run: folder}`` of the folders written.
    """
    from .report import as_tree

    event_pb2, summary_pb2, EventFileWriter = _tb()
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
        writer = EventFileWriter(str(folder), filename_suffix=TB_SUFFIX)
        try:
            for epoch in ds["epoch"].values:
                values = _epoch_values(summary_pb2, ds.sel(run=run, epoch=epoch),
                                       {k: m.sel(run=run, epoch=epoch).values
                                        for k, m in heatmaps.items()})
                if values:
                    writer.add_event(event_pb2.Event(wall_time=wall, step=int(epoch),
                                                     summary=summary_pb2.Summary(value=values)))
        finally:
            writer.close()
    return folders


def _epoch_values(summary_pb2, ds: xr.Dataset, maps: dict[str, np.ndarray]) -> list:
    """Summary values of one (run, epoch): ``ds`` without run/epoch dims, ``maps`` per layer."""
    values = []

    def scalar(tag: str, value) -> None:
        if np.isfinite(value):
            values.append(summary_pb2.Summary.Value(tag=tag, simple_value=float(value)))

    for var in LAYER_SCALARS:
        if var in ds:
            for layer, v in zip(ds["layer"].values, ds[var].transpose("layer").values):
                scalar(f"{var}/{layer}", v)
    for var in SCALAR_VARIABLES:
        if var in ds:
            scalar(var, float(ds[var]))
    for layer, nas_map in maps.items():
        if np.isfinite(nas_map).any():
            rgba = heatmap_rgba(nas_map)
            image = summary_pb2.Summary.Image(height=rgba.shape[0], width=rgba.shape[1],
                                              colorspace=4, encoded_image_string=_png(rgba))
            values.append(summary_pb2.Summary.Value(tag=f"nas_heatmap/{layer}", image=image))
    return values
