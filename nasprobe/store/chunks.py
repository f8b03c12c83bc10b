"""The zarr v3 documents and chunks of the arrays a probe job writes, made without zarr.

A job writes a handful of coordinate arrays when it starts and then its epochs' rows: one
chunk per array per epoch (:func:`encode_rows`), or, where its arrays are chunked several epochs
per chunk (a serial job, see docs/store-design.md), one chunk per array per block of epochs
(:class:`EpochBlocks`). Always with the same codecs: little-endian ``bytes`` then ``zstd`` level
0 for numbers (:data:`ROW_CODECS`), ``vlen-utf8`` then the same ``zstd`` for text
(:data:`TEXT_CODECS`), and chunk keys ``c.<i>.0…`` (:data:`CHUNK_KEYS`). Their metadata
documents (:func:`array_doc`) and chunks (:func:`encode_chunk`, :func:`encode_rows`) are made
here with numcodecs, the codec library zarr's own ``zstd`` and ``vlen-utf8`` codecs call, and
``json``. Zarr reads the store; it is not needed to write it. Going through zarr cost a
round trip through its event-loop thread for every array of every epoch, and importing it
0.1 s per job (both measured in benchmarks/probe_speed.py); tests/core/test_chunks.py checks
that what is made here is what zarr itself writes, document for document and byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from numcodecs import VLenUTF8, Zstd

from nasprobe.errors import StoreError

__all__ = ["ROW_CODECS", "TEXT_CODECS", "CHUNK_KEYS", "array_doc", "encode_chunk",
           "whole_array", "RowCodec", "row_codecs", "encode_rows", "EpochBlocks"]

#: The codecs of every numeric array nasprobe writes, as zarr spells them in its metadata.
ROW_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}},
              {"name": "zstd", "configuration": {"level": 0, "checksum": False}}]
#: The codecs of its text arrays (layer names and kinds).
TEXT_CODECS = [{"name": "vlen-utf8", "configuration": {}}, ROW_CODECS[1]]
#: Chunk keys ``c.<epoch>.0``: an epoch's chunks land in folders that exist (with ``/``, every
#: epoch made a folder per array, a system call each, most of a small epoch's write time).
CHUNK_KEYS = {"name": "default", "configuration": {"separator": "."}}

_ZSTD = Zstd(level=0, checksum=False)
_TEXT = VLenUTF8()


def _fill_json(fill):
    """A fill value as zarr v3 metadata spells it (NaN and infinities as strings)."""
    if isinstance(fill, float) and not np.isfinite(fill):
        return "NaN" if np.isnan(fill) else ("Infinity" if fill > 0 else "-Infinity")
    return fill


def array_doc(shape, dtype, dims, fill, chunks, attributes: dict | None = None) -> bytes:
    """The ``zarr.json`` of an array: ``shape`` and regular ``chunks`` (tuples of ints),
    ``dtype`` a numpy dtype name (``"float64"``, ``"int64"``...) or ``str`` for text, the
    dimension names ``dims``, the fill value and the attributes."""
    text = dtype is str
    return json.dumps({
        "shape": [int(s) for s in shape],
        "data_type": "string" if text else np.dtype(dtype).name,
        "chunk_grid": {"name": "regular",
                       "configuration": {"chunk_shape": [int(c) for c in chunks]}},
        "chunk_key_encoding": CHUNK_KEYS,
        "fill_value": _fill_json(fill),
        "codecs": TEXT_CODECS if text else ROW_CODECS,
        "attributes": attributes or {},
        "dimension_names": list(dims),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }, indent=2, allow_nan=True).encode()


def encode_chunk(chunk: np.ndarray) -> bytes:
    """The stored bytes of one whole chunk: numbers (any numeric dtype, written little-endian
    in C order) or text (an object or string array, utf-8)."""
    if chunk.dtype.kind in "OUT":
        return _ZSTD.encode(_TEXT.encode(np.asarray(chunk, dtype=object).ravel()))
    return _ZSTD.encode(np.ascontiguousarray(chunk, chunk.dtype.newbyteorder("<")).tobytes())


def whole_array(path: str, values: np.ndarray, dims, fill, attributes: dict | None = None,
                chunk: int | None = None) -> dict[str, bytes]:
    """The files of a one-dimensional array written whole in one chunk (a coordinate):
    ``path/zarr.json`` and its chunk (none when ``values`` is empty), ``chunk`` entries long
    (default ``len(values)``; longer ones are padded with ``fill``)."""
    values = np.asarray(values)
    n = len(values)
    size = max(int(chunk if chunk is not None else n), 1)
    text = values.dtype.kind in "OUT"
    files = {f"{path}/zarr.json": array_doc((n,), str if text else values.dtype.name, dims,
                                            fill, (size,), attributes)}
    if n:
        if size > n:
            values = np.concatenate([values, np.full(size - n, fill, values.dtype)])
        files[f"{path}/c.0"] = encode_chunk(values)
    return files


@dataclass(frozen=True)
class RowCodec:
    """How one epoch's row of a job-group array is stored: the row's shape (the array's
    shape without the epoch axis), the chunk's (the same, or larger where an axis is empty:
    ``nas_image_map`` with no kept image), the little-endian dtype, the fill value, the
    separator of the chunk keys and the epochs per chunk (the chunk's first axis)."""

    row: tuple[int, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    fill: float | int
    separator: str = "/"
    epochs: int = 1

    def key(self, index: int) -> str:
        """The key of chunk ``index`` along the epoch axis, relative to the array
        (``c.3.0.0``)."""
        return self.separator.join(["c", str(int(index))] + ["0"] * len(self.shape))

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


def row_codecs(meta: dict[str, bytes]) -> dict[str, RowCodec]:
    """The row codecs of a job group's per-epoch arrays from its metadata documents (path →
    ``zarr.json`` bytes), by array path (``nas_median``, ``heatmaps/<group>/nas_map``, ...).

    Raises:
        StoreError: an array along ``epoch`` is chunked along another axis than the epoch
            axis, or is stored with other codecs than :data:`ROW_CODECS` (a group this version
            did not make).
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
        if len(shape) != len(chunks) or chunks[0] < 1 or any(
                c < max(s, 1) for c, s in zip(chunks[1:], shape[1:])):
            raise StoreError(name, f"job-group array of shape {list(shape)} chunked "
                             f"{list(chunks)}: not whole epochs per chunk")
        if doc["codecs"] != ROW_CODECS or doc["data_type"] not in ("float32", "float64", "int64"):
            raise StoreError(name, f"job-group array stored as {doc['data_type']} with codecs "
                             f"{doc['codecs']}, which this version of nasprobe does not write")
        sep = doc["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        if doc["chunk_key_encoding"]["name"] != "default" or sep not in "/.":
            raise StoreError(name, f"job-group array with chunk keys {doc['chunk_key_encoding']}"
                             ", which this version of nasprobe does not write")
        fill = doc["fill_value"]
        dtype = np.dtype(doc["data_type"]).newbyteorder("<")
        out[name] = RowCodec(shape[1:], tuple(int(c) for c in chunks[1:]), dtype,
                             float(fill) if dtype.kind == "f" else int(fill), sep,
                             int(chunks[0]))
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
        out[f"{name}/{codec.key(i)}"] = _ZSTD.encode(row.tobytes())
    return out


class EpochBlocks:
    """The rows of arrays chunked several epochs per chunk, held until their chunks are written.

    A chunk of ``k`` epochs holds slots ``c·k … c·k + k − 1``; it is kept in memory from its
    first row until every slot of it in ``expected`` (the slots this job will write) has one.
    :meth:`take` encodes the chunks that received rows since the last call — a chunk still
    missing rows is encoded whole again when more arrive, so the stored chunk only ever gains
    rows — and forgets the complete ones.

    Args:
        codecs: :func:`row_codecs` of the arrays (those with ``epochs`` > 1).
        expected: the slots this job will write.
    """

    def __init__(self, codecs: dict[str, RowCodec], expected: set[int]):
        self.codecs = codecs
        self.expected = set(expected)
        self.written: set[int] = set()
        self.blocks: dict[tuple[str, int], np.ndarray] = {}
        self.dirty: set[tuple[str, int]] = set()

    def add(self, i: int, rows: dict[str, tuple]) -> None:
        """Put row ``i`` of several arrays (as for :func:`encode_rows`) into their chunks."""
        for name, (cols, values) in rows.items():
            codec = self.codecs[name]
            c, k = divmod(int(i), codec.epochs)
            block = self.blocks.get((name, c))
            if block is None:
                block = self.blocks[(name, c)] = np.full((codec.epochs, *codec.shape),
                                                         codec.fill, codec.dtype)
            block[k] = codec.chunk(cols, values).reshape(codec.shape)  # 0-d rows come 1-d
            self.dirty.add((name, c))
        self.written.add(int(i))

    def complete(self, name: str, c: int) -> bool:
        """True when every expected slot of chunk ``c`` of array ``name`` has its row."""
        k = self.codecs[name].epochs
        return all(s in self.written for s in range(c * k, c * k + k) if s in self.expected)

    def pending(self) -> bool:
        """True while some chunk holds rows not yet taken."""
        return bool(self.dirty)

    def full(self) -> bool:
        """True when every chunk holding rows not yet taken is complete."""
        return all(self.complete(name, c) for name, c in self.dirty)

    def take(self) -> dict[str, bytes]:
        """Chunk key relative to the group (``nas_median/c.0.0``) → bytes of each chunk that
        received rows since the last call (none for a chunk all fill value, as zarr)."""
        out = {}
        for name, c in sorted(self.dirty):
            codec, block = self.codecs[name], self.blocks[(name, c)]
            if not codec.empty(block):
                out[f"{name}/{codec.key(c)}"] = _ZSTD.encode(block.tobytes())
            if self.complete(name, c):
                del self.blocks[(name, c)]
        self.dirty.clear()
        return out
