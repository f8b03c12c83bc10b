"""The adapter contract, checked on every registered adapter whose framework is installed.

Each adapter of the registry (ONNX built in, the plug-ins through their entry points) brings a
tiny run of two epochs: ``tiny_run(folder) -> SourceOptions`` in ``tests/<name>/contract_fixture.py``
(ONNX's is below). A newly registered adapter is tested here without editing this file; one
without a fixture fails the test that asks for it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from nasprobe.contract import Adapter, SourceOptions
from nasprobe.frameworks import registry as adapters
from nasprobe.frameworks.checkpoints import find_checkpoints
from tests.core import onnx_models as om
from tests.core.conftest import write_run


def _installed(adapter) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in adapter.requires)


#: Registered adapters whose dependencies are importable here.
NAMES = [name for name, a in adapters.registered().items() if _installed(a)]


def onnx_tiny_run(folder: Path) -> SourceOptions:
    """Two ONNX epochs of the small conv/BN/relu/gemm model."""
    write_run(folder, om.conv_bn_relu_net, ["epoch_001.onnx", "epoch_002.onnx"], seed=3)
    return SourceOptions()


def _tiny_run(name: str):
    if name == "onnx":
        return onnx_tiny_run
    try:
        module = importlib.import_module(f"tests.{name}.contract_fixture")
    except ModuleNotFoundError as exc:
        pytest.fail(f"adapter {name!r} is registered but has no tests/{name}/contract_fixture.py "
                    f"with tiny_run(folder) -> SourceOptions ({exc})")
    return module.tiny_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, SourceOptions]]:
    """``{adapter name: (run folder, options)}`` for every adapter tested here."""
    root = tmp_path_factory.mktemp("adapter_runs")
    out = {}
    for name in NAMES:
        folder = root / name
        out[name] = (folder, _tiny_run(name)(folder))
    return out


def test_torch_keras_and_onnx_are_registered():
    assert {"onnx", "torch", "keras"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_follows_the_protocol(name):
    adapter = adapters.get(name)
    assert isinstance(adapter, Adapter) and adapter.name == name
    assert adapter.extensions and all(e.startswith(".") and e == e.lower()
                                      for e in adapter.extensions)
    assert adapter.extra


@pytest.mark.parametrize("name", NAMES)
def test_claims_its_checkpoints_and_no_others(name, runs):
    adapter = adapters.get(name)
    own = [c.path for c in find_checkpoints([runs[name][0]])]
    assert len(own) == 2 and all(adapter.claims(p) for p in own)
    assert all(adapters.claimant(p) is adapter for p in own)
    for other, (folder, _) in runs.items():
        if other != name:
            theirs = [c.path for c in find_checkpoints([folder])]
            assert not any(adapter.claims(p) for p in theirs), (name, other, theirs)


@pytest.mark.parametrize("name", NAMES)
def test_source_gives_a_valid_onnx_model_and_its_initializers(name, runs):
    folder, options = runs[name]
    ckpts = find_checkpoints([folder])
    assert adapters.detect_framework(c.path for c in ckpts) == name
    source = adapters.open_source(ckpts, "auto", options)
    assert source.framework == name
    model = source.architecture()
    onnx.checker.check_model(model)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    weights = [source.weights(c) for c in ckpts]
    for w in weights:
        assert w and set(w) <= set(inits)
        for key, value in w.items():
            assert isinstance(value, np.ndarray) and value.shape == inits[key], key
            assert np.isfinite(value).all(), key
    # the two epochs hold different weights, and each source reads its own epoch
    assert any(not np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_registry_imports_no_framework():
    """Finding the adapters (as every ``nasprobe`` command does) imports none of their
    frameworks: the plug-in objects are cheap."""
    frameworks = sorted({m.split(".")[0] for a in adapters.registered().values()
                         for m in a.requires} - {"onnx"})
    code = ("import sys, json; from nasprobe.frameworks import registry as adapters; adapters.registered(); "
            "adapters.extensions(); "
            f"print(json.dumps([m for m in {frameworks!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == []
