"""A probe job writes its store without zarr (nasprobe.store.chunks): every document must be
the one zarr itself writes for the same array, every chunk the same bytes, and all of it must
read back through zarr."""

import json

import numpy as np
import pytest
import zarr
import zarr.storage
from zarr.buffer import cpu
from zarr.codecs import BytesCodec, ZstdCodec

from nasprobe.errors import StoreError
from nasprobe.store.chunks import EpochBlocks, array_doc, encode_rows, row_codecs, whole_array
from nasprobe.store.job_group import BLOCK_ROW_BYTES, build_job_group
from nasprobe.store.layout import LayerInfo

LAYERS = [LayerInfo("conv", "Conv", 3, (4, 5), 0, "Relu"),
          LayerInfo("fc", "Gemm", 6, (), 1, "")]


def _group(keep: int) -> dict:
    files = build_job_group([10, 20, 30], LAYERS, keep, {"run": "r"})
    return {k: cpu.Buffer.from_bytes(v) for k, v in files.items()}


def _zarrs(values, fill, chunks, attrs=None):
    """The documents and chunks zarr writes for ``values`` as a 1-D array (numbers: bytes and
    zstd level 0; text: zarr's vlen-utf8 and the same zstd; chunk keys with '.')."""
    mem: dict = {}
    text = values.dtype.kind in "OUT"
    codecs = {"compressors": ZstdCodec(level=0, checksum=False)}
    if not text:
        codecs["serializer"] = BytesCodec(endian="little")
    arr = zarr.create_array(zarr.storage.MemoryStore(mem), name="a", shape=values.shape,
                            dtype=str if text else values.dtype, chunks=chunks,
                            fill_value=fill, dimension_names=("x",), attributes=attrs or {},
                            chunk_key_encoding={"name": "default", "separator": "."}, **codecs)
    arr[:] = values
    return {k: v.to_bytes() for k, v in mem.items() if k.startswith("a/")}


@pytest.mark.parametrize("values,fill,chunk", [
    (np.array([3, 1, 4], np.int64), -(2**62), None),
    (np.array([0.5, np.nan, -2.0]), np.nan, None),
    (np.array([1.5, 2.5], np.float32), np.nan, 4),  # a chunk longer than the array
    (np.array([], np.int64), -1, 1),  # empty: a document, no chunk
    (np.array(["conv", "", "fc.weight ü"], dtype=object), "", None),
    (np.array(["a"], dtype=object), "", 3),
])
def test_documents_and_chunks_are_zarrs(values, fill, chunk):
    ours = whole_array("a", values, ("x",), fill, {"coordinates": "c"}, chunk=chunk)
    theirs = _zarrs(values, fill, (chunk or max(len(values), 1),), {"coordinates": "c"})
    assert set(ours) == set(theirs)
    assert json.loads(ours["a/zarr.json"]) == json.loads(theirs["a/zarr.json"])
    for key in ours:
        if key != "a/zarr.json":
            assert ours[key] == theirs[key], key
    got = zarr.open_array(zarr.storage.MemoryStore(
        {k[2:]: cpu.Buffer.from_bytes(v) for k, v in ours.items()}), mode="r")
    if values.dtype.kind == "O":
        assert [str(v) for v in got[:]] == list(values)
    else:
        np.testing.assert_array_equal(got[:], values)


@pytest.mark.parametrize("shape,dtype,fill,chunks", [
    ((3, 2, 5), "float64", np.nan, (1, 2, 5)),
    ((3, 0, 4, 4), "float32", np.nan, (1, 1, 4, 4)),
    ((3, 2, 100), "int64", 0, (1, 2, 100)),
])
def test_variable_documents_are_zarrs(shape, dtype, fill, chunks):
    mem: dict = {}
    zarr.create_array(zarr.storage.MemoryStore(mem), name="v", shape=shape, dtype=dtype,
                      chunks=chunks, fill_value=fill, dimension_names=("epoch", "a", "b", "c")[
                          :len(shape)], attributes={"coordinates": "layer_kind depth"},
                      serializer=BytesCodec(endian="little"),
                      compressors=ZstdCodec(level=0, checksum=False),
                      chunk_key_encoding={"name": "default", "separator": "."})
    ours = array_doc(shape, dtype, ("epoch", "a", "b", "c")[:len(shape)], fill, chunks,
                     {"coordinates": "layer_kind depth"})
    assert json.loads(ours) == json.loads(mem["v/zarr.json"].to_bytes())


def _rows(rng, keep: int) -> dict:
    return {
        "nas_median": (None, rng.random(2)),
        "nas_mean": ([1], rng.random(1)),  # part of the row: the rest stays NaN
        "nas_hist": (None, rng.integers(0, 99, (2, 100))),
        "nas_quantile": (None, np.array([[np.nan] * 5, [0.1, 0.2, 0.3, 0.4, 0.5]])),
        "loss": (None, 0.25),
        "heatmaps/conv/nas_map": (None, rng.random((4, 5)).astype(np.float32)),
        "heatmaps/conv/nas_image_map": (slice(0, 1), rng.random((1, 4, 5)).astype(np.float32)),
        "heatmaps/conv/unit_activity": (None, rng.random(3)),
        "heatmaps/fc/nas_map": (None, np.float32(0.5)),
        "dead_fraction": (None, np.full(2, np.nan)),  # all fill: zarr stores no chunk
    }


@pytest.mark.parametrize("keep", [0, 2])
def test_encoded_rows_read_back_as_zarr_writes_them(keep):
    rng = np.random.default_rng(0)
    rows = _rows(rng, keep)
    if keep == 0:
        del rows["heatmaps/conv/nas_image_map"]
    ours, theirs = _group(keep), _group(keep)
    meta = {k: v.to_bytes() for k, v in ours.items() if k.endswith("zarr.json")}
    coords = zarr.open_group(zarr.storage.MemoryStore(dict(ours)), mode="r")
    assert list(coords["epoch"][:]) == [10, 20, 30]
    assert [str(x) for x in coords["layer"][:]] == ["conv", "fc"]
    assert [str(x) for x in coords["nonlinearity"][:]] == ["Relu", ""]
    assert list(coords["channels"][:]) == [3, 6]
    chunks = encode_rows(row_codecs(meta), 1, rows)
    assert not any(k.startswith("dead_fraction/") for k in chunks)
    ours.update({k: cpu.Buffer.from_bytes(v) for k, v in chunks.items()})
    before = set(theirs)
    ref = zarr.open_group(zarr.storage.MemoryStore(theirs), mode="r+")
    for name, (cols, values) in rows.items():
        if cols is None:
            ref[name][1] = values
        elif isinstance(cols, slice):
            ref[name][1, cols] = values
        else:
            ref[name].oindex[1, cols] = values
    got = zarr.open_group(zarr.storage.MemoryStore(ours), mode="r")
    for name in rows:
        a, b = got[name][:], ref[name][:]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    # the chunks are those zarr itself writes for the same rows, under the same keys
    assert set(chunks) == set(theirs) - before


def test_a_group_with_other_codecs_is_refused():
    mem: dict = {}
    grp = zarr.open_group(zarr.storage.MemoryStore(mem), mode="w", zarr_format=3)
    grp.create_array("nas_median", shape=(3, 2), dtype="float64", chunks=(1, 2),
                     dimension_names=("epoch", "layer"),
                     compressors=zarr.codecs.GzipCodec())
    meta = {k: v.to_bytes() for k, v in mem.items()}
    with pytest.raises(StoreError, match="codecs"):
        row_codecs(meta)


def test_blocks_of_epochs_are_the_chunks_zarr_writes():
    """A group chunked two epochs per chunk (three epochs: the second chunk half past the
    end): rows held by EpochBlocks and taken twice — a chunk missing a row is written again,
    whole, once the row arrives — give the chunks zarr writes for the same rows, byte for byte,
    and read back equal."""
    rng = np.random.default_rng(1)
    files = build_job_group([10, 20, 30], LAYERS, 2, {"run": "r"}, epochs_per_chunk=2)
    meta = {k: v for k, v in files.items() if k.endswith("zarr.json")}
    codecs = row_codecs(meta)
    assert codecs["nas_median"].epochs == 2 and codecs["heatmaps/conv/nas_image_map"].epochs == 2
    rows = {slot: _rows(rng, 2) for slot in (2, 0, 1)}
    blocks = EpochBlocks(codecs, {0, 1, 2})
    blocks.add(2, rows[2])
    blocks.add(0, rows[0])
    assert not blocks.full()  # chunk 0 misses slot 1
    first = blocks.take()
    assert "nas_median/c.1.0" in first and "nas_median/c.0.0" in first
    assert ("nas_median", 0) in blocks.blocks and ("nas_median", 1) not in blocks.blocks
    blocks.add(1, rows[1])
    assert blocks.full()
    second = blocks.take()
    assert "nas_median/c.0.0" in second and "nas_median/c.1.0" not in second
    assert not blocks.blocks and not blocks.pending()
    assert not any(k.startswith("dead_fraction/") for k in {**first, **second})

    theirs = {k: cpu.Buffer.from_bytes(v) for k, v in files.items()}
    before = set(theirs)
    ref = zarr.open_group(zarr.storage.MemoryStore(theirs), mode="r+")
    for slot, row in rows.items():
        for name, (cols, values) in row.items():
            if cols is None:
                ref[name][slot] = values
            elif isinstance(cols, slice):
                ref[name][slot, cols] = values
            else:
                ref[name].oindex[slot, cols] = values
    ours = {**files, **first, **second}
    assert set(ours) - set(files) == set(theirs) - before
    for key in set(theirs) - before:
        assert ours[key] == theirs[key].to_bytes(), key
    got = zarr.open_group(zarr.storage.MemoryStore(
        {k: cpu.Buffer.from_bytes(v) for k, v in ours.items()}), mode="r")
    for name in rows[0]:
        np.testing.assert_array_equal(got[name][:], ref[name][:], err_msg=name)


def test_blocks_are_whole_epochs_and_bounded_in_size():
    """epochs_per_chunk is capped by the number of epochs; a variable whose one epoch is over
    BLOCK_ROW_BYTES keeps one epoch per chunk; 1 (the default) is one epoch per chunk."""
    big = [LayerInfo("big", "Conv", 4, (512, 512), 0, "Relu"),  # a 1 MiB map per epoch
           LayerInfo("small", "Conv", 4, (8, 8), 1, "Relu")]
    docs = {k: json.loads(v) for k, v in build_job_group(
        list(range(40)), big, 2, {}, epochs_per_chunk=16).items() if k.endswith("zarr.json")}
    chunk = {k: d["chunk_grid"]["configuration"]["chunk_shape"] for k, d in docs.items()
             if d.get("node_type") == "array"}
    assert 512 * 512 * 4 > BLOCK_ROW_BYTES >= 2 * 8 * 8 * 4
    assert chunk["heatmaps/big/nas_map/zarr.json"] == [1, 512, 512]
    assert chunk["heatmaps/big/nas_image_map/zarr.json"] == [1, 2, 512, 512]
    assert chunk["heatmaps/small/nas_image_map/zarr.json"] == [16, 2, 8, 8]
    assert chunk["nas_median/zarr.json"] == [16, 2]
    assert chunk["epoch/zarr.json"] == [40]
    three = build_job_group([1, 2, 3], big, 0, {}, epochs_per_chunk=16)
    assert json.loads(three["nas_median/zarr.json"])["chunk_grid"]["configuration"][
        "chunk_shape"] == [3, 2]
    one = build_job_group([1, 2, 3], big, 0, {})
    assert {c.epochs for c in row_codecs(
        {k: v for k, v in one.items() if k.endswith("zarr.json")}).values()} == {1}
