"""Bad input through the command line: exit code 2 and a message naming the file and the
fault; with ``--on-error skip`` the other epochs are stored and the skipped ones listed."""

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import nasprobe
from nasprobe.cli import main
from nasprobe.job.probe_job import run_info
from nasprobe.probesets import arrays
from tests.core import onnx_models as om
from tests.core.conftest import write_run

EPOCHS = ["epoch_001.onnx", "epoch_002.onnx", "epoch_003.onnx"]


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "run"
    write_run(folder, om.conv_bn_relu_net, EPOCHS)
    return folder


def probe_cmd(tmp_path, *args, probe=None, out="s.zarr"):
    if probe is None:
        probe = tmp_path / "probe.npz"
        rng = np.random.default_rng(1)
        np.savez(probe, x=rng.normal(0, 1, (10, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 10))
    return CliRunner().invoke(main, ["probe", *map(str, args), "--probe", str(probe),
                                     "--out", str(tmp_path / out), "--batch-size", "4"])


def committed(tmp_path, out="s.zarr"):
    ds = nasprobe.open_store(tmp_path / out).to_dataset()
    return ds.epoch.values[ds.probed.any("run").values].tolist()


def poison(path, value=np.nan):
    """Set one value of ``conv2.weight`` in the ONNX checkpoint ``path`` to ``value``."""
    m = onnx.load(str(path))
    for i, t in enumerate(m.graph.initializer):
        if t.name == "conv2.weight":
            w = numpy_helper.to_array(t).copy()
            w[0, 0, 0, 0] = value
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, t.name))
    onnx.save(m, str(path))


def assert_bad(res, *fragments):
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    for f in fragments:
        assert f in res.stderr, (f, res.stderr)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_checkpoint_fails_or_is_skipped(run, tmp_path, damage):
    bad = run / "epoch_002.onnx"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x8f" * 4000)
    assert_bad(probe_cmd(tmp_path, run), str(bad), "not a readable ONNX model")
    res = probe_cmd(tmp_path, run, "--on-error", "skip")
    assert res.exit_code == 0, res.output
    assert committed(tmp_path) == [1, 3]
    assert list(run_info(tmp_path / "s.zarr")["run"]["skipped"]) == [str(bad)]
    info = CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr")])
    assert f"skipped {bad}: not a readable ONNX model" in info.output


def test_corrupt_first_checkpoint_is_skipped_too(run, tmp_path):
    first = run / "epoch_001.onnx"
    first.write_bytes(first.read_bytes()[:100])
    assert_bad(probe_cmd(tmp_path, run), str(first), "not a readable ONNX model")
    assert probe_cmd(tmp_path, run, "--on-error", "skip").exit_code == 0
    assert committed(tmp_path) == [2, 3]
    assert list(run_info(tmp_path / "s.zarr")["run"]["skipped"]) == [str(first)]


def test_checkpoint_of_another_architecture(run, tmp_path):
    other, _ = om.conv_bn_relu_net(np.random.default_rng(5), widths=(7, 5))
    onnx.save(other, str(run / "epoch_004.onnx"))
    assert_bad(probe_cmd(tmp_path, run), str(run / "epoch_004.onnx"), "'conv1.weight' has shape (7, 3, 3, 3)",
               "the architecture has (6, 3, 3, 3)")
    assert probe_cmd(tmp_path, run, "--on-error", "skip").exit_code == 0
    assert committed(tmp_path) == [1, 2, 3]
    assert "has shape" in run_info(tmp_path / "s.zarr")["run"]["skipped"][str(run / "epoch_004.onnx")]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_weights_give_nan_with_a_warning(run, tmp_path, value):
    path = run / "epoch_002.onnx"
    poison(path, value)
    probe = tmp_path / "p.npy"
    np.save(probe, np.random.default_rng(2).normal(0, 1, (6, 3, 8, 8)).astype(np.float32))
    with pytest.warns(UserWarning, match=r"epoch_002\.onnx: non-finite weights in conv2\.weight"):
        nasprobe.probe([run], probe=probe, out=tmp_path / "s.zarr", progress=False)
    ds = nasprobe.open_store(tmp_path / "s.zarr").to_dataset()
    med = ds.nas_median.sel(run="run")
    assert np.isfinite(med.sel(epoch=[1, 3])).all()
    assert np.isfinite(med.sel(epoch=2, layer="conv1"))
    assert np.isnan(med.sel(epoch=2, layer="conv2")) and np.isnan(ds.nas_mean.sel(run="run", epoch=2, layer="conv2"))
    assert np.isnan(ds.nas_quantile.sel(run="run", epoch=2, layer="conv2")).all()
    assert ds.probed.sel(run="run").values.all()
    assert run_info(tmp_path / "s.zarr")["run"]["nonfinite"] == {str(path): ["conv2.weight"]}
    info = CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr")])
    assert f"non-finite weights in {path} (conv2.weight)" in info.output


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_bad(probe_cmd(tmp_path, tmp_path / "empty"), str(tmp_path / "empty"), "holds no checkpoint file")


def test_folder_of_run_folders_names_them(run, tmp_path):
    assert_bad(probe_cmd(tmp_path, tmp_path), str(tmp_path), "sub-folders run do", f"nasprobe probe {tmp_path}/*")


def test_empty_run_folder_among_runs_is_skipped(run, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_bad(probe_cmd(tmp_path, run, tmp_path / "empty"), "holds no checkpoint file")
    res = probe_cmd(tmp_path, run, tmp_path / "empty", "--on-error", "skip")
    assert res.exit_code == 0 and "skipped run empty" in res.stderr
    assert committed(tmp_path) == [1, 2, 3]


def test_two_files_claiming_one_epoch(run, tmp_path):
    (run / "epoch_002.onnx").rename(run / "epoch_2.onnx")
    (run / "model-2.onnx").write_bytes((run / "epoch_003.onnx").read_bytes())
    assert_bad(probe_cmd(tmp_path, run), "claims epoch 2, as does")
    res = probe_cmd(tmp_path, run, "--on-error", "skip")
    assert res.exit_code == 0, res.output
    assert committed(tmp_path) == [1, 3]
    assert sorted(run_info(tmp_path / "s.zarr")["run"]["skipped"]) == \
        [str(run / "epoch_2.onnx"), str(run / "model-2.onnx")]


@pytest.mark.parametrize("array, fault", [
    (np.zeros((4, 3, 9, 9), np.float32), "probe shape (4, 3, 9, 9) does not fit the model input (N, 3, 8, 8)"),
    (np.zeros((4, 4, 8, 8), np.float32), "probe shape (4, 4, 8, 8) does not fit the model input (N, 3, 8, 8)"),
    (np.zeros((4, 3, 8, 8), np.complex64), "dtype complex64"),
    (np.full((4, 3, 8, 8), "a"), "dtype <U1"),
], ids=["shape", "channels", "complex", "strings"])
def test_probe_set_that_does_not_fit(run, tmp_path, array, fault):
    np.save(tmp_path / "bad.npy", array)
    assert_bad(probe_cmd(tmp_path, run, probe=tmp_path / "bad.npy"), str(tmp_path / "bad.npy"), fault)
    assert not (tmp_path / "s.zarr").exists()


def test_nan_in_a_large_probe_file_fails_before_the_store_and_is_read_again(run, tmp_path,
                                                                            monkeypatch):
    # a memory-mapped .npy is hashed and checked on a thread while the job builds its model
    monkeypatch.setattr(arrays, "RESIDENT_BYTES", 0)
    x = np.random.default_rng(2).normal(0, 1, (10, 3, 8, 8)).astype(np.float32)
    x[6, 1, 2, 3] = np.nan
    np.save(tmp_path / "big.npy", x)
    assert_bad(probe_cmd(tmp_path, run, probe=tmp_path / "big.npy"), str(tmp_path / "big.npy"),
               "probe image 6 has non-finite values")
    assert not (tmp_path / "s.zarr").exists()
    x[6, 1, 2, 3] = 0.0  # mended: the same process reads it again instead of its failed copy
    np.save(tmp_path / "big.npy", x)
    res = probe_cmd(tmp_path, run, probe=tmp_path / "big.npy")
    assert res.exit_code == 0, res.output
    assert committed(tmp_path) == [1, 2, 3]


def test_store_of_another_probe_set_needs_force(run, tmp_path):
    assert probe_cmd(tmp_path, run).exit_code == 0
    np.save(tmp_path / "other.npy", np.ones((5, 3, 8, 8), np.float32))
    res = CliRunner().invoke(main, ["probe", str(run), "--probe", str(tmp_path / "other.npy"), "--out",
                                    str(tmp_path / "s.zarr"), "--run", "again"])
    assert_bad(res, str(tmp_path / "s.zarr"), "was written with another probe set", "--force")
    res = CliRunner().invoke(main, ["probe", str(run), "--probe", str(tmp_path / "other.npy"), "--out",
                                    str(tmp_path / "s.zarr"), "--run", "again", "--force"])
    assert res.exit_code == 0, res.output


def test_external_data_outside_its_folder_is_refused(run, tmp_path):
    (tmp_path / "secret.bin").write_bytes(np.zeros(54, np.float32).tobytes())
    m = onnx.load(str(run / "epoch_003.onnx"))
    for t in m.graph.initializer:
        if t.name == "conv2.weight":
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "216")):
                e = t.external_data.add()
                e.key, e.value = k, v
    onnx.save(m, str(run / "epoch_003.onnx"))
    assert_bad(probe_cmd(tmp_path, run), str(run / "epoch_003.onnx"),
               "initializer 'conv2.weight' points to external data outside its folder", "refused")


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_store_path_that_cannot_be_written(run, tmp_path, where):
    (tmp_path / "afile").write_text("not a folder")
    out = "afile" if where == "file" else "afile/nas.zarr"
    fault = "is a file, not a store folder" if where == "file" else f"cannot be created: {tmp_path / 'afile'} is a file"
    assert_bad(probe_cmd(tmp_path, run, out=out), str(tmp_path / out), fault)


def test_a_warning_is_not_lost_to_a_filter_another_epoch_sets(run, tmp_path, monkeypatch):
    """Short epochs are probed side by side (2 streams). While the job's main thread reports
    epoch 1's non-finite weights, epoch 2's source reads its checkpoint with every warning
    ignored for 0.3 s (``warnings.catch_warnings`` acts on all threads at once, as transformers'
    loader does): the report waits for it, and the warning reaches the caller."""
    import threading
    import time
    import warnings

    from nasprobe import kernels
    from nasprobe.frameworks.onnx_adapter import OnnxSource
    from nasprobe.job import runtime

    path = run / "epoch_001.onnx"
    poison(path)
    original, readers = OnnxSource.weights, set()

    def quiet_reader(self, checkpoint):
        readers.add(threading.get_ident())
        if checkpoint.epoch == 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                time.sleep(0.3)
                return original(self, checkpoint)
        return original(self, checkpoint)

    monkeypatch.setattr(OnnxSource, "weights", quiet_reader)
    probe = tmp_path / "p.npy"
    np.save(probe, np.random.default_rng(2).normal(0, 1, (6, 3, 8, 8)).astype(np.float32))
    try:
        runtime.set_intra_op_threads(2)
        kernels.set_threads(2)
        with pytest.warns(UserWarning, match=r"epoch_001\.onnx: non-finite weights in conv2"):
            nasprobe.probe([run], probe=probe, out=tmp_path / "s.zarr", progress=False,
                           nas_on="host")
    finally:
        runtime.set_intra_op_threads(None)
        kernels.set_threads(None)
    assert len(readers) == 2 and threading.get_ident() not in readers  # two epoch threads
    assert run_info(tmp_path / "s.zarr")["run"]["nonfinite"] == {str(path): ["conv2.weight"]}


def test_the_nonfinite_warning_points_at_the_callers_line(run, tmp_path):
    """The warning of a serial job names the line that called ``nasprobe.probe``, not a line
    inside nasprobe (``stacklevel``), whichever way the job probes its epochs."""
    import warnings

    path = run / "epoch_002.onnx"
    poison(path)
    probe = tmp_path / "p.npy"
    np.save(probe, np.random.default_rng(2).normal(0, 1, (6, 3, 8, 8)).astype(np.float32))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        nasprobe.probe([run], probe=probe, out=tmp_path / "s.zarr", progress=False)
    got = [w for w in seen if "non-finite weights" in str(w.message)]
    assert len(got) == 1 and got[0].filename == __file__, [(w.filename, w.lineno) for w in got]
