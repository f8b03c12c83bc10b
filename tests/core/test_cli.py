"""The command line: probe, info, export; errors on stderr with exit code 2."""

import os
import subprocess
import sys
import textwrap
from functools import partial

import numpy as np
import onnxruntime as ort
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main
from nasprobe.measures.nas import nas
from tests.core import onnx_models as om


def test_probe_then_info(conv_run, labelled_probe, tmp_path):
    folder, _, _ = conv_run
    out = tmp_path / "nas.zarr"
    runner = CliRunner()
    res = runner.invoke(main, ["probe", str(folder), "--probe", str(labelled_probe), "--out",
                               str(out), "--run", "vanilla", "--keep-images", "2"])
    assert res.exit_code == 0, res.output
    dt = nasprobe.open_store(out)
    assert dt["heatmaps/conv1"].to_dataset().sizes["image"] == 2
    res = runner.invoke(main, ["info", str(out)])
    assert res.exit_code == 0, res.output
    for text in ["vanilla: 3 epochs (-1..2)", "conv1", "Conv", "channels=6", "locations=64",
                 "fc", "channels=4", "tap: linear", "probe_size: 21", "metrics: loss, accuracy"]:
        assert text in res.output


def test_export_writes_tapped_files(conv_run, tmp_path):
    folder, paths, expected = conv_run
    res = CliRunner().invoke(main, ["export", str(folder), "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "x").glob("*.onnx"))
    assert [f.name for f in files] == ["epoch_001.onnx", "epoch_002.onnx", "init.onnx"]
    x = np.random.default_rng(0).normal(0, 1, (3, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "x" / "epoch_002.onnx"))
    names = [o.name for o in sess.get_outputs()]
    assert names[:4] == ["y", "tap::conv1", "tap::conv2", "tap::fc"]
    outs = dict(zip(names, sess.run(None, {"x": x})))
    ref = ort.InferenceSession(om.with_outputs(__import__("onnx").load(str(paths[2])), ["c1"]).SerializeToString())
    y, c1 = ref.run(["y", "c1"], {"x": x})
    np.testing.assert_allclose(outs["y"], y, atol=1e-6)
    np.testing.assert_allclose(outs["tap::conv1"], c1, atol=1e-6)
    np.testing.assert_allclose(outs["nasprobe_nas::conv1"], nas(c1.astype(np.float64), axis=1), atol=1e-5)


def test_bad_input_exits_2_with_the_file_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    np.save(tmp_path / "p.npy", np.zeros((2, 3, 8, 8), np.float32))
    res = CliRunner().invoke(main, ["probe", str(empty), "--probe", str(tmp_path / "p.npy"),
                                    "--out", str(tmp_path / "s.zarr")])
    assert res.exit_code == 2
    assert "empty" in res.output and "no checkpoint file" in res.output


def test_image_maps_stop_at_the_probe_set_size(conv_run, tmp_path):
    folder, _, _ = conv_run
    np.save(tmp_path / "three.npy", np.random.default_rng(1).normal(0, 1, (3, 3, 8, 8)).astype(np.float32))
    nasprobe.probe([folder], probe=tmp_path / "three.npy", out=tmp_path / "s.zarr", keep_images=8,
                   progress=False)
    maps = nasprobe.open_store(tmp_path / "s.zarr")["heatmaps/conv1"].to_dataset().nas_image_map
    assert maps.sizes["image"] == 3 and np.isfinite(maps.values).all()


def test_export_never_overwrites_checkpoints_or_its_own_files(tmp_path):
    """ckpt.12 / ckpt.13 get their own files; --out equal to the source folder is refused
    before anything is written, and the checkpoints stay as they were."""
    import hashlib

    from tests.core.conftest import write_run

    run = tmp_path / "run"
    write_run(run, om.conv_bn_relu_net, ["ckpt.12.onnx", "ckpt.13.onnx"])
    res = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["ckpt.12.onnx", "ckpt.13.onnx"]
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}
    for out in (run, run / "." / ""):
        res = CliRunner().invoke(main, ["export", str(run), "--out", str(out)])
        assert res.exit_code == 2 and "checkpoints' own folder" in res.stderr, res.output
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()} == digest


def test_the_console_script_starts_openblas_with_one_thread_unless_told_otherwise():
    """The command line's only matrix products run on one thread, so OpenBLAS's other threads
    would only spin on the cores the probe streams need; a value the user set is kept."""
    code = textwrap.dedent("""
        import os
        from nasprobe.cli import main
        main(["--version"], standalone_mode=False)
        import numpy, threadpoolctl
        blas = [p for p in threadpoolctl.threadpool_info() if p["internal_api"] == "openblas"]
        print(os.environ["OPENBLAS_NUM_THREADS"], blas[0]["num_threads"])
    """)
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    run = partial(subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True,
                  timeout=120, check=True)
    assert run(env=env).stdout.split()[-2:] == ["1", "1"]
    assert run(env={**env, "OPENBLAS_NUM_THREADS": "2"}).stdout.split()[-2] == "2"
