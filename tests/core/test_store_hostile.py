"""Reading a store someone else wrote (issue 24, item 9): its commit markers, array shapes,
chunk grids and attributes are checked before they decide what is read or allocated, and
names are escaped before they reach the terminal."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main
from nasprobe.errors import StoreError
from tests.hostile import make_store, probe, write_onnx_run


def _doc(path):
    return json.loads(path.read_text())


def _edit(path, change):
    doc = _doc(path)
    change(doc)
    path.write_text(json.dumps(doc))


def _job(store, run="good"):
    (job,) = [p for p in (store / "runs" / run).iterdir()
              if p.is_dir() and p.name not in ("commits", "claims", "shapes")]
    return job


def _info(store):
    return CliRunner().invoke(main, ["info", str(store)])


def _refused(res, store, *parts):
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    for part in (str(store), *parts):
        assert part in res.stderr, (part, res.stderr)


def test_marker_naming_another_stores_job_is_refused(tmp_path):
    """A commit marker whose job is ``../../../S1.zarr/runs/good/<job>``: info and open_store
    are exit 2 / StoreError naming the marker, never values read from S1."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    s1, _ = make_store(tmp_path / "one")
    s2, _ = make_store(tmp_path / "two")
    (tmp_path / "two" / "S1.zarr").symlink_to(s1)  # the path resolves: S2/../S1.zarr
    other = f"../../../S1.zarr/runs/good/{_job(s1).name}"
    _edit(s2 / "runs" / "good" / "commits" / "1" / "zarr.json",
          lambda d: d["attributes"].update(job=other))
    _refused(_info(s2), s2, "commit marker runs/good/commits/1", repr(other),
             "not a job group of its run")
    with pytest.raises(StoreError, match="not a job group"):
        nasprobe.open_store(s2)


@pytest.mark.parametrize("index, message", [
    (10 ** 6, "points at slot 1000000"), ("1", "not a whole number"), (1.5, "not a whole"),
    (-1, "not a whole number >= 0"), (True, "not a whole number"), (0, "which holds epoch 1"),
])
def test_marker_index_out_of_bounds_is_refused(tmp_path, index, message):
    """A marker whose index is 1e6, text, fractional, negative, a bool, or a slot holding
    another epoch: exit 2 naming the store and the marker or slot (1e6 was a traceback)."""
    store, _ = make_store(tmp_path)
    _edit(store / "runs" / "good" / "commits" / "2" / "zarr.json",
          lambda d: d["attributes"].update(index=index))
    _refused(_info(store), store, message)
    res = CliRunner().invoke(main, ["report", str(store), "--out", str(tmp_path / "r.html")])
    _refused(res, store, message)


@pytest.mark.parametrize("array, shape, chunks, message", [
    ("epoch", [10 ** 9], [1], "1000000000 entries in 1000000000 chunks"),
    ("layer", [3], [0], "not a regular chunk grid"),
    ("heatmaps/conv1/nas_map", [2, 10 ** 5, 10 ** 5], [1, 10 ** 5, 10 ** 5],
     "10000000000 values per epoch"),
    ("nas_hist", [2, 3, 100], [1, 1, 1], "in 300 chunks"),
    ("nas_hist", [2, 3, 100], [10 ** 6, 3, 100], "at most 67108864 are read at once"),
    ("nas_median", [2, -3], [1, 3], "not a regular chunk grid"),
])
def test_huge_shapes_and_chunk_counts_are_refused_without_allocating(tmp_path, array, shape,
                                                                     chunks, message):
    """An array whose metadata declares a coordinate of 1e9 entries in chunks of 1, maps of
    1e10 values per epoch, thousands of chunks per epoch, or a malformed grid: exit 2 naming
    the array (``info`` reads the coordinates, ``report`` every array), in seconds and without
    allocating (before: every chunk key was built, a MemoryError under a 3 GB cap)."""
    store, _ = make_store(tmp_path)
    meta = _job(store) / array / "zarr.json"

    def change(d):
        d["shape"] = shape
        d["chunk_grid"]["configuration"]["chunk_shape"] = chunks

    _edit(meta, change)
    command = ["info", str(store)] if array in ("epoch", "layer") else \
        ["report", str(store), "--out", str(tmp_path / "r.html")]
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        res = CliRunner().invoke(main, command)
        took = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _refused(res, store, array, message)
    assert took < 5 and peak < 64 * 2 ** 20, (took, peak)
    with pytest.raises(StoreError, match="edited or damaged"):
        nasprobe.open_store(store)


def test_edited_attributes_never_give_a_traceback(tmp_path):
    """keep_images of 10**12 or text, provenance that is not JSON or has lists where maps
    belong, a layers attribute that is not a list: info and open_store answer (the view never
    holds more images than were stored) or refuse with exit 2; no traceback."""
    store, _ = make_store(tmp_path)
    kept = nasprobe.open_store(store)["heatmaps/conv1"]["nas_image_map"].sizes["image"]
    job = _job(store) / "zarr.json"
    _edit(job, lambda d: d["attributes"].update(keep_images=10 ** 12, provenance="{not json"))
    assert _info(store).exit_code == 0
    tree = nasprobe.open_store(store)
    assert tree["heatmaps/conv1"]["nas_image_map"].sizes["image"] == kept > 0
    _edit(job, lambda d: d["attributes"].update(keep_images="many", provenance=json.dumps(
        {"skipped": ["a", "b"], "nonfinite": 3, "source": "x"})))
    res = _info(store)
    assert res.exit_code == 0 and "from x" in res.output, res.output
    _edit(job, lambda d: d["attributes"].update(layers='{"a": 1}'))
    _refused(_info(store), store, "'layers' attribute is not a list")
    (store / "zarr.json").write_text("[1, 2]")
    _refused(_info(store), store, "not a zarr group's metadata")


def test_run_names_with_terminal_escapes_are_escaped(tmp_path):
    r"""A run (and its folder) named with an OSC title sequence, a screen clear, a carriage
    return and a bidirectional override: info, probe's own messages and errors print them as
    \x1b, \x0d, \u202e, never the raw characters."""
    evil = "r\x1b]0;owned\x07\x1b[2J\r\u202eexe.txt"
    folder = tmp_path / evil
    write_onnx_run(folder)
    (tmp_path / "s").mkdir()
    store, probe_set = make_store(tmp_path / "s")
    res = probe(folder, "--probe", probe_set, "--out", store, "--batch-size", "4")
    assert res.exit_code == 0, (res.output, res.exception)
    res2 = _info(store)
    assert res2.exit_code == 0
    for out in (res.stderr, res2.output):
        assert not any(c in out for c in "\x1b\x07\u202e"), repr(out)
        assert "r\\x1b]0;owned\\x07\\x1b[2J\\x0d\\u202eexe.txt" in out, out
    bad = tmp_path / f"bad{evil}"
    bad.mkdir()
    (bad / "epoch_001.onnx").write_bytes(b"not an onnx file")
    res = probe(bad, "--probe", probe_set, "--out", store)
    assert res.exit_code == 2 and "\x1b" not in res.stderr and "\\x1b" in res.stderr, res.stderr
