"""The adapter contract, checked on every registered adapter whose framework is installed.

Each adapter of the registry (ONNX built in, the plug-ins through their entry points) brings a
tiny run of two epochs: ``tiny_run(folder) -> SourceOptions`` in ``tests/<name>/contract_fixture.py``
(ONNX's is below). A newly registered adapter is tested here without editing this file; one
without a fixture fails the test that asks for it.

Beyond reading checkpoints, the plug-in packages share names and argument conventions for what
they offer while training (``entropy``, ``NASMonitor``, ``TapCapture``, the checkpoint writers
and callbacks, ``NASEarlyStopping``): the fixture gives ``CHANNEL_AXIS``, ``tensor(a)``,
``array(t)`` and, where the package has the training helpers, ``tiny_model() -> (model, x)``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from nasprobe import entropy as np_entropy
from nasprobe.contract import Adapter, CheckpointSource, SourceOptions, parse_shape
from nasprobe.errors import NasprobeError
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


def _fixture(name: str):
    try:
        return importlib.import_module(f"tests.{name}.contract_fixture")
    except ModuleNotFoundError as exc:
        pytest.fail(f"adapter {name!r} is registered but has no tests/{name}/contract_fixture.py "
                    f"with tiny_run(folder) -> SourceOptions ({exc})")


def _tiny_run(name: str):
    return onnx_tiny_run if name == "onnx" else _fixture(name).tiny_run


#: The plug-ins (ONNX is built into the core and has no package of its own).
PLUGINS = [n for n in NAMES if n != "onnx"]


def _package(name: str):
    """The plug-in's package (``nasprobe_torch`` for the ``torch`` adapter)."""
    return importlib.import_module(type(adapters.get(name)).__module__.partition(".")[0])


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
    assert list(inspect.signature(adapter.make_source).parameters) == ["checkpoints", "options"]
    # the axis order of --input-shape: letters, channels among them (or none: ONNX)
    axes = adapter.input_layout.split(",")
    assert adapter.input_layout == "" or ("C" in axes and all(len(a) == 1 and a.isupper()
                                                              for a in axes))


@pytest.mark.parametrize("name", PLUGINS)
def test_the_package_exports_make_source_with_the_contract_signature(name):
    make_source = _package(name).make_source
    params = inspect.signature(make_source).parameters
    assert list(params) == ["checkpoints", "options"]
    assert params["options"].default == SourceOptions()


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


@pytest.mark.parametrize("name", NAMES)
def test_source_records_provenance_and_gives_the_caller_its_own_model(name, runs):
    folder, options = runs[name]
    ckpts = find_checkpoints([folder])
    source = adapters.open_source(ckpts, name, options)
    assert isinstance(source, CheckpointSource)
    assert isinstance(source.provenance, dict)
    json.dumps(source.provenance)  # goes into the store's attributes as JSON
    first = source.architecture()
    before = first.SerializeToString()
    # the caller owns what it got: changing it (as a graph builder might) changes no later call
    first.graph.node.pop()
    first.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(
        np.zeros(tuple(first.graph.initializer[0].dims), np.float32), first.graph.initializer[0].name))
    again = source.architecture()
    assert again is not first and again.SerializeToString() == before
    # and the model holds the first epoch's weights
    held = {t.name: onnx.numpy_helper.to_array(t) for t in again.graph.initializer}
    for key, value in source.weights(ckpts[0]).items():
        np.testing.assert_array_equal(held[key], value, err_msg=key)


def test_one_shape_parser_for_every_framework():
    assert parse_shape(None) is None
    assert parse_shape("3,32,32") == parse_shape("3x32x32") == parse_shape([3, 32, 32]) == (3, 32, 32)
    assert parse_shape(np.array([28, 28, 1])) == (28, 28, 1)
    assert SourceOptions(input_shape="1,8,8").input_shape == (1, 8, 8)
    for bad in ("", "3,a", "3,0,4", "3.5,2", [2, -1], [2.5]):
        with pytest.raises(NasprobeError, match="expected positive whole numbers in the order H,W,C"):
            parse_shape(bad, "H,W,C")


# -- what the plug-in packages offer while training -------------------------------------------

def _has_training_side(name: str) -> bool:
    """Whether the plug-in offers training-time helpers (the Hugging Face adapter only reads)."""
    return hasattr(_package(name), "entropy")


@pytest.mark.parametrize("name", [n for n in PLUGINS if _has_training_side(n)])
def test_entropy_takes_the_channel_axis_as_axis(name):
    fx = _fixture(name)
    entropy = _package(name).entropy
    param = inspect.signature(entropy).parameters["axis"]
    assert param.default == fx.CHANNEL_AXIS
    a = np.random.default_rng(1).standard_normal((3, 4, 5, 6)).astype(np.float32) * 3
    for axis in (1, -1):
        got = fx.array(entropy(fx.tensor(a), axis=axis))
        np.testing.assert_allclose(got, np_entropy(a.astype(np.float64), axis=axis), atol=1e-5)
    np.testing.assert_allclose(fx.array(entropy(fx.tensor(a))),
                               np_entropy(a.astype(np.float64), axis=fx.CHANNEL_AXIS), atol=1e-5)


def _has_training_helpers(name: str) -> bool:
    return hasattr(_package(name), "NASMonitor")


@pytest.mark.parametrize("name", [n for n in PLUGINS if _has_training_helpers(n)])
def test_nas_monitor_and_tap_capture_read_the_same_way(name):
    pkg = _package(name)
    model, x = _fixture(name).tiny_model()
    monitor = pkg.NASMonitor(model)
    assert monitor.layers and all(isinstance(layer, str) for layer in monitor.layers)
    assert pkg.TapCapture(model).layers == monitor.layers
    maps = monitor.measure(x, batch_size=2)
    assert list(maps) == monitor.layers
    for layer, m in maps.items():
        assert isinstance(m, np.ndarray) and m.dtype == np.float32 and len(m) == len(x), layer
        assert ((m >= 0) & (m < 1)).all(), layer
    # last_nas(): the maps of the last forward pass, here the last batch of measure()
    last = monitor.last_nas()
    assert list(last) == monitor.layers
    for layer in monitor.layers:
        np.testing.assert_allclose(np.asarray(_fixture(name).array(last[layer]), np.float32),
                                   maps[layer][4:], atol=1e-6, err_msg=layer)


STOPPING_KEYWORDS = {"model", "patience", "min_epochs", "layers", "tap", "exclude_bias",
                     "batch_size"}
#: Per training helper: the leading parameters every package's version takes, in order, and
#: keywords they all accept.
SIGNATURES = {
    "NASEarlyStopping": (["probe_x", "rule"], STOPPING_KEYWORDS),
    "NASEarlyStoppingCallback": (["probe_x", "rule"], STOPPING_KEYWORDS),
    "CheckpointCallback": (["folder", "model", "every"], set()),
    "CheckpointWriter": (["folder", "model", "every"], set()),
    "NASMonitor": (["model", "layers", "tap", "exclude_bias"], set()),
    "TapCapture": (["model", "layers", "tap", "exclude_bias"], set()),
    "NASReg": (["model", "layers", "lam", "tap", "exclude_bias"], set()),
    "SparsityReg": (["model", "layers", "lam", "tap", "exclude_bias"], set()),
}
#: Old spellings: reachable (with a DeprecationWarning when used), never in ``__all__``.
RETIRED = {"NASCheckpointCallback"}


@pytest.mark.parametrize("name", [n for n in PLUGINS if _has_training_helpers(n)])
def test_training_helpers_share_names_and_arguments(name):
    pkg = _package(name)
    exported = set(pkg.__all__)
    assert not exported & RETIRED
    # the framework calls *Callback classes; a plain loop calls the others (PyTorch has no
    # callbacks of its own, Lightning and Keras do)
    assert {"NASMonitor", "TapCapture", "CheckpointCallback", "NASEarlyStoppingCallback",
            "entropy", "make_source"} <= exported
    for cls_name, (leading, keywords) in SIGNATURES.items():
        if cls_name not in exported:
            continue
        params = inspect.signature(getattr(pkg, cls_name)).parameters
        assert list(params)[:len(leading)] == leading, (cls_name, list(params))
        assert keywords <= set(params), (cls_name, keywords - set(params))


def test_old_spellings_still_work_with_a_deprecation_warning():
    """Only where users' code would otherwise break (the list in the 0.x changelog)."""
    found = set(PLUGINS)
    if "torch" in found:
        import torch

        import nasprobe_torch
        from nasprobe_torch.taps import entropy

        a = torch.randn(2, 3, 4)
        with pytest.warns(DeprecationWarning, match="axis="):
            torch.testing.assert_close(entropy(a, dim=1), entropy(a, axis=1))
        model, x = _fixture("torch").tiny_model()
        with pytest.warns(DeprecationWarning, match="NASEarlyStopping"):
            old = nasprobe_torch.NASEarlyStopping(model, x, "plateau", patience=4)
        assert old.rule == "plateau" and old.params["patience"] == 4
        with pytest.warns(DeprecationWarning, match="CheckpointCallback"):
            cb = nasprobe_torch.NASCheckpointCallback("ckpts", 2)
        assert cb.every == 2 and cb.model is None
    if "keras" in found:
        import nasprobe_keras

        model, x = _fixture("keras").tiny_model()
        monitor = nasprobe_keras.NASMonitor(model)
        with pytest.warns(DeprecationWarning, match="measure"):
            old = monitor.nas(x)
        new = monitor.measure(x)
        assert all(np.array_equal(old[k], new[k]) for k in new)
        capture = nasprobe_keras.TapCapture(model)
        with pytest.warns(DeprecationWarning, match="layers"):
            assert capture.names == capture.layers
        with pytest.warns(DeprecationWarning, match="NASEarlyStoppingCallback"):
            cb = nasprobe_keras.NASEarlyStopping(x, "plateau", patience=4)
        assert isinstance(cb, nasprobe_keras.NASEarlyStoppingCallback)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        for name in found & {"torch", "keras"}:
            model, x = _fixture(name).tiny_model()
            _package(name).NASMonitor(model).measure(x)  # the new spellings do not warn
    assert not [w for w in caught if "is deprecated: use" in str(w.message)]


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
