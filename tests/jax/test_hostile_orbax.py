"""Hostile Orbax folders end as exit 2 naming the folder, never as a dead process.

Orbax allocates what an array's metadata declares. A 209-byte edited ``.zarray`` declaring
20000×20000×3×4 float32 (19 GB) aborted the process on ``std::bad_alloc`` (exit 134, which
``--on-error skip`` cannot catch). The declared shapes are now compared with the model's
before anything is restored, arrays the model does not use are never restored, and a symbolic
link leaving the checkpoint folder is refused. The command runs in a child process whose
address space is capped, so that a regression fails the test instead of the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.hostile import assert_refused, probe

from .conftest import MODEL, trained_like

CAP = 8 << 30  # JAX reserves ~1.6 GB of address space; 19 GB can never fit


def save_zarr_orbax(tree, folder):
    """An Orbax folder with one zarr array folder per tensor (``use_ocdbt=False``), the layout
    whose ``.zarray`` files the issue edited."""
    import orbax.checkpoint as ocp

    ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False))
    ckptr.save(folder.resolve(), args=ocp.args.PyTreeSave(tree))


@pytest.fixture(scope="module")
def zarr_run(tmp_path_factory):
    """``run/epoch_000`` and ``run/epoch_001`` (the small CNN's state), and a probe set."""
    from flax import nnx

    root = tmp_path_factory.mktemp("zarr_run")
    for epoch in (0, 1):
        save_zarr_orbax(nnx.state(trained_like(epoch + 1)), root / "run" / f"epoch_{epoch:03d}")
    x = np.random.default_rng(7).standard_normal((3, 8, 8, 2)).astype(np.float32)
    np.savez(root / "probe.npz", x=x)
    return root


def _copy(zarr_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(zarr_run / "run", run)
    return run


def _declare(zarray, shape):
    meta = json.loads(zarray.read_text())
    meta["shape"] = meta["chunks"] = list(shape)
    zarray.write_text(json.dumps(meta))


def _probe_capped(run, zarr_run, tmp_path):
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, "
            f"({CAP}, {CAP})); from nasprobe.cli import main; main(sys.argv[1:])")
    args = ["probe", str(run), "--probe", str(zarr_run / "probe.npz"), "--out",
            str(tmp_path / "s.zarr"), "--model", MODEL]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_a_declared_shape_of_19_gb_is_refused_before_restoring(zarr_run, tmp_path):
    run = _copy(zarr_run, tmp_path)
    zarray = run / "epoch_000" / "conv1.kernel.value" / ".zarray"
    _declare(zarray, (20000, 20000, 3, 4))
    assert zarray.stat().st_size < 300
    res = _probe_capped(run, zarr_run, tmp_path)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert str(run / "epoch_000") in res.stderr
    assert ("tensor 'conv1.kernel' is declared with shape (20000, 20000, 3, 4) in the Orbax "
            "metadata (nothing was restored); the model expects (3, 3, 2, 6)") in res.stderr
    assert "Traceback" not in res.stderr


def test_a_later_epoch_declaring_another_shape_is_refused_too(zarr_run, tmp_path):
    run = _copy(zarr_run, tmp_path)
    _declare(run / "epoch_001" / "fc.kernel.value" / ".zarray", (50000, 50000))
    res = _probe_capped(run, zarr_run, tmp_path)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert str(run / "epoch_001") in res.stderr and "'fc.kernel' is declared" in res.stderr


def test_arrays_the_model_does_not_use_are_never_restored(zarr_run, tmp_path):
    """Optimizer state beside the model's: its declared size is not the model's business."""
    from flax import nnx

    run = tmp_path / "run"
    for epoch in (0, 1):
        pure = nnx.to_pure_dict(nnx.state(trained_like(epoch + 1)))
        save_zarr_orbax({"model": pure, "opt": {"mu": np.zeros((4, 4), np.float32)}},
                        run / f"epoch_{epoch:03d}")
        _declare(run / f"epoch_{epoch:03d}" / "opt.mu" / ".zarray", (20000, 20000, 3, 4))
    res = _probe_capped(run, zarr_run, tmp_path)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])


def test_a_symlinked_array_folder_leaving_the_checkpoint_is_refused(zarr_run, tmp_path):
    run = _copy(zarr_run, tmp_path)
    outside = tmp_path / "elsewhere"
    array = run / "epoch_000" / "conv1.kernel.value"
    shutil.move(array, outside)
    array.symlink_to(outside, target_is_directory=True)
    res = probe(run, "--probe", zarr_run / "probe.npz", "--out", tmp_path / "s.zarr",
                "--model", MODEL)  # in this process: nothing here allocates much
    assert_refused(res, run / "epoch_000", f"conv1.kernel.value is a symbolic link to {outside}, "
                   "outside the checkpoint folder; refused")
    assert not (tmp_path / "s.zarr").exists()


def test_a_symlink_inside_the_checkpoint_is_fine(zarr_run, tmp_path):
    from nasprobe_jax.loading import read_checkpoint

    run = _copy(zarr_run, tmp_path)
    folder = run / "epoch_000"
    array = folder / "fc.bias.value"
    shutil.move(array, folder / "moved")
    array.symlink_to(folder / "moved", target_is_directory=True)
    want = read_checkpoint(zarr_run / "run" / "epoch_000")
    got = read_checkpoint(folder)
    np.testing.assert_array_equal(got[("fc", "bias")], want[("fc", "bias")])
