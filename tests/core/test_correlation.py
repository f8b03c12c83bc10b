"""Filter-correlation histograms: computed in blocks (memory bounded, never D × D), equal to the
exact numpy histogram of the full matrix; above a size, the histogram of a fixed filter sample;
``--no-corr`` turns them off."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main
from nasprobe.measures.correlation import CORR_BINS, corr_histogram, sampled_filters
from tests.core import onnx_models as om
from tests.core.conftest import write_run


def exact(w: np.ndarray, centring: str = "paper", rows=None) -> np.ndarray:
    """Independent reference: the full float64 correlation matrix in plain numpy, its strict
    lower triangle (over ``rows`` only, when given), histogrammed."""
    f = w.reshape(len(w), -1).astype(np.float64)
    u = f - (f.mean(axis=0) if centring == "paper" else f.mean(axis=1, keepdims=True))
    n = np.linalg.norm(u, axis=1)
    c = np.where(np.outer(n, n) > 0, u @ u.T / np.where(np.outer(n, n) > 0, np.outer(n, n), 1), 0)
    if rows is not None:
        c = c[np.ix_(rows, rows)]
    i, j = np.tril_indices(len(c), k=-1)
    return np.histogram(np.clip(c[i, j], -1, 1), bins=CORR_BINS)[0]


@pytest.mark.parametrize("centring", ["paper", "pearson"])
@pytest.mark.parametrize("block_entries", [1, 50, 400, 1 << 20])
def test_blocked_histogram_equals_exact_numpy(centring, block_entries):
    rng = np.random.default_rng(4)
    w = rng.normal(size=(53, 4, 3, 3)).astype(np.float32)
    w[7] = w[3]  # a correlation of exactly 1
    w[11] = 0.0  # a zero filter (pearson: norm 0 → correlation 0)
    got = corr_histogram(w, centring, block_entries=block_entries)
    np.testing.assert_array_equal(got, exact(w, centring))
    assert got.sum() == 53 * 52 // 2


def test_large_layer_uses_a_fixed_sample():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(300, 6)).astype(np.float32)
    rows = sampled_filters(300, 100)
    assert len(rows) == 100 and np.array_equal(rows, sampled_filters(300, 100))
    got = corr_histogram(w, max_filters=100, block_entries=300)
    np.testing.assert_array_equal(got, exact(w, rows=rows))  # centred by all 300 filters
    assert got.sum() == 100 * 99 // 2


def test_memory_is_bounded_by_the_block():
    """6,000 filters: the full matrix alone would be 288 MB; the blocked pass stays far below."""
    w = np.random.default_rng(6).normal(size=(6000, 9)).astype(np.float32)
    tracemalloc.start()
    try:
        counts = corr_histogram(w, max_filters=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts.sum() == 6000 * 5999 // 2
    assert peak < 80e6, peak


def test_no_corr_leaves_the_histograms_empty(tmp_path, labelled_probe):
    write_run(tmp_path / "run", om.conv_bn_relu_net, ["epoch_001.onnx", "epoch_002.onnx"])
    stores = {}
    for flag in ("--corr", "--no-corr"):
        out = tmp_path / f"{flag}.zarr"
        res = CliRunner().invoke(main, ["probe", str(tmp_path / "run"), "--probe",
                                        str(labelled_probe), "--out", str(out), flag])
        assert res.exit_code == 0, (res.output, res.exception)
        stores[flag] = nasprobe.open_store(out).to_dataset()
    assert (stores["--corr"].corr_hist.sum("corr_bin") > 0).all()
    assert (stores["--no-corr"].corr_hist == 0).all()
    np.testing.assert_array_equal(stores["--corr"].nas_median, stores["--no-corr"].nas_median)
