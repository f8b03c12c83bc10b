"""Fixtures for the core tests: folders of per-epoch ONNX checkpoints and probe sets."""

import numpy as np
import onnx
import pytest

from tests.core import onnx_models as om


def write_run(folder, builder, names, seed=0, scale=1.0):
    """Save one ONNX file per name in ``folder``: same graph, new weights per file."""
    rng = np.random.default_rng(seed)
    model, expected = builder(rng)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        m = model if i == 0 else om.reweighted(model, rng, scale=scale)
        onnx.save(m, str(folder / name))
        paths.append(folder / name)
    return paths, expected


@pytest.fixture
def conv_run(tmp_path):
    """A run folder of 3 epochs (init, 1, 2) of the conv/BN/relu/gemm model."""
    paths, expected = write_run(tmp_path / "vanilla", om.conv_bn_relu_net,
                                ["init.onnx", "epoch_001.onnx", "epoch_002.onnx"])
    return tmp_path / "vanilla", paths, expected


@pytest.fixture
def labelled_probe(tmp_path):
    """21 probe images (3, 8, 8) with labels in 0..3, as an .npz."""
    rng = np.random.default_rng(42)
    path = tmp_path / "probe.npz"
    np.savez(path, x=rng.normal(0, 1, (21, 3, 8, 8)).astype(np.float32),
             y=rng.integers(0, 4, 21))
    return path
