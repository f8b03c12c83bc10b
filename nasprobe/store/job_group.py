"""A job group's arrays: built once when a job opens a run, then written one epoch's row at a
time in memory (its chunks are uploaded by :class:`nasprobe.store.writer.RunWriter`).

The layout (one chunk per epoch, so that jobs never write the same chunk) is in
docs/store-design.md.
"""

from __future__ import annotations

import numpy as np
import zarr
import zarr.storage
from zarr.buffer import cpu

from .layout import SCALARS, LayerInfo, group_name, spatial_dims

__all__ = ["build_job_group", "make_array", "open_template", "encode_rows"]

_LAYER_COORDS = "layer_kind nonlinearity channels locations depth"


def build_job_group(store, epochs: list[int], layers: list[LayerInfo], keep_images: int,
                 attrs: dict) -> zarr.Group:
    """A job group for ``epochs`` × ``layers`` in ``store``: coordinates written, variables
    empty, chunked one epoch per chunk (see docs/store-design.md)."""
    grp = zarr.open_group(store, mode="w", zarr_format=3, attributes=attrs)
    n, k = len(epochs), int(keep_images)
    lc = max(1, len(layers))
    make_array(grp, "epoch", (n,), "int64", ("epoch",), -(2**62), (max(n, 1),))[:] = \
        np.asarray(epochs, np.int64)
    make_array(grp, "layer", (len(layers),), str, ("layer",), "", (lc,))[:] = \
        np.array([x.name for x in layers], dtype=object)
    # unit activity is recorded when the layers' nonlinearities are known (not for copies of
    # stores written before it was measured: there it stays absent, see nasprobe.migrate)
    activity = any(x.nonlinearity is not None for x in layers)
    for name in ("layer_kind", "nonlinearity")[: 1 + activity]:
        make_array(grp, name, (len(layers),), str, ("layer",), "", (lc,))[:] = \
            np.array([getattr(x, name.replace("layer_", "")) or "" for x in layers], dtype=object)
    for name in ("channels", "locations", "depth"):
        make_array(grp, name, (len(layers),), "int64", ("layer",), -1, (lc,))[:] = \
            np.array([getattr(x, name) for x in layers], np.int64)
    lay = ("epoch", "layer")
    coords = _LAYER_COORDS if activity else _LAYER_COORDS.replace(" nonlinearity", "")
    for name in (*SCALARS, "dead_fraction")[: len(SCALARS) + activity]:
        make_array(grp, name, (n, len(layers)), "float64", lay, np.nan, (1, lc), coords)
    for name, extra, dtype, fill in (("nas_quantile", ("quantile", 5), "float64", np.nan),
                                      ("nas_hist", ("nas_bin", 100), "int64", 0),
                                      ("corr_hist", ("corr_bin", 200), "int64", 0)):
        make_array(grp, name, (n, len(layers), extra[1]), dtype, lay + (extra[0],), fill,
              (1, lc, extra[1]), coords)
    for name in ("loss", "accuracy"):
        make_array(grp, name, (n,), "float64", ("epoch",), np.nan, (1,))
    heat = grp.create_group("heatmaps")
    for layer in layers:
        g = heat.create_group(group_name(layer.name), attributes={"layer": layer.name})
        sd, sp = spatial_dims(len(layer.spatial)), tuple(layer.spatial)
        make_array(g, "nas_map", (n, *sp), "float32", ("epoch", *sd), np.nan, (1, *sp))
        make_array(g, "nas_image_map", (n, k, *sp), "float32", ("epoch", "image", *sd), np.nan,
              (1, max(k, 1), *sp))
        if layer.nonlinearity:  # a layer that reaches no nonlinearity has no unit activity
            make_array(g, "unit_activity", (n, layer.channels), "float64", ("epoch", "channel"),
                  np.nan, (1, max(layer.channels, 1)))
    return grp


def make_array(group, name, shape, dtype, dims, fill, chunks, coords=None):
    """A new array ``name`` of ``group`` (a group just opened with mode="w") with its
    dimension names, fill value, chunks and, for variables, the coordinates of its layers."""
    # Every group passed here was just opened with mode="w": nothing to overwrite, and asking
    # zarr to look for an old array costs a round trip through its event loop per array.
    attrs = {"coordinates": coords} if coords else {}
    return group.create_array(name, shape=shape, dtype=dtype, dimension_names=dims,
                              fill_value=fill, chunks=chunks, attributes=attrs)


def encode_rows(arrays: dict[str, zarr.Array], i: int, rows: dict[str, tuple]) -> None:
    """Write row ``i`` (one epoch's slot) of several in-memory arrays: ``rows`` maps an array
    path to ``(columns, values)``, ``columns`` None for the whole row, a slice or a list of
    column indices for part of it."""
    for name, (cols, values) in rows.items():
        if cols is None:
            arrays[name][i] = values
        elif isinstance(cols, slice):
            arrays[name][i, cols] = values
        else:
            arrays[name].oindex[i, cols] = values


def open_template(meta: dict[str, bytes]) -> tuple[dict[str, zarr.Array], dict]:
    """An in-memory job group from its metadata documents (path → bytes): its arrays by path
    (``nas_median``, ``heatmaps/<group>/nas_map``, ...), each opened once (opening one costs
    a round trip through zarr's event loop, and an epoch writes a dozen or more), and the dict
    their chunks are written into."""
    mem = {name: cpu.Buffer.from_bytes(data) for name, data in meta.items()}
    grp = zarr.open_group(zarr.storage.MemoryStore(mem), mode="r+", zarr_format=3,
                          use_consolidated=False)
    arrays = dict(grp.arrays())
    for name, sub in grp["heatmaps"].groups():
        arrays.update({f"heatmaps/{name}/{a}": arr for a, arr in sub.arrays()})
    return arrays, mem
