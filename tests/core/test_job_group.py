"""The job group's rows are encoded without zarr (nasprobe.store.job_group.encode_rows): the
chunks it makes must read back through zarr exactly as zarr's own writes of the same rows."""

import numpy as np
import pytest
import zarr
import zarr.storage
from zarr.buffer import cpu

from nasprobe.errors import StoreError
from nasprobe.store.job_group import build_job_group, encode_rows, row_codecs
from nasprobe.store.layout import LayerInfo

LAYERS = [LayerInfo("conv", "Conv", 3, (4, 5), 0, "Relu"),
          LayerInfo("fc", "Gemm", 6, (), 1, "")]


def _group(keep: int) -> dict:
    mem: dict = {}
    build_job_group(zarr.storage.MemoryStore(mem), [10, 20, 30], LAYERS, keep, {"run": "r"})
    return mem


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
