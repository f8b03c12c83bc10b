"""Compressed ``.npz`` probe sets are bounded before they are inflated (a "zip bomb": a few
kilobytes that inflate to gigabytes).

A compressed member is read whole into memory, so its inflated size, read from the zip
directory, must stay under ``MAX_INFLATED_BYTES``; the member's ``.npy`` header, inflated on
its own, must announce that size exactly. Each refusal is an exit 2 naming the file, reached
without inflating the member (the peak of Python's allocations stays far below its size).
"""

from __future__ import annotations

import tracemalloc
import zipfile

import numpy as np
import pytest

from nasprobe.errors import ProbeSetError
from nasprobe.probesets import arrays, load_probe_set
from tests.hostile import assert_refused, probe, write_onnx_run

NCHW = (None, 3, 8, 8)


def _bomb(path, images: int) -> int:
    """A compressed .npz whose ``x`` is ``images`` zero images (3×8×8 float32); returns the
    inflated size of ``x.npy``."""
    np.savez_compressed(path, x=np.zeros((images, 3, 8, 8), np.float32))
    with zipfile.ZipFile(path) as zf:
        return zf.getinfo("x.npy").file_size


def test_a_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "MAX_INFLATED_BYTES", 4 << 20)
    path = tmp_path / "bomb.npz"
    inflated = _bomb(path, 8000)  # 6.1 MB of zeros in a file of a few kB
    assert path.stat().st_size < 50_000 < 4 << 20 < inflated
    tracemalloc.start()
    try:
        with pytest.raises(ProbeSetError, match="would inflate to") as err:
            load_probe_set(path, NCHW)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value) and "np.savez" in str(err.value)
    assert peak < 1 << 20, peak  # not inflated: under 1 MiB allocated against 6 MB


def test_a_bomb_through_the_command_line_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "MAX_INFLATED_BYTES", 4 << 20)
    write_onnx_run(tmp_path / "run")
    path = tmp_path / "bomb.npz"
    _bomb(path, 8000)
    res = probe(tmp_path / "run", "--probe", path, "--out", tmp_path / "s.zarr")
    assert_refused(res, path, "x.npy", "would inflate to")
    assert not (tmp_path / "s.zarr").exists()


def test_under_the_bound_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "MAX_INFLATED_BYTES", 4 << 20)
    x = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.savez_compressed(tmp_path / "p.npz", x=x)
    ps = load_probe_set(tmp_path / "p.npz", NCHW)
    np.testing.assert_array_equal(ps.first(40), x)


def test_the_default_bound_is_one_gib():
    assert arrays.MAX_INFLATED_BYTES == 1 << 30


def test_a_header_announcing_more_than_the_member_holds_is_refused(tmp_path):
    """The zip directory says a few bytes, the .npy header 19 GB: numpy would allocate what the
    header says before reading; the mismatch is refused first."""
    header = tmp_path / "h.npy"
    with open(header, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (20000, 20000, 3, 4)})
        f.write(b"\0" * 64)
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(header, "x.npy")
    with pytest.raises(ProbeSetError, match="header announces 19200000128 bytes"):
        load_probe_set(path, NCHW)
