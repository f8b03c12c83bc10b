"""Streaming statistics equal exact numpy statistics over all values (1e-4)."""

import numpy as np
import pytest

from nasprobe.measures.aggregate import NAS_BINS, QUANTILES, LayerStats
from nasprobe.measures.nas import entropy_from_nas


@pytest.mark.parametrize("kind", ["beta", "clustered", "dense", "ties"])
def test_streamed_statistics_equal_numpy(kind):
    rng = np.random.default_rng(0)
    shape = (203, 5, 4)
    maps = {"beta": rng.beta(2, 6, shape),
            "clustered": np.where(rng.random(shape) < 0.5, 0.1, 0.6) + rng.normal(0, 1e-3, shape),
            "dense": rng.uniform(0, 1e-3, shape), "ties": np.round(rng.uniform(0, 0.8, shape), 2)}[kind]
    st = LayerStats(channels=8, spatial=(5, 4), keep_images=3)
    for i in range(0, shape[0], 17):
        st.update(maps[i:i + 17])
    s = st.summary()
    v = maps.ravel()
    np.testing.assert_allclose(s["nas_quantile"], np.quantile(v, QUANTILES), atol=1e-4)
    assert s["nas_median"] == pytest.approx(np.median(v), abs=1e-4)
    assert s["nas_mean"] == pytest.approx(v.mean(), abs=1e-10)
    assert (s["nas_min"], s["nas_max"]) == (v.min(), v.max())
    assert s["entropy_mean"] == pytest.approx(entropy_from_nas(v, 8).mean(), abs=1e-10)
    np.testing.assert_array_equal(s["nas_hist"], np.histogram(v, bins=NAS_BINS)[0])
    np.testing.assert_allclose(s["nas_map"], maps.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(s["nas_image_map"], maps[:3], atol=1e-6)


def test_nonfinite_values_make_statistics_nan():
    st = LayerStats(4, ())
    st.update(np.array([0.1, np.nan, 0.3]))
    s = st.summary()
    assert np.isnan(s["nas_median"]) and np.isnan(s["nas_mean"]) and np.isnan(s["nas_quantile"]).all()


def test_memory_is_independent_of_the_number_of_values():
    st = LayerStats(4, (8, 8))
    before = sum(a.nbytes for a in (st.count, st.bin_min, st.bin_max, st.map_sum))
    rng = np.random.default_rng(1)
    for _ in range(20):
        st.update(rng.uniform(0, 0.7, (64, 8, 8)))
    after = sum(a.nbytes for a in (st.count, st.bin_min, st.bin_max, st.map_sum))
    assert before == after and st.n == 20 * 64 * 64


def test_padding_mask_keeps_padding_out_of_every_statistic():
    """Masked (image, location) pairs count nowhere: the statistics equal numpy over the real
    pairs alone, even with NaN at padding; the mean map divides by the real pairs per location
    (NaN where none reaches it) and the kept maps are NaN on padding."""
    rng = np.random.default_rng(3)
    n, width = 41, 9
    lengths = rng.integers(1, width, n)  # nobody reaches the last position
    lengths[:5] = width - 1
    mask = np.arange(width)[None, :] < lengths[:, None]
    maps = rng.beta(2, 5, (n, width))
    maps[~mask] = np.nan  # whatever sits in the padding must not matter
    st = LayerStats(channels=16, spatial=(width,), keep_images=7)
    st.update(np.where(mask[:5], maps[:5], 0.5), mask[:5])  # other padding values: no matter
    for i in range(5, n, 6):
        st.update(maps[i:i + 6], mask[i:i + 6])
    s = st.summary()
    v = maps[mask]
    np.testing.assert_allclose(s["nas_quantile"], np.quantile(v, QUANTILES), atol=1e-4)
    assert s["nas_median"] == pytest.approx(np.median(v), abs=1e-4)
    assert s["nas_mean"] == pytest.approx(v.mean(), abs=1e-10)
    assert (s["nas_min"], s["nas_max"]) == (v.min(), v.max())
    assert s["entropy_mean"] == pytest.approx(entropy_from_nas(v, 16).mean(), abs=1e-10)
    np.testing.assert_array_equal(s["nas_hist"], np.histogram(v, bins=NAS_BINS)[0])
    want = np.array([maps[mask[:, k], k].mean() if mask[:, k].any() else np.nan
                     for k in range(width)])
    np.testing.assert_allclose(s["nas_map"], want, atol=1e-12)
    assert np.isnan(s["nas_map"][-1])
    np.testing.assert_allclose(s["nas_image_map"], np.where(mask, maps, np.nan)[:7], atol=1e-6)


@pytest.mark.parametrize("order", ["masked first", "unmasked first"])
def test_masked_and_unmasked_batches_mix(order):
    """A batch without padding (mask None) counts every location, before or after masked ones."""
    rng = np.random.default_rng(4)
    maps = rng.uniform(0, 0.9, (6, 4))
    mask = np.ones((6, 4), bool)
    padded = slice(0, 3) if order == "masked first" else slice(3, 6)
    mask[padded, 2:] = False
    st = LayerStats(channels=8, spatial=(4,))
    for part in ((slice(0, 3), slice(3, 6))):
        st.update(maps[part], mask[part] if part == padded else None)
    s = st.summary()
    want = np.array([maps[mask[:, k], k].mean() for k in range(4)])
    np.testing.assert_allclose(s["nas_map"], want, atol=1e-12)
    assert s["nas_mean"] == pytest.approx(maps[mask].mean(), abs=1e-12)
    with pytest.raises(ValueError, match="mask shape"):
        st.update(maps[:2], mask[:3])
