"""Label-free stopping rules on series whose firing epoch is known by construction."""

import numpy as np
import pytest
import xarray as xr

from nasprobe import stopping
from nasprobe.errors import NasprobeError
from nasprobe.measures import online_stopper as stopper
from nasprobe.measures.aggregate import QUANTILES

LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]
#: no smoothing, no patience, no start epoch: firing epochs can be worked out by hand
BASE = dict(sigma=0, patience=1, min_epochs=0)


def make_ds(deep, shallow=None, epochs=None, upper=None) -> xr.Dataset:
    """One run: conv3 and fc1 (the default deep layers) follow ``deep``, conv1 ``shallow``."""
    deep = np.asarray(deep, float)
    n = deep.size
    epochs = np.arange(-1, n - 1) if epochs is None else np.asarray(epochs)
    shallow = np.full(n, 0.05) if shallow is None else np.asarray(shallow, float)
    med = np.zeros((n, len(LAYERS)))
    med[:, 0], med[:, 1], med[:, 2], med[:, 3], med[:, 4] = shallow, 0.3, deep, deep, 0.9
    q = np.repeat(med[:, :, None], len(QUANTILES), axis=2)
    if upper is not None:
        q[:, 2, -1] = q[:, 3, -1] = upper
    return xr.Dataset({"nas_median": (("epoch", "layer"), med),
                       "nas_quantile": (("epoch", "layer", "quantile"), q)},
                      coords={"epoch": epochs, "layer": LAYERS, "quantile": list(QUANTILES)})


def ramp_plateau_creep(n=40):
    """Deep NAS: 0.1 up to epoch 4, +0.1 per epoch to 0.6 at epoch 9, flat, then from epoch
    15 a creep of 0.005 per epoch (epochs -1..n-2)."""
    e = np.arange(-1, n - 1)
    return 0.1 + 0.1 * np.clip(e - 4, 0, 5) + 0.005 * np.clip(e - 15, 0, None)


def test_plateau_fires_when_the_rise_over_the_window_drops_below_tol():
    ds = make_ds(ramp_plateau_creep())
    # s[t] - s[t-3] < 0.01 first at t = 12 (s[9] = s[12] = 0.6); the rise 0.5 >= min_rise
    assert stopping.plateau(ds, window=3, tol=0.01, min_rise=0.05, **BASE) == 12
    # a rise below min_rise is no saturation (the curve is flat at 0.1 before epoch 5)
    assert stopping.plateau(make_ds(np.full(30, 0.1)), window=3, **BASE) is None


def test_creep_fires_delta_above_the_minimum_since_saturation():
    ds = make_ds(ramp_plateau_creep())
    # saturation at 12; 0.6 + 0.005 (t - 15) >= 0.62 first at t = 19
    assert stopping.creep(ds, window=3, tol=0.01, min_rise=0.05, delta=0.02 - 1e-9,
                          **BASE) == 19
    assert stopping.creep(ds, window=3, tol=0.01, delta=1.0, **BASE) is None


def test_rise_patience_and_min_epochs():
    ds = make_ds(ramp_plateau_creep())
    # 0.1 + 0.1 (t - 4) - 0.1 >= 0.15 first at t = 6
    assert stopping.rise(ds, delta=0.15, **BASE) == 6
    assert stopping.rise(ds, delta=0.15, **{**BASE, "patience": 3}) == 8
    assert stopping.rise(ds, delta=0.15, **{**BASE, "min_epochs": 20}) == 20


def test_gap_ignores_a_rise_shared_by_the_shallow_layer():
    deep = ramp_plateau_creep()
    shallow = 0.05 + np.where(np.arange(-1, 39) >= 15, deep - 0.6, 0.0)  # creeps with deep
    ds = make_ds(deep, shallow)
    kw = dict(window=3, tol=0.01, min_rise=0.05, delta=0.02 - 1e-9, **BASE)
    assert stopping.creep(ds, **kw) == 19
    assert stopping.gap(ds, **kw) is None
    assert stopping.gap(make_ds(deep), **kw) == 19  # constant shallow: gap = deep - const


def test_quantile_reads_the_upper_quantile_and_needs_it():
    deep = ramp_plateau_creep()
    upper = np.minimum(deep + 0.2, 0.8 + 0.01 * np.clip(np.arange(-1, 39) - 20, 0, None))
    ds = make_ds(deep, upper=upper)
    kw = dict(window=3, tol=0.01, min_rise=0.05, delta=0.03 - 1e-9, **BASE)
    # saturation at 12 (deep); upper is 0.8 from epoch 7 to 20, then +0.01 per epoch
    assert stopping.quantile(ds, **kw) == 23
    with pytest.raises(NasprobeError, match="nas_quantile"):
        stopping.quantile(ds.drop_vars("nas_quantile"), **kw)
    with pytest.raises(NasprobeError, match="q=0.9 is not a stored quantile"):
        stopping.quantile(ds, q=0.9, **kw)


@pytest.mark.parametrize("rule", list(stopping.RULES))
@pytest.mark.parametrize("seed", range(2))
def test_rules_are_causal_post_hoc_equals_epoch_by_epoch(rule, seed):
    rng = np.random.default_rng(seed)
    deep = ramp_plateau_creep(36) + rng.normal(0, 0.01, 36)
    ds = make_ds(deep, 0.05 + rng.normal(0, 0.01, 36), upper=np.clip(deep + 0.2, 0, 1))
    common = dict(sigma=2.0, patience=2, min_epochs=2)
    params = {"plateau": dict(window=3, tol=0.03), "rise": dict(delta=0.1)}.get(
        rule, dict(window=3, tol=0.03, delta=0.02))
    params.update(common)
    full = stopping.stop_epoch(ds, rule, **params)
    assert full is not None
    for k in range(1, ds.sizes["epoch"] + 1):
        prefix = stopping.stop_epoch(ds.isel(epoch=slice(0, k)), rule, **params)
        last = int(ds["epoch"].values[k - 1])
        assert prefix == (full if last >= full else None), (k, prefix, full)


def test_nan_epochs_are_dropped_and_stop_epochs_covers_runs():
    deep = ramp_plateau_creep()
    with_nan = deep.copy()
    with_nan[20] = np.nan
    a, b = make_ds(deep), make_ds(with_nan)
    assert stopping.rise(b, delta=0.15, **BASE) == 6
    both = xr.concat([a, make_ds(np.full(40, 0.1))], dim="run").assign_coords(run=["a", "b"])
    got = stopping.stop_epochs(both, "rise", delta=0.15, **BASE)
    assert got.sel(run="a") == 6 and np.isnan(got.sel(run="b"))


def test_bad_rule_parameter_and_layers_are_clear_errors():
    ds = make_ds(ramp_plateau_creep())
    with pytest.raises(NasprobeError, match="unknown rule 'nope'"):
        stopping.stop_epoch(ds, "nope")
    with pytest.raises(NasprobeError, match="takes no parameter \\['delta'\\]"):
        stopping.stop_epoch(ds, "plateau", delta=0.1)
    with pytest.raises(NasprobeError, match="deep layers \\['conv9'\\]"):
        stopping.stop_epoch(ds, "plateau", deep=["conv9"])
    with pytest.raises(NasprobeError, match="select one run"):
        stopping.stop_epoch(xr.concat([ds, ds], dim="run"), "plateau")


def test_default_deep_layers_skip_the_prediction_layer():
    assert stopping.deep_layers(LAYERS) == ["conv3", "fc1"]
    assert stopping.deep_layers(["a", "b"]) == ["a"]
    assert stopping.deep_layers(["a"]) == ["a"]


def test_summarize_matches_numpy():
    rng = np.random.default_rng(0)
    maps = {"conv1": rng.uniform(0, 1, (7, 4, 4)), "fc1": rng.uniform(0, 1, (7,))}
    got = stopper.summarize(maps)
    assert np.allclose(got["nas_median"], [np.median(maps["conv1"]), np.median(maps["fc1"])])
    assert np.allclose(got["nas_quantile"][1], np.quantile(maps["fc1"], QUANTILES))


def test_stopper_fires_at_the_epoch_the_post_hoc_rule_gives():
    deep = ramp_plateau_creep()
    live = stopper.Stopper("creep", window=3, tol=0.01, delta=0.02 - 1e-9, **BASE)
    fired_at = None
    for epoch, d in zip(range(-1, 39), deep):
        maps = {name: np.full((3, 2, 2), v) for name, v in
                zip(LAYERS, (0.05, 0.3, d, d, 0.9))}
        if live.update(epoch, maps):
            fired_at = epoch
            break
    assert fired_at == 19 == live.stop_epoch
    assert stopping.creep(live.dataset(), window=3, tol=0.01, delta=0.02 - 1e-9,
                          **BASE) == 19
    assert live.signals[-1]["deep"] == pytest.approx(deep[20])
    with pytest.raises(NasprobeError, match="not after"):
        live.update(3, maps)
