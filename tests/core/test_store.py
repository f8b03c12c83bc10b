"""The store with many writers (issue 13): concurrent jobs as real processes, readers during
writes, runs of different architectures, stores of nasprobe 0.1 and `nasprobe migrate`."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main
from nasprobe.errors import NasprobeError, StoreError
from nasprobe.store.layout import LayerInfo
from nasprobe.store.migrate import migrate
from nasprobe.store.runs import committed_epochs
from nasprobe.store.storage import checked_path, location
from nasprobe.store.writer import Store
from tests.core import onnx_models as om
from tests.core.concurrent_jobs import assert_run_equal, run_together, snapshot_consistent
from tests.core.conftest import write_run, write_runs

LEGACY = __file__.rsplit("/", 1)[0] + "/data/store-0.1.0.zarr"
LEGACY_VIEW = __file__.rsplit("/", 1)[0] + "/data/store-0.1.0-view.npz"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Five run folders (a..e) of the conv model, 3 epochs each, a labelled probe set, and
    each run probed alone into its own store (the reference)."""
    root = tmp_path_factory.mktemp("runs")
    probe = write_runs(root, "abcde", last=3, seed=10, probe_seed=0)
    for name in "abcde":
        nasprobe.probe([root / name], probe=probe, out=root / f"alone-{name}.zarr", run=name,
                       batch_size=8, keep_images=2, progress=False)
    return root, probe


ROUNDS = 2


def test_four_jobs_on_different_runs_all_land(runs, tmp_path):
    """Stores holding run a; four processes (runs b..e) start probing into each at the same
    moment, twice: all five runs land, each equal to the run probed alone."""
    root, probe = runs
    outs = [tmp_path / f"s{i}.zarr" for i in range(ROUNDS)]
    for out in outs:
        nasprobe.probe([root / "a"], probe=probe, out=out, run="a", batch_size=8,
                       keep_images=2, progress=False)
    results = run_together([(root / r, probe, r, outs) for r in "bcde"], tmp_path / "sync",
                           rounds=ROUNDS)
    assert [r.returncode for r in results] == [0] * 4, [r.stderr[-2000:] for r in results]
    for out in outs:
        ds = nasprobe.open_store(out).to_dataset()
        assert sorted(ds["run"].values.tolist()) == list("abcde")
        assert ds["run"].values[0] == "a"  # runs keep the order their first job started
        for r in "abcde":
            assert_run_equal(out, root / f"alone-{r}.zarr", r)


def test_four_jobs_on_one_run_commit_each_epoch_once(runs, tmp_path):
    """Four processes on the same run at once, twice: each epoch is committed by exactly one
    job, and the run equals the run probed alone (no mix of two jobs' values)."""
    root, probe = runs
    outs = [tmp_path / f"s{i}.zarr" for i in range(ROUNDS)]
    results = run_together([(root / "e", probe, "e", outs)] * 4, tmp_path / "sync",
                           rounds=ROUNDS)
    assert [r.returncode for r in results] == [0] * 4, [r.stderr[-2000:] for r in results]
    for out in outs:
        commits = committed_epochs(location(out), "e")
        assert sorted(commits) == [1, 2, 7]
        groups = {p.name for p in (out / "runs" / "e").iterdir() if p.name[0].isdigit()}
        # A job that starts after the others finished finds nothing to do and writes nothing.
        assert {m["job"] for m in commits.values()} <= groups and 1 <= len(groups) <= 4
        assert_run_equal(out, root / "alone-e.zarr", "e")


def test_readers_during_writes_see_only_committed_cells(tmp_path):
    """open_store, `nasprobe info` and `nasprobe report` while a job writes: every cell they
    see marked probed holds its final values; cells not yet committed are NaN. (40 epochs: a
    serial job commits in blocks of up to 16 epochs, see docs/store-design.md.)"""
    folder = tmp_path / "run"
    write_run(folder, om.conv_bn_relu_net, [f"epoch_{i:03d}.onnx" for i in range(40)])
    rng = np.random.default_rng(1)
    probe = tmp_path / "probe.npz"
    # 1,600 images: the job's last commit comes about 0.5 s after its first (with 400, 0.15 s:
    # a reader on a busy machine could open the store only after it)
    np.savez(probe, x=rng.normal(0, 1, (1600, 3, 8, 8)).astype(np.float32),
             y=rng.integers(0, 4, 1600))
    out = tmp_path / "s.zarr"
    # The report's imports (matplotlib) first, so that the reads below keep up with the job.
    warm = CliRunner().invoke(main, ["report", LEGACY, "--out", str(tmp_path / "w.html")])
    assert warm.exit_code == 0, warm.output
    proc = subprocess.Popen([sys.executable, "-m", "nasprobe", "probe", str(folder), "--probe",
                             str(probe), "--out", str(out), "--run", "r", "--batch-size", "8"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    snaps, infos, reported, empty_reported = [], [], False, False
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        commits = out / "runs" / "r" / "commits"
        if not empty_reported and commits.exists():  # the store exists, nothing committed yet
            res = CliRunner().invoke(main, ["report", str(out), "--out", str(tmp_path / "r0.html")])
            assert res.exit_code == 0, res.output
            empty_reported = True
        if not commits.exists() or not any(p.name.isdigit() for p in commits.iterdir()):
            time.sleep(0.01)
            continue
        snaps.append(nasprobe.open_store(out))
        res = CliRunner().invoke(main, ["info", str(out)])
        assert res.exit_code == 0, res.output
        infos.append(res.output)
        if not reported:
            res = CliRunner().invoke(main, ["report", str(out), "--out", str(tmp_path / "r.html")])
            assert res.exit_code == 0, res.output
            reported = True
    assert proc.wait() == 0, proc.stderr.read()
    final = nasprobe.open_store(out)
    seen = [snapshot_consistent(s, final) for s in snaps]
    assert any(0 < n < 40 for n in seen), seen  # some reads happened mid-job
    assert seen == sorted(seen)
    assert all("r: " in text for text in infos)


def _summary(rng, spatial, value):
    return {"nas_median": value, "nas_mean": value, "nas_min": value, "nas_max": value,
            "entropy_mean": value, "nas_quantile": np.full(5, value),
            "nas_hist": rng.integers(0, 5, 100), "nas_map": np.full(spatial, value, np.float32),
            "nas_image_map": np.full((2, *spatial), value, np.float32)}


def test_runs_of_different_architectures_share_a_store(tmp_path):
    """Layers are the union in graph order; a layer a run lacks is NaN for it; maps of one
    layer name of different sizes are padded with NaN."""
    rng = np.random.default_rng(0)
    store = Store(tmp_path / "s.zarr")
    store.create_or_check({"tap": "linear", "exclude_bias": False, "probe_sha256": "x",
                           "probe_size": 4})
    a = [LayerInfo("conv1", "Conv", 4, (3, 3), 0), LayerInfo("fc", "Gemm", 2, (), 1)]
    b = [LayerInfo("conv1", "Conv", 4, (2, 2), 0), LayerInfo("conv2", "Conv", 3, (2, 2), 1),
         LayerInfo("fc", "Gemm", 2, (), 2)]
    for name, layers, epochs in (("a", a, [0, 1]), ("b", b, [1, 5])):
        w = store.open_run(name, epochs, layers, 2, {"source": name})
        for e in epochs:
            assert w.write_epoch(e, {x.name: _summary(rng, x.spatial, 0.1 * e + len(x.name))
                                     for x in layers}, {"loss": float(e)})
    tree = nasprobe.open_store(tmp_path / "s.zarr")
    ds = tree.to_dataset()
    assert ds["layer"].values.tolist() == ["conv1", "conv2", "fc"]
    assert ds["epoch"].values.tolist() == [0, 1, 5]
    assert np.isnan(ds["nas_median"].sel(run="a", layer="conv2")).all()
    assert ds["nas_median"].sel(run="b", layer="conv2", epoch=5) == pytest.approx(5.5)
    assert ds["probed"].values.tolist() == [[1, 1, 0], [0, 1, 1]]
    assert ds["loss"].sel(run="a").values.tolist()[:2] == [0.0, 1.0]
    maps = tree["heatmaps/conv1"].to_dataset()["nas_map"]
    assert maps.shape == (2, 3, 3, 3)
    assert np.isnan(maps.sel(run="b", epoch=1).values[2, :]).all()
    assert maps.sel(run="b", epoch=1).values[:2, :2] == pytest.approx(np.full((2, 2), 5.1))
    # Jobs that recorded no probe set are read as having used the store's own ("x").
    assert json.loads(ds.attrs["runs"]) == {
        "a": {"source": "a", "probe_sets": [{"sha256": "x", "source": "", "epochs": [0, 1]}]},
        "b": {"source": "b", "probe_sets": [{"sha256": "x", "source": "", "epochs": [1, 5]}]}}


def test_legacy_store_opens_as_written(tmp_path):
    """A store written by nasprobe 0.1 (committed in tests/core/data, with the view that
    version's open_store returned) opens with the same values."""
    tree = nasprobe.open_store(LEGACY)
    want = np.load(LEGACY_VIEW)
    ds = tree.to_dataset()
    assert ds["run"].values.tolist() == want["run"].tolist()
    assert ds["epoch"].values.tolist() == want["epoch"].tolist()
    assert ds["layer"].values.tolist() == want["layer"].tolist()
    for key in want.files:
        if key in ("run", "epoch", "layer"):
            continue
        node, _, name = key.rpartition("/")
        np.testing.assert_array_equal(tree[node or "/"].to_dataset(inherit=False)[name].values,
                                      want[key], err_msg=key)


def test_migrate_then_add_a_run(runs, tmp_path):
    """Probing into a 0.1 store is refused (exit 2, naming `nasprobe migrate`); the migrated
    store holds the same view and takes new runs."""
    root, probe = runs
    res = CliRunner().invoke(main, ["probe", str(root / "a"), "--probe", str(probe), "--out",
                                    LEGACY, "--force"])
    assert res.exit_code == 2 and "nasprobe migrate" in res.stderr
    new = tmp_path / "new.zarr"
    res = CliRunner().invoke(main, ["migrate", LEGACY, "--out", str(new)])
    assert res.exit_code == 0, res.output
    old, got = nasprobe.open_store(LEGACY), nasprobe.open_store(new)
    for node in old.subtree:
        a, b = node.to_dataset(inherit=False), got[node.path].to_dataset(inherit=False)
        for name in a.data_vars:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    runs = json.loads(got.attrs["runs"])
    for run, p in runs.items():  # the migrated store records each epoch's probe set
        done = old.to_dataset()["probed"].sel(run=run).values.astype(bool)
        assert p.pop("probe_sets") == [{"sha256": old.attrs["probe_sha256"],
                                        "source": old.attrs["probe_source"],
                                        "epochs": old["epoch"].values[done].tolist()}]
    assert runs == json.loads(old.attrs["runs"])
    with pytest.raises(StoreError, match="exists already"):
        migrate(LEGACY, new)
    nasprobe.probe([root / "a"], probe=probe, out=new, run="c", batch_size=8, keep_images=2,
                   progress=False, force=True)
    ds = nasprobe.open_store(new).to_dataset()
    assert ds["run"].values.tolist() == ["a", "b", "c"]
    assert_run_equal(new, LEGACY, "b")


def test_url_is_never_a_local_path(tmp_path, monkeypatch):
    """`s3:/bucket` (a URL that lost a slash) is refused; a memory:// store is written
    through fsspec and leaves no local folder behind."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NasprobeError, match="slash lost"):
        checked_path("s3:/bucket/nas.zarr")
    assert checked_path("C:/data/nas.zarr") == "C:/data/nas.zarr"  # a drive letter is a path
    store = Store("memory://nasprobe-test/nas.zarr")
    store.create_or_check({"tap": "linear", "exclude_bias": False, "probe_sha256": "x",
                           "probe_size": 1})
    w = store.open_run("r", [3], [LayerInfo("fc", "Gemm", 2, (), 0)], 0, {})
    assert w.write_epoch(3, {"fc": _summary(np.random.default_rng(0), (), 0.5)})
    assert w.commit(3)  # the same job again (a Dask task run twice): still its values
    other = store.open_run("r", [3], [LayerInfo("fc", "Gemm", 2, (), 0)], 0, {})
    assert other.todo == [] and other.done == {3}
    assert not other.write_epoch(3, {"fc": _summary(np.random.default_rng(0), (), 0.25)})
    ds = nasprobe.open_store("memory://nasprobe-test/nas.zarr").to_dataset()
    assert float(ds["nas_median"].sel(run="r", epoch=3, layer="fc")) == 0.5
    assert list(tmp_path.iterdir()) == []


def test_info_reads_a_legacy_store_and_its_migrated_copy_alike(tmp_path):
    """`nasprobe info` reads a 0.1 store through its xarray view and a current one with zarr
    alone (nasprobe.store.runs): the same runs, epochs, layers and metrics either way."""
    new = tmp_path / "new.zarr"
    assert CliRunner().invoke(main, ["migrate", LEGACY, "--out", str(new)]).exit_code == 0
    old_out = CliRunner().invoke(main, ["info", LEGACY])
    new_out = CliRunner().invoke(main, ["info", str(new)])
    assert old_out.exit_code == 0 and new_out.exit_code == 0, (old_out.output, new_out.output)

    def body(text):  # the run lines, the layer block and the metrics: not the attributes
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("runs ("))
        return [line for line in lines[start:] if not line.startswith("    ")]

    want = np.load(LEGACY_VIEW)
    got = body(old_out.output)
    assert got == body(new_out.output)
    assert got[0] == f"runs ({len(want['run'])}):"
    assert f"layers ({len(want['layer'])}):" in got
    assert got[-2].startswith("metrics: loss, accuracy")
    assert got[-1].startswith("unit activity: not recorded")  # neither store has it
