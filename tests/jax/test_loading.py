"""Reading JAX checkpoints: what the adapter claims, safe loading, and bad input (exit 2 naming
the file)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from nasprobe.cli import main
from nasprobe.frameworks import registry as adapters
from nasprobe_jax.loading import fit_state, flatten_tree, parse_model_spec, read_checkpoint
from nasprobe_jax.plugin import adapter

from .conftest import MODEL, save_msgpack
from .models import small_cnn


def test_registered_through_the_entry_point():
    assert adapters.get("jax") is adapter
    assert ".msgpack" in adapters.extensions()


def test_plugin_imports_no_jax():
    code = ("import sys, nasprobe_jax.plugin, nasprobe_jax; "
            "print(sorted(m for m in ('jax', 'flax', 'orbax', 'jax2onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_claims_orbax_folders_and_msgpack_files(jax_run, tmp_path):
    folder = jax_run["orbax"] / "epoch_001"
    assert adapter.claims(folder) and adapters.detect_framework([folder]) == "jax"
    assert adapter.claims(jax_run["msgpack"] / "epoch_001.msgpack")
    assert not adapter.claims(tmp_path)  # a plain folder
    assert not adapter.claims(jax_run["probe"])


def test_both_formats_read_to_the_same_arrays(jax_run):
    a = read_checkpoint(jax_run["orbax"] / "epoch_002")
    b = read_checkpoint(jax_run["msgpack"] / "epoch_002.msgpack")
    assert set(a) == set(b) and ("block2", "conv", "kernel") in a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert isinstance(a[key], np.ndarray)


def test_wrapped_state_is_found_by_suffix():
    flat = flatten_tree({"model": {"fc": {"kernel": {"value": np.ones((2, 3))}}}, "step": 3})
    got = fit_state(flat, {("fc", "kernel"): (2, 3)}, "ckpt")
    assert got[("fc", "kernel")].shape == (2, 3)


def test_model_spec_parsing():
    assert parse_model_spec("pkg.mod:make(width=4, seed=1)") == ("pkg.mod", "make", (),
                                                                 {"width": 4, "seed": 1})


def _invoke(*args):
    return CliRunner().invoke(main, ["probe", *map(str, args)])


def _bad_run(jax_run, tmp_path, fmt):
    """A copy of the run whose first epoch (epoch 0) is the damaged one: fails before export."""
    run = tmp_path / fmt
    shutil.copytree(jax_run[fmt], run)
    return run


def test_corrupt_msgpack_exits_2_naming_the_file(jax_run, tmp_path):
    run = _bad_run(jax_run, tmp_path, "msgpack")
    bad = run / "epoch_000.msgpack"
    bad.write_bytes((run / "epoch_001.msgpack").read_bytes()[:200])  # truncated
    result = _invoke(run, "--probe", jax_run["probe"], "--out", tmp_path / "s.zarr",
                     "--model", MODEL)
    assert result.exit_code == 2, result.output
    assert "epoch_000.msgpack" in result.output and "msgpack" in result.output


def test_corrupt_orbax_folder_exits_2_naming_the_folder(jax_run, tmp_path):
    run = _bad_run(jax_run, tmp_path, "orbax")
    bad = run / "epoch_000"
    shutil.copytree(run / "epoch_001", bad)
    for f in bad.rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"\x00garbage" * 7)
    result = _invoke(run, "--probe", jax_run["probe"], "--out", tmp_path / "s.zarr",
                     "--model", MODEL)
    assert result.exit_code == 2, result.output
    assert "epoch_000" in result.output and "Orbax" in result.output


def test_other_architecture_exits_2_naming_the_tensor(jax_run, tmp_path):
    run = _bad_run(jax_run, tmp_path, "msgpack")
    save_msgpack(small_cnn(width=4), run / "epoch_000.msgpack")
    result = _invoke(run, "--probe", jax_run["probe"], "--out", tmp_path / "s.zarr",
                     "--model", MODEL)
    assert result.exit_code == 2, result.output
    assert "epoch_000.msgpack" in result.output and "has shape (4,)" in result.output
    assert "expects (6,)" in result.output


def test_missing_model_exits_2(jax_run, tmp_path):
    result = _invoke(jax_run["msgpack"], "--probe", jax_run["probe"], "--out",
                     tmp_path / "s.zarr")
    assert result.exit_code == 2 and "--model" in result.output, result.output


def test_linen_modules_are_refused_with_the_reason():
    from flax import linen

    from nasprobe.errors import NasprobeError
    from nasprobe_jax.loading import build_module

    with pytest.raises(NasprobeError, match="Linen"):
        build_module(lambda: linen.Dense(3))


def test_missing_jax_names_the_extra(jax_run, monkeypatch):
    from nasprobe.contract import Checkpoint, SourceOptions
    from nasprobe.errors import NasprobeError

    monkeypatch.setattr(type(adapter), "requires", ("jax", "not_installed_jax_piece"))
    ckpt = Checkpoint(jax_run["orbax"] / "epoch_001", 1)
    with pytest.raises(NasprobeError, match=r"pip install 'nasprobe\[jax\]'"):
        adapters.open_source([ckpt], "jax", SourceOptions(model=MODEL))


def test_checkpoint_manager_steps_are_checkpoints(jax_run, tmp_path):
    """``CheckpointManager`` writes ``<step>/default/``: the step folder is the checkpoint."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from nasprobe.frameworks.checkpoints import find_checkpoints

    net = jax_run["nets"][2]
    with ocp.CheckpointManager((tmp_path / "mgr").resolve()) as mgr:
        for step in (0, 1):
            mgr.save(step, args=ocp.args.StandardSave(nnx.state(net)))
        mgr.wait_until_finished()
    found = find_checkpoints([tmp_path / "mgr"])
    assert [(c.path.name, c.epoch) for c in found] == [("0", 0), ("1", 1)]
    a = read_checkpoint(found[1].path)
    b = read_checkpoint(jax_run["msgpack"] / "epoch_002.msgpack")
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
