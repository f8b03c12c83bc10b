"""Two experiments under one run name (issue 24, item 2): a run records the checkpoint folder
it was started from; checkpoints of another folder under the same default name (the folder's)
are refused (exit 2, saying to pass --run or --force), --force replaces the run, --run NAME
joins folders on purpose, and every job says how many epochs it skipped as already stored."""

import json

import numpy as np
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main
from tests.core import onnx_models as om
from tests.core.concurrent_jobs import assert_run_equal, run_together
from tests.core.conftest import write_run
from tests.hostile import tree_digest, write_probe

EPOCHS = [f"epoch_{e:03d}.onnx" for e in (1, 2, 3)]


def _probe(*args):
    return CliRunner().invoke(main, ["probe", *map(str, args), "--batch-size", "4",
                                     "--keep-images", "1"])


def _experiments(tmp_path, names=EPOCHS, batch_size=4, keep_images=1):
    """exp1/ck and exp2/ck: one folder name, other weights; a reference store of each."""
    probe = write_probe(tmp_path / "probe.npz")
    for i in (1, 2):
        write_run(tmp_path / f"exp{i}" / "ck", om.conv_bn_relu_net, names, seed=10 + i)
        nasprobe.probe([tmp_path / f"exp{i}" / "ck"], out=tmp_path / f"ref{i}.zarr", probe=probe,
                       batch_size=batch_size, keep_images=keep_images, progress=False)
    return probe


def test_second_experiment_under_one_name_is_refused(tmp_path):
    """probe exp1/ck then probe exp2/ck into one store: the second is exit 2 naming both
    folders and --run, and the store is byte for byte unchanged; with --run it becomes a
    second run; probing exp1/ck again says that all its epochs were skipped."""
    probe = _experiments(tmp_path)
    out = tmp_path / "nas.zarr"
    res = _probe(tmp_path / "exp1" / "ck", "--probe", probe, "--out", out)
    assert res.exit_code == 0, res.output
    assert "3 epochs to probe, 0 skipped as already in" in res.stderr, res.stderr
    before = tree_digest(out)
    res = _probe(tmp_path / "exp2" / "ck", "--probe", probe, "--out", out)
    assert res.exit_code == 2, (res.output, res.exception)
    for part in ("run 'ck'", str(tmp_path / "exp1" / "ck"), str(tmp_path / "exp2" / "ck"),
                 "--run NAME", "--force"):
        assert part in res.stderr, (part, res.stderr)
    assert "Traceback" not in res.stderr
    assert tree_digest(out) == before
    res = _probe(tmp_path / "exp2" / "ck", "--probe", probe, "--out", out, "--run", "ck2")
    assert res.exit_code == 0, res.output
    assert_run_equal(out, tmp_path / "ref1.zarr", "ck")
    ds = nasprobe.open_store(out).to_dataset()
    assert ds["run"].values.tolist() == ["ck", "ck2"]
    np.testing.assert_array_equal(ds["nas_median"].sel(run="ck2").values,
                                  nasprobe.open_store(tmp_path / "ref2.zarr").to_dataset()
                                  ["nas_median"].sel(run="ck").values)
    res = _probe(tmp_path / "exp1" / "ck", "--probe", probe, "--out", out)
    assert res.exit_code == 0, res.output
    assert "run ck: 0 epochs to probe, 3 skipped as already in" in res.stderr, res.stderr


def test_force_replaces_the_run(tmp_path):
    """--force with another folder deletes the run's stored epochs and probes the new
    folder's: the run then equals exp2's reference, and info names exp2 as its source."""
    probe = _experiments(tmp_path)
    out = tmp_path / "nas.zarr"
    assert _probe(tmp_path / "exp1" / "ck", "--probe", probe, "--out", out).exit_code == 0
    res = _probe(tmp_path / "exp2" / "ck", "--probe", probe, "--out", out, "--force")
    assert res.exit_code == 0, res.output
    assert "deleted its 3 stored epochs" in res.stderr, res.stderr
    assert "3 epochs to probe, 0 skipped" in res.stderr
    assert_run_equal(out, tmp_path / "ref2.zarr", "ck")
    ds = nasprobe.open_store(out).to_dataset()
    assert ds["run"].values.tolist() == ["ck"]
    assert json.loads(ds.attrs["sources"])["ck"] == str(tmp_path / "exp2" / "ck")
    info = CliRunner().invoke(main, ["info", str(out)])
    assert str(tmp_path / "exp2" / "ck") in info.output
    assert str(tmp_path / "exp1") not in info.output


def test_run_named_explicitly_joins_folders(tmp_path):
    """--run NAME declares the run: checkpoints of another folder join it (a notice names both
    folders), and epochs it already holds are skipped and said so."""
    probe = _experiments(tmp_path)
    out = tmp_path / "nas.zarr"
    first = tmp_path / "exp1" / "ck"
    (first / "epoch_003.onnx").unlink()
    assert _probe(first, "--probe", probe, "--out", out, "--run", "joined").exit_code == 0
    res = _probe(tmp_path / "exp2" / "ck", "--probe", probe, "--out", out, "--run", "joined")
    assert res.exit_code == 0, res.output
    assert f"adding checkpoints of {tmp_path / 'exp2' / 'ck'} to the run started from {first}" \
        in res.stderr, res.stderr
    assert "run joined: 1 epochs to probe, 2 skipped as already in" in res.stderr, res.stderr
    ds = nasprobe.open_store(out).to_dataset()
    assert ds["epoch"].values.tolist() == [1, 2, 3]
    ref2 = nasprobe.open_store(tmp_path / "ref2.zarr").to_dataset()
    np.testing.assert_array_equal(ds["nas_median"].sel(run="joined", epoch=3).values,
                                  ref2["nas_median"].sel(run="ck", epoch=3).values)


def test_same_folder_from_another_working_directory_continues(tmp_path, monkeypatch):
    """The recorded source is the resolved folder: a relative path from another working
    directory, with a trailing slash, is the same run and continues it."""
    probe = _experiments(tmp_path)
    out = tmp_path / "nas.zarr"
    folder = tmp_path / "exp1" / "ck"
    (folder / "epoch_003.onnx").rename(tmp_path / "later.onnx")
    assert _probe(folder, "--probe", probe, "--out", out).exit_code == 0
    (tmp_path / "later.onnx").rename(folder / "epoch_003.onnx")
    monkeypatch.chdir(tmp_path / "exp1")
    res = _probe("ck/", "--probe", probe, "--out", out)
    assert res.exit_code == 0, res.output
    assert "run ck: 1 epochs to probe, 2 skipped as already in" in res.stderr, res.stderr
    assert_run_equal(out, tmp_path / "ref1.zarr", "ck")


def test_two_experiments_started_together_never_mix(tmp_path):
    """x1/ck and x2/ck (8 epochs each) started at the same moment into one store under one
    run name: exactly one job is refused, and the run holds all epochs of the other one,
    equal to its own reference (before, the run mixed epochs of both)."""
    names = [f"epoch_{e:03d}.onnx" for e in range(8)]
    probe = _experiments(tmp_path, names, batch_size=8, keep_images=2)  # as run_together
    out = tmp_path / "nas.zarr"
    results = run_together([(tmp_path / f"exp{i}" / "ck", probe, "", [out]) for i in (1, 2)],
                           tmp_path / "sync")  # run "": the default name, the folder's
    codes = [r.returncode for r in results]
    assert sorted(codes) == [0, 1], [r.stderr[-1500:] for r in results]
    loser = results[codes.index(1)]
    assert "two experiments under one run name" in loser.stderr, loser.stderr[-1500:]
    winner = codes.index(0) + 1
    ds = nasprobe.open_store(out).to_dataset()
    assert ds["epoch"].values.tolist() == list(range(8))
    assert_run_equal(out, tmp_path / f"ref{winner}.zarr", "ck")
    assert json.loads(ds.attrs["sources"])["ck"] == str(tmp_path / f"exp{winner}" / "ck")
