"""A job group's arrays: built once when a job opens a run, then written one epoch's row at a
time (its chunks are uploaded by :class:`nasprobe.store.writer.RunWriter`).

The layout (one chunk per epoch, so that jobs never write the same chunk) is in
docs/store-design.md. Every numeric array of a job group is made with the same two codecs,
little-endian bytes then zstd level 0 (:data:`ROW_CODECS`), so an epoch's row is one whole
chunk whose stored bytes :func:`encode_rows` makes directly with numcodecs' zstd, the
compressor zarr's own ``zstd`` codec calls: going through a zarr array instead costs a
round trip through zarr's event-loop thread for every array of every epoch (most of the time
of an epoch of a small model, measured in benchmarks/probe_speed.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.core.group import GroupMetadata
from zarr.core.metadata import ArrayV3Metadata

from nasprobe.errors import StoreError

from .layout import SCALARS, LayerInfo, group_name, spatial_dims

__all__ = ["build_job_group", "array_metadata", "make_array", "RowCodec", "row_codecs", "encode_rows",
           "ROW_CODECS", "CHUNK_KEYS"]

#: The codecs of every numeric job-group array, as zarr writes them into its metadata.
ROW_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}},
              {"name": "zstd", "configuration": {"level": 0, "checksum": False}}]

#: Chunk keys ``c.<epoch>.0``: an epoch's chunks land in folders that exist (with ``/``, every
#: epoch made a folder per array, a system call each, most of a small epoch's write time).
CHUNK_KEYS = {"name": "default", "separator": "."}

_LAYER_COORDS = "layer_kind nonlinearity channels locations depth"


def build_job_group(store, epochs: list[int], layers: list[LayerInfo], keep_images: int,
                    attrs: dict) -> zarr.Group:
    """A job group for ``epochs`` × ``layers`` in ``store``: coordinates written, variables
    empty, chunked one epoch per chunk (see docs/store-design.md).

    Every node is described first and zarr creates them all in one call
    (:func:`zarr.create_hierarchy`): one ``create_array`` each costs a round trip through
    zarr's event loop (0.16 s for a 54-layer model, 0.03 s as one batch)."""
    n, k = len(epochs), int(keep_images)
    lc = max(1, len(layers))
    nodes: dict = {"": GroupMetadata(attributes=attrs), "heatmaps": GroupMetadata()}
    data: dict[str, np.ndarray] = {}

    def add(path, shape, dtype, dims, fill, chunks, coords=None, values=None):
        nodes[path] = array_metadata(shape, dtype, dims, fill, chunks, coords)
        if values is not None:
            data[path] = values

    add("epoch", (n,), "int64", ("epoch",), -(2**62), (max(n, 1),),
        values=np.asarray(epochs, np.int64))
    add("layer", (len(layers),), str, ("layer",), "", (lc,),
        values=np.array([x.name for x in layers], dtype=object))
    # unit activity is recorded when the layers' nonlinearities are known (not for copies of
    # stores written before it was measured: there it stays absent, see nasprobe.migrate)
    activity = any(x.nonlinearity is not None for x in layers)
    for name in ("layer_kind", "nonlinearity")[: 1 + activity]:
        add(name, (len(layers),), str, ("layer",), "", (lc,), values=np.array(
            [getattr(x, name.replace("layer_", "")) or "" for x in layers], dtype=object))
    for name in ("channels", "locations", "depth"):
        add(name, (len(layers),), "int64", ("layer",), -1, (lc,),
            values=np.array([getattr(x, name) for x in layers], np.int64))
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
        nodes[g] = GroupMetadata(attributes={"layer": layer.name})
        sd, sp = spatial_dims(len(layer.spatial)), tuple(layer.spatial)
        add(f"{g}/nas_map", (n, *sp), "float32", ("epoch", *sd), np.nan, (1, *sp))
        add(f"{g}/nas_image_map", (n, k, *sp), "float32", ("epoch", "image", *sd), np.nan,
            (1, max(k, 1), *sp))
        if layer.nonlinearity:  # a layer that reaches no nonlinearity has no unit activity
            add(f"{g}/unit_activity", (n, layer.channels), "float64", ("epoch", "channel"),
                np.nan, (1, max(layer.channels, 1)))
    made = dict(zarr.create_hierarchy(store=store, nodes=nodes))
    for path, values in data.items():
        made[path][:] = values
    return made[""]


def _fill_json(fill):
    """A fill value as zarr v3 metadata spells it (NaN and infinities as strings)."""
    if isinstance(fill, float) and not np.isfinite(fill):
        return "NaN" if np.isnan(fill) else ("Infinity" if fill > 0 else "-Infinity")
    return fill


def array_metadata(shape, dtype, dims, fill, chunks, coords=None) -> ArrayV3Metadata:
    """The zarr v3 metadata of a job-group array: ``shape``, ``dtype`` (a numpy name, or
    ``str`` for text), dimension names ``dims``, fill value, regular ``chunks``, and for
    variables the coordinates of their layers; numeric arrays stored with :data:`ROW_CODECS`
    under :data:`CHUNK_KEYS`, text with zarr's ``vlen-utf8`` then the same zstd."""
    text = dtype is str
    codecs = ([{"name": "vlen-utf8", "configuration": {}}, ROW_CODECS[1]] if text
              else ROW_CODECS)
    return ArrayV3Metadata.from_dict({
        "zarr_format": 3, "node_type": "array", "shape": list(shape),
        "data_type": "string" if text else np.dtype(dtype).name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": CHUNK_KEYS["name"],
                               "configuration": {"separator": CHUNK_KEYS["separator"]}},
        "fill_value": _fill_json(fill), "codecs": codecs,
        "attributes": {"coordinates": coords} if coords else {},
        "dimension_names": list(dims), "storage_transformers": []})


def make_array(group, name, shape, dtype, dims, fill, chunks, coords=None):
    """A new array ``name`` of ``group`` (a group just opened with mode="w") with its
    dimension names, fill value, chunks and, for variables, the coordinates of its layers."""
    # Every group passed here was just opened with mode="w": nothing to overwrite, and asking
    # zarr to look for an old array costs a round trip through its event loop per array.
    attrs = {"coordinates": coords} if coords else {}
    codecs = {} if dtype is str else {"serializer": BytesCodec(endian="little"),
                                      "compressors": ZstdCodec(level=0, checksum=False)}
    return group.create_array(name, shape=shape, dtype=dtype, dimension_names=dims,
                              fill_value=fill, chunks=chunks, attributes=attrs,
                              chunk_key_encoding=CHUNK_KEYS, **codecs)


@dataclass(frozen=True)
class RowCodec:
    """How one epoch's row of a job-group array is stored: the row's shape (the array's
    shape without the epoch axis), the chunk's (the same, or larger where an axis is empty:
    ``nas_image_map`` with no kept image), the little-endian dtype, the fill value and the
    separator of the chunk keys."""

    row: tuple[int, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    fill: float | int
    separator: str = "/"

    def chunk(self, cols, values) -> np.ndarray:
        """The chunk of shape :attr:`shape` holding ``values`` for the whole row (``cols``
        None) or for the columns ``cols`` of it (a slice or a list of indices), and the fill
        value elsewhere."""
        if cols is None and self.row == self.shape:
            return np.ascontiguousarray(np.broadcast_to(np.asarray(values, self.dtype),
                                                        self.shape))
        out = np.full(self.shape, self.fill, self.dtype)
        row = out[tuple(slice(0, n) for n in self.row)]
        row[slice(None) if cols is None else cols] = values
        return out

    def empty(self, row: np.ndarray) -> bool:
        """True when every value of ``row`` is the fill value (zarr stores no such chunk)."""
        if isinstance(self.fill, float) and np.isnan(self.fill):
            return bool(np.isnan(row).all())
        return bool((row == self.fill).all())


_ZSTD = Zstd(level=0, checksum=False)



def row_codecs(meta: dict[str, bytes]) -> dict[str, RowCodec]:
    """The row codecs of a job group's per-epoch arrays from its metadata documents (path →
    ``zarr.json`` bytes), by array path (``nas_median``, ``heatmaps/<group>/nas_map``, ...).

    Raises:
        StoreError: an array chunked one epoch per chunk is stored with other codecs than
            :data:`ROW_CODECS` (a group this version did not make).
    """
    out = {}
    for key, raw in meta.items():
        doc = json.loads(raw)
        if doc.get("node_type") != "array" or not key.endswith("/zarr.json"):
            continue
        name = key[: -len("/zarr.json")]
        shape = tuple(doc["shape"])
        chunks = tuple(doc["chunk_grid"]["configuration"]["chunk_shape"])
        dims = doc.get("dimension_names") or ()
        if name == "epoch" or not dims or dims[0] != "epoch":
            continue  # the coordinates, written whole when the group is built
        if len(shape) != len(chunks) or chunks[0] != 1:
            raise StoreError(name, f"job-group array chunked {list(chunks)}: not one epoch "
                             "per chunk")
        if doc["codecs"] != ROW_CODECS or doc["data_type"] not in ("float32", "float64", "int64"):
            raise StoreError(name, f"job-group array stored as {doc['data_type']} with codecs "
                             f"{doc['codecs']}, which this version of nasprobe does not write")
        fill = doc["fill_value"]
        dtype = np.dtype(doc["data_type"]).newbyteorder("<")
        sep = doc["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        if doc["chunk_key_encoding"]["name"] != "default" or sep not in "/.":
            raise StoreError(name, f"job-group array with chunk keys {doc['chunk_key_encoding']}"
                             ", which this version of nasprobe does not write")
        out[name] = RowCodec(shape[1:], tuple(int(c) for c in chunks[1:]), dtype,
                             float(fill) if dtype.kind == "f" else int(fill), sep)
    return out


def encode_rows(codecs: dict[str, RowCodec], i: int, rows: dict[str, tuple]) -> dict[str, bytes]:
    """The stored chunks of row ``i`` (one epoch's slot) of several arrays.

    Args:
        codecs: :func:`row_codecs` of the job group.
        i: the epoch's slot (index along the group's ``epoch`` axis).
        rows: array path → ``(columns, values)``; ``columns`` None for the whole row, a slice
            or a list of column indices for part of it (the rest holds the fill value).

    Returns:
        Chunk key relative to the group (``nas_median/c.3.0``) → the chunk's bytes; a row that
        is all fill value gets no chunk, as zarr writes none.
    """
    out = {}
    for name, (cols, values) in rows.items():
        codec = codecs[name]
        row = codec.chunk(cols, values)
        if codec.empty(row):
            continue
        key = codec.separator.join(["c", str(int(i))] + ["0"] * len(codec.shape))
        out[f"{name}/{key}"] = _ZSTD.encode(row.tobytes())
    return out
