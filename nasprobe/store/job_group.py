"""A job group's files: built once when a job opens a run (:func:`build_job_group`), then
written one epoch's row at a time (:func:`nasprobe.store.chunks.encode_rows`, uploaded by
:class:`nasprobe.store.writer.RunWriter`).

The layout (one chunk per epoch, or per block of epochs for a job that writes its epochs
itself, one after another; jobs never write the same chunk) is in docs/store-design.md.
"""

from __future__ import annotations

import numpy as np

from .chunks import array_doc, whole_array
from .layout import SCALARS, LayerInfo, group_json, group_name, spatial_dims

__all__ = ["build_job_group", "BLOCK_ROW_BYTES"]

_LAYER_COORDS = "layer_kind nonlinearity channels locations depth"
#: The largest epoch of one variable (bytes before compression) that shares its chunk with
#: other epochs; a larger one (per-image maps of a large layer) has a chunk per epoch. A chunk
#: still missing epochs is written again with each new one: this bounds what that costs.
BLOCK_ROW_BYTES = 64 << 10


def build_job_group(epochs: list[int], layers: list[LayerInfo], keep_images: int,
                    attrs: dict, epochs_per_chunk: int = 1) -> dict[str, bytes]:
    """The files of a job group for ``epochs`` × ``layers`` (path relative to the group →
    bytes): coordinates written, variables empty, every document and chunk made by
    :mod:`nasprobe.store.chunks`.

    Variables are chunked ``epochs_per_chunk`` epochs per chunk (at most the number of epochs;
    one epoch per chunk where one epoch of the variable exceeds :data:`BLOCK_ROW_BYTES`); 1,
    one epoch per chunk throughout, lets several processes write one job's epochs (see
    docs/store-design.md).
    """
    n, k = len(epochs), int(keep_images)
    lc = max(1, len(layers))
    files = {"zarr.json": group_json(attrs), "heatmaps/zarr.json": group_json({})}

    def add(path, shape, dtype, dims, fill, chunks, coords=None):
        row = int(np.prod(chunks[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        block = max(1, min(int(epochs_per_chunk), n)) if row <= BLOCK_ROW_BYTES else 1
        files[f"{path}/zarr.json"] = array_doc(shape, dtype, dims, fill, (block, *chunks[1:]),
                                               {"coordinates": coords} if coords else None)

    files.update(whole_array("epoch", np.asarray(epochs, np.int64), ("epoch",), -(2**62),
                             chunk=max(n, 1)))
    files.update(whole_array("layer", np.array([x.name for x in layers], dtype=object),
                             ("layer",), "", chunk=lc))
    # unit activity is recorded when the layers' nonlinearities are known (not for copies of
    # stores written before it was measured: there it stays absent, see nasprobe.migrate)
    activity = any(x.nonlinearity is not None for x in layers)
    for name in ("layer_kind", "nonlinearity")[: 1 + activity]:
        files.update(whole_array(name, np.array(
            [getattr(x, name.replace("layer_", "")) or "" for x in layers], dtype=object),
            ("layer",), "", chunk=lc))
    for name in ("channels", "locations", "depth"):
        files.update(whole_array(name, np.array([getattr(x, name) for x in layers], np.int64),
                                 ("layer",), -1, chunk=lc))
    lay = ("epoch", "layer")
    coords = _LAYER_COORDS if activity else _LAYER_COORDS.replace(" nonlinearity", "")
    for name in (*SCALARS, "dead_fraction")[: len(SCALARS) + activity]:
        add(name, (n, len(layers)), "float64", lay, np.nan, (1, lc), coords)
    for name, extra, dtype, fill in (("nas_quantile", ("quantile", 5), "float64", np.nan),
                                      ("nas_hist", ("nas_bin", 100), "int64", 0),
                                      ("corr_hist", ("corr_bin", 200), "int64", 0)):
        add(name, (n, len(layers), extra[1]), dtype, lay + (extra[0],), fill,
            (1, lc, extra[1]), coords)
    for name in ("loss", "accuracy"):
        add(name, (n,), "float64", ("epoch",), np.nan, (1,))
    for layer in layers:
        g = f"heatmaps/{group_name(layer.name)}"
        files[f"{g}/zarr.json"] = group_json({"layer": layer.name})
        sd, sp = spatial_dims(len(layer.spatial)), tuple(layer.spatial)
        add(f"{g}/nas_map", (n, *sp), "float32", ("epoch", *sd), np.nan, (1, *sp))
        add(f"{g}/nas_image_map", (n, k, *sp), "float32", ("epoch", "image", *sd), np.nan,
            (1, max(k, 1), *sp))
        if layer.nonlinearity:  # a layer that reaches no nonlinearity has no unit activity
            add(f"{g}/unit_activity", (n, layer.channels), "float64", ("epoch", "channel"),
                np.nan, (1, max(layer.channels, 1)))
    return files
