"""Onsets against synthetic curves whose onset is known by construction."""

import numpy as np
import pytest

from nasprobe.measures.onsets import loss_onset, nas_onset, onsets, smooth
from tests.core.figures_data import make_dataset


@pytest.mark.parametrize("seed", range(12))
def test_noisy_u_shaped_loss_onset_within_one_epoch(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(25, 60))
    e = np.arange(-1, n)
    e0 = int(rng.integers(5, n - 8))
    loss = 1.2 + rng.uniform(0.004, 0.01) * (e - e0) ** 2 + rng.normal(0, 0.02, e.size)
    assert abs(loss_onset(loss, e) - e0) <= 1


@pytest.mark.parametrize("seed", range(6))
def test_exp_decay_plus_linear_rise(seed):
    # loss = c + a exp(-e/tau) + b e has its minimum at tau ln(a / (b tau)).
    rng = np.random.default_rng(100 + seed)
    tau, a, b = rng.uniform(3, 5), rng.uniform(2, 3), rng.uniform(0.08, 0.12)
    e = np.arange(0, 40)
    loss = 1.0 + a * np.exp(-e / tau) + b * e + rng.normal(0, 0.01, e.size)
    assert abs(loss_onset(loss, e) - tau * np.log(a / (b * tau))) <= 1.0


@pytest.mark.parametrize("seed", range(12))
def test_monotone_decreasing_loss_has_no_onset(seed):
    rng = np.random.default_rng(seed)
    e = np.arange(-1, int(rng.integers(20, 200)))
    loss = 1 + 2 * np.exp(-(e + 1) / rng.uniform(2, 30)) + rng.normal(0, 0.03, e.size)
    assert loss_onset(loss, e) is None
    assert loss_onset(np.exp(-e / 5.0), e) is None  # noise-free
    assert loss_onset(np.full(e.size, 0.7), e) is None  # constant


@pytest.mark.parametrize("seed", range(12))
def test_slow_rise_after_a_fast_descent_is_found(seed):
    # 30 epochs: a steep early descent (large smoothing residuals), then a slow rise of
    # 0.08-0.15 nats from epoch 14 with little noise: the demo's shape. The bottom is flat
    # within the early noise (0.05), so the smoothed minimum may sit a few epochs off 14.
    rng = np.random.default_rng(300 + seed)
    e = np.arange(-1, 30)
    loss = (0.5 + 1.8 * np.exp(-(e + 1) / 2.5) + np.clip(e - 14, 0, None) * rng.uniform(0.005, 0.01)
            + rng.normal(0, 1, e.size) * np.where(e < 18, 0.05, 0.004))
    assert loss_onset(loss, e) is not None and 9 <= loss_onset(loss, e) <= 20


def test_demo_loss_curve_has_its_onset():
    # probe loss of `nasprobe demo` (VanillaNet on digits, 30 epochs) as it printed it
    loss = [2.311, 2.31, 2.304, 2.276, 2.143, 1.75, 1.281, 0.84, 0.723, 0.655, 0.811, 0.618,
            0.634, 0.542, 0.495, 0.659, 0.578, 0.553, 0.54, 0.604, 0.617, 0.588, 0.606, 0.625,
            0.622, 0.633, 0.641, 0.645, 0.65, 0.653, 0.654]
    assert 13 <= loss_onset(np.array(loss), np.arange(-1, 30)) <= 16


@pytest.mark.parametrize("seed", range(40))
def test_long_noisy_plateau_after_descent_has_no_onset(seed):
    # the minimum of a long flat noisy tail sits anywhere in it; noise alone must not count
    rng = np.random.default_rng(500 + seed)
    e = np.arange(-1, int(rng.integers(100, 200)))
    loss = 1 + 2 * np.exp(-(e + 1) / rng.uniform(2, 10)) + rng.normal(0, rng.uniform(0.005, 0.05), e.size)
    assert loss_onset(loss, e) is None


def test_loss_onset_ignores_unprobed_epochs():
    e = np.arange(30)
    loss = 1.0 + 0.01 * (e - 12.0) ** 2
    loss[[3, 12, 20]] = np.nan
    assert abs(loss_onset(loss, e) - 12) <= 1
    assert loss_onset(np.full(30, np.nan), e) is None


@pytest.mark.parametrize("seed", range(12))
def test_flat_then_rising_nas_onset_within_one_epoch(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(25, 60))
    e = np.arange(-1, n)
    k0, length = int(rng.integers(4, n - 10)), int(rng.integers(4, 12))
    nas = 0.2 + 0.6 * np.clip((e - k0) / length, 0, 1) + rng.normal(0, 0.01, e.size)
    assert abs(nas_onset(nas, e) - k0) <= 1


def test_nas_without_sustained_rise_has_no_onset():
    rng = np.random.default_rng(0)
    e = np.arange(40)
    flat = 0.3 + rng.normal(0, 0.01, e.size)
    assert nas_onset(flat, e) is None
    bump = 0.3 + 0.4 * np.exp(-0.5 * ((e - 15) / 3.0) ** 2)  # rises, then falls back
    assert nas_onset(bump, e) is None
    assert nas_onset(0.8 - 0.01 * e, e) is None  # falling


def test_smooth_matches_gaussian_convolution():
    e = np.arange(50)
    y = np.sin(e / 5.0)
    s, e2 = smooth(y, e, sigma=2.0)
    k = np.exp(-0.5 * (np.arange(-8, 9) / 2.0) ** 2)
    k /= k.sum()
    assert np.allclose(s[10:40], np.convolve(y, k, mode="same")[10:40], atol=1e-6)
    assert np.array_equal(e2, e)


def test_onsets_dataset():
    ds = make_dataset(n_runs=2, n_layers=5, n_epochs=24, noise=0.003)
    out = onsets(ds)
    assert set(out.data_vars) == {"loss_onset", "nas_onset", "lead_time"}
    assert out["nas_onset"].dims == ("run", "layer")
    assert np.all(np.abs(out["loss_onset"].values - ds.attrs["loss_onset_true"]) <= 1)
    true = ds["nas_onset_true"].values
    assert np.all(np.abs(out["nas_onset"].values - true[None, :]) <= 1)
    expect = out["loss_onset"].values[:, None] - out["nas_onset"].values
    assert np.array_equal(out["lead_time"].values, expect)
    assert list(out["depth"].values) == list(ds["depth"].values)


def test_onsets_without_loss_are_nan():
    out = onsets(make_dataset(n_layers=3, loss=False, n_epochs=24))
    assert np.isnan(out["loss_onset"].values).all()
    assert np.isnan(out["lead_time"].values).all()
    assert np.isfinite(out["nas_onset"].values).all()
