"""NAS, entropy and perplexity against the reference table of docs/measures.md and a brute-force loop."""

import math

import numpy as np
import pytest

from nasprobe.measures.nas import entropy, entropy_from_nas, nas, nas_from_entropy, perplexity

TABLE = [  # a, H, rho, s  (docs/measures.md)
    ([0, 0, 0, 0], 1.386294, 4.000000, 0.000000),
    ([1000, 0, 0, 0], 0.000000, 1.000000, 0.750000),
    ([1, 2, 3], 0.832396, 2.298819, 0.233727),
    ([0.5, -1, 2, 0, 3], 0.941602, 2.564085, 0.487183),
]


def _brute(vec):
    """Entropy by the textbook definition, one value at a time in Python floats."""
    m = max(vec)
    ex = [math.exp(v - m) for v in vec]
    total = sum(ex)
    return -sum((e / total) * math.log(e / total) for e in ex if e > 0)


@pytest.mark.parametrize("a,h,rho,s", TABLE)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_table(a, h, rho, s, dtype):
    x = np.array([a], dtype=dtype)
    tol = 1e-6 if dtype == np.float64 else 2e-6
    assert entropy(x, axis=1)[0] == pytest.approx(h, abs=tol)
    assert perplexity(x, axis=1)[0] == pytest.approx(rho, abs=tol * 5)
    assert nas(x, axis=1)[0] == pytest.approx(s, abs=tol)


def test_any_channel_axis_and_locations_match_brute_force():
    rng = np.random.default_rng(0)
    t = rng.normal(0, 3, (3, 4, 5, 6))  # channel axis 2 of size 5
    got = nas(t, axis=2)
    assert got.shape == (3, 4, 6)
    for i in range(3):
        for j in range(4):
            for k in range(6):
                vec = list(t[i, j, :, k])
                assert got[i, j, k] == pytest.approx(1 - math.exp(_brute(vec)) / 5, abs=1e-6)
    np.testing.assert_allclose(nas(np.moveaxis(t, 2, -1), axis=-1), got, atol=1e-12)


def test_one_channel_is_zero_and_bounds():
    assert nas(np.array([[3.0]]), axis=1)[0] == 0
    rng = np.random.default_rng(1)
    s = nas(rng.normal(0, 20, (200, 7)), axis=1)
    assert (s >= 0).all() and (s <= 1 - 1 / 7 + 1e-12).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_magnitudes_are_finite(dtype):
    a = np.array([[1e4, -1e4, 0, 5e3], [-1e4, -1e4, -1e4, -1e4]], dtype=dtype)
    s = nas(a, axis=1)
    assert np.isfinite(s).all()
    assert s[0] == pytest.approx(0.75, abs=1e-6) and s[1] == pytest.approx(0.0, abs=1e-6)
    assert nas(a, axis=1).dtype == dtype


def test_entropy_roundtrip():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 2, (50, 9))
    h = entropy(a, axis=1)
    np.testing.assert_allclose(entropy_from_nas(nas_from_entropy(h, 9), 9), h, atol=1e-10)
    np.testing.assert_allclose(nas_from_entropy(h, 9), nas(a, axis=1), atol=1e-12)
