"""``nasprobe onsets``: the onset table, and a stopping rule's epoch per run."""

import pytest
from click.testing import CliRunner

import nasprobe
from nasprobe import stopping
from nasprobe.cli import main
from nasprobe.cli.onsets import parse_params


@pytest.fixture
def store(conv_run, labelled_probe, tmp_path):
    folder, _, _ = conv_run
    out = tmp_path / "s.zarr"
    nasprobe.probe([folder], probe=labelled_probe, out=out, run="a", progress=False)
    return out


def test_rule_epoch_per_run_equals_the_python_rule(store):
    ds = nasprobe.open_store(store).to_dataset()
    now = ["patience=1", "min_epochs=0"]
    for rule, params in (("rise", ["delta=0.0", *now]), ("rise", ["delta=0.9"]),
                         ("plateau", ["window=1", "tol=1.0", "min_rise=0.0", *now])):
        res = CliRunner().invoke(main, ["onsets", str(store), "--rule", rule,
                                        *sum((["--param", p] for p in params), [])])
        assert res.exit_code == 0, res.output
        want = stopping.stop_epoch(ds.sel(run=["a"]), rule, **parse_params(tuple(params)))
        assert res.output.splitlines()[-1] == f"a\t{'never' if want is None else want}"
        assert res.output.startswith(f"# rule {rule}: ")
    # delta=0 fires at the first epoch allowed (min_epochs 0; the run has epochs -1, 1, 2)
    assert "a\t1" in CliRunner().invoke(main, ["onsets", str(store), "--rule", "rise",
                                               "--param", "delta=0.0", "--param", "patience=1",
                                               "--param", "min_epochs=0"]).output


def test_without_rule_prints_the_onset_table(store):
    res = CliRunner().invoke(main, ["onsets", str(store)])
    assert res.exit_code == 0, res.output
    head, row = res.output.splitlines()
    assert head.startswith("run\tloss_onset\tnas_onset:")
    assert row.split("\t")[0] == "a" and len(row.split("\t")) == len(head.split("\t"))


@pytest.mark.parametrize("args, message", [
    (["--rule", "plateau", "--param", "delta=0.1"], "takes no parameter ['delta']"),
    (["--rule", "rise", "--param", "delta"], "expected NAME=VALUE"),
    (["--run", "zz"], "no run ['zz']"),
    (["--param", "delta=1"], "--param needs --rule"),
])
def test_bad_input_exits_2_with_a_message(store, args, message):
    res = CliRunner().invoke(main, ["onsets", str(store), *args])
    assert res.exit_code == 2 and message in res.output


def test_parse_params_reads_literals():
    assert parse_params(("a=1", "b=0.5", "c=['x', 'y']", "d=conv4")) == {
        "a": 1, "b": 0.5, "c": ["x", "y"], "d": "conv4"}
