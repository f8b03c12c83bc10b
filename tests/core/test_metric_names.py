"""``--metrics`` log columns never overwrite the store's own variables and never make paths: a
column named like a store variable gets the prefix ``log_``, path characters become ``_``, and
two columns that would share a name are refused (exit 2) before any work is done."""

from __future__ import annotations

import numpy as np
import pytest

import nasprobe
from nasprobe.errors import StoreError
from nasprobe.store.training_logs import TrainingLogError, store_metric_names
from nasprobe.store.writer import Store
from tests.hostile import assert_refused, make_store, probe, tree_digest

OWN = ("nas_median", "nas_hist", "probed", "channels", "corr_hist", "loss")


def test_hostile_column_names_are_renamed(tmp_path):
    store, probe_path = make_store(tmp_path)
    before = nasprobe.open_store(store).to_dataset()
    log = tmp_path / "log.csv"
    log.write_text("epoch,nas_median,probed,Channels,heatmaps,a/b,..,../../escape,val_loss\n"
                   "1,0.5,0,7,1,2,3,4,0.25\n2,0.5,0,7,1,2,3,4,0.125\n")
    res = probe(tmp_path / "good", "--probe", probe_path, "--out", store, "--metrics", log)
    assert res.exit_code == 0, (res.output, res.exception)
    after = nasprobe.open_store(store).to_dataset()
    for name in OWN[:-1]:
        np.testing.assert_array_equal(after[name].values, before[name].values, err_msg=name)
    np.testing.assert_array_equal(after["loss"].values, [[0.25, 0.125]])  # val_loss → loss
    for name in ("log_nas_median", "log_probed", "log_Channels", "log_heatmaps", "a_b", "log_..",
                 "log_.._.._escape"):
        assert name in after, name
    assert not (tmp_path / "escape").exists() and not (store / "a").exists()
    assert sorted(p.name for p in store.iterdir() if p.name.startswith(".")) == []


def test_names_that_collide_are_refused_before_probing(tmp_path):
    store, probe_path = make_store(tmp_path)
    log = tmp_path / "log.csv"
    log.write_text("epoch,a/b,a_b\n1,1,2\n")
    before = tree_digest(store)
    res = probe(tmp_path / "good", "--probe", probe_path, "--out", store, "--metrics", log)
    assert_refused(res, log, "'a/b'", "'a_b'", "would both be stored as")
    assert tree_digest(store) == before


def test_store_refuses_its_own_names_from_the_api(tmp_path):
    store, _ = make_store(tmp_path)
    before = tree_digest(store)
    for name in ("nas_median", "probed", "channels", "a/b", "..", "heatmaps"):
        with pytest.raises(StoreError, match="refused"):
            Store(store).write_metrics("good", {name: {1: 0.5}})
    assert tree_digest(store) == before


@pytest.mark.parametrize("names", [["Loss_x", "loss_x"], ["x/y", "x_y"], ["nas_min", "log_nas_min"]])
def test_case_and_prefix_collisions(tmp_path, names):
    with pytest.raises(TrainingLogError, match="would both be stored"):
        store_metric_names({n: {0: 1.0} for n in names}, tmp_path / "log.csv")
