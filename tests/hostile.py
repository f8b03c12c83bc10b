"""Helpers for the hostile-input tests (tests/*/test_hostile*.py, tests/core/test_fuzz.py).

A hostile file goes through the command line as a user would give it; the test then checks the
exit code (2: bad input), that the message names the file and says what is wrong, and that a
store written before is byte for byte unchanged.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner

from nasprobe.cli import main
from tests.core import onnx_models as om


def tree_digest(path: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under ``path`` (relative posix path → hex digest)."""
    root = Path(path)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_probe(path: Path, n: int = 6, shape=(3, 8, 8), classes: int = 4, seed: int = 1) -> Path:
    """A small labelled ``.npz`` probe set."""
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.normal(0, 1, (n, *shape)).astype(np.float32),
             y=rng.integers(0, classes, n))
    return path


def write_onnx_run(folder: Path, epochs=(1, 2), seed: int = 0) -> list[Path]:
    """ONNX checkpoints ``epoch_NNN.onnx`` of :func:`tests.core.onnx_models.conv_bn_relu_net`."""
    rng = np.random.default_rng(seed)
    model, _ = om.conv_bn_relu_net(rng)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, e in enumerate(epochs):
        m = model if i == 0 else om.reweighted(model, rng)
        paths.append(folder / f"epoch_{e:03d}.onnx")
        onnx.save(m, str(paths[-1]))
    return paths


def probe(*args, catch: bool = True):
    """Run ``nasprobe probe ARGS`` in-process; returns click's ``Result`` (stderr separate)."""
    return CliRunner().invoke(main, ["probe", *map(str, args)], catch_exceptions=catch)


def make_store(tmp: Path) -> tuple[Path, Path]:
    """A store with one probed ONNX run ``good`` (2 epochs); returns (store, probe set)."""
    probe_path = write_probe(tmp / "probe.npz")
    write_onnx_run(tmp / "good")
    store = tmp / "nas.zarr"
    res = probe(tmp / "good", "--probe", probe_path, "--out", store, "--batch-size", "4")
    assert res.exit_code == 0, (res.output, res.exception)
    return store, probe_path


def assert_refused(res, path, *fragments: str) -> None:
    """Exit code 2, no traceback, and a message on stderr naming ``path`` and each fragment."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    err = res.stderr
    assert "Traceback" not in err, err
    assert str(path) in err, (str(path), err)
    for f in fragments:
        assert f in err, (f, err)
