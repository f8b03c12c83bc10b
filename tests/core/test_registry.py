"""The adapter registry: plug-ins found through entry points, folders as checkpoints."""

from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nasprobe import contract
from nasprobe.errors import EpochError, NasprobeError, NoCheckpointError
from nasprobe.frameworks import registry as adapters
from nasprobe.frameworks.checkpoints import find_checkpoints
from nasprobe.frameworks.onnx_adapter import OnnxSource
from nasprobe.job.options import ProbeOptions
from nasprobe.job.probe_job import run_folders, run_info
from tests.core import onnx_models as om
from tests.core.conftest import write_run


class FolderAdapter(contract.BaseAdapter):
    """A made-up framework whose checkpoints are folders ``*.ckdir`` holding ``model.onnx``."""

    name = "folderfw"
    extensions = (".ckdir",)
    extra = "folderfw"

    def claims(self, path: Path) -> bool:
        return path.name.endswith(".ckdir") and (path / "model.onnx").is_file()

    def make_source(self, checkpoints, options):
        return FolderSource(checkpoints)


class FolderSource:
    framework = "folderfw"

    def __init__(self, checkpoints):
        self.onnx = OnnxSource([self.inner(c) for c in checkpoints])
        self.provenance = {"inner": "model.onnx"}

    @staticmethod
    def inner(c):
        return contract.Checkpoint(c.path / "model.onnx", c.epoch)

    def architecture(self):
        return self.onnx.architecture()

    def weights(self, checkpoint):
        return self.onnx.weights(self.inner(checkpoint))


class Missing(contract.BaseAdapter):
    name = "missingfw"
    extensions = (".missing",)
    extra = "missingfw"
    requires = ("nasprobe_no_such_module_xyz",)


folder_adapter = FolderAdapter()
missing_adapter = Missing()


@pytest.fixture
def plugins(monkeypatch):
    """Register the two made-up adapters as entry points, for this test only."""
    eps = [EntryPoint("folderfw", f"{__name__}:folder_adapter", adapters.GROUP),
           EntryPoint("missingfw", f"{__name__}:missing_adapter", adapters.GROUP)]
    real = adapters.entry_points

    def fake(group):
        return list(real(group=group)) + (eps if group == adapters.GROUP else [])

    monkeypatch.setattr(adapters, "entry_points", fake)
    adapters.reset()
    yield
    adapters.reset()


def test_builtin_and_installed_adapters():
    names = adapters.names()
    assert names[0] == "onnx" and {"torch", "keras"} <= set(names)
    assert ".onnx" in adapters.extensions() and ".pt" in adapters.extensions()
    # the registry imports the plug-ins, not their frameworks
    for name in names:
        assert isinstance(adapters.get(name), contract.Adapter)
    with pytest.raises(NasprobeError, match="unknown framework 'nope'.*onnx"):
        adapters.get("nope")


def test_folder_checkpoints_of_a_plugin(plugins, tmp_path):
    run = tmp_path / "run"
    for i, name in enumerate(["init.ckdir", "epoch_1.ckdir", "epoch_2.ckdir"]):
        write_run(run / name, om.conv_bn_relu_net, ["model.onnx"], seed=i)
    (run / "notes.ckdir").mkdir()  # no model.onnx: not claimed
    found = find_checkpoints([run])
    assert [(c.path.name, c.epoch) for c in found] == [
        ("init.ckdir", -1), ("epoch_1.ckdir", 1), ("epoch_2.ckdir", 2)]
    # a claimed folder given directly is one checkpoint, not a run folder
    assert [c.epoch for c in find_checkpoints([run / "epoch_2.ckdir"])] == [2]
    assert adapters.detect_framework(c.path for c in found) == "folderfw"
    source = adapters.open_source(found)
    assert source.framework == "folderfw"
    w = source.weights(found[1])
    assert w and all(isinstance(v, np.ndarray) for v in w.values())
    # claimed folders given as arguments are the checkpoints of one run, not runs
    assert run_folders([run / "epoch_1.ckdir", run / "epoch_2.ckdir"]) == [
        ("run", [run / "epoch_1.ckdir", run / "epoch_2.ckdir"])]


def test_probe_reads_a_plugins_folder_checkpoints(plugins, tmp_path, labelled_probe):
    import nasprobe

    run = tmp_path / "run"
    for i, name in enumerate(["epoch_1.ckdir", "epoch_2.ckdir"]):
        write_run(run / name, om.conv_bn_relu_net, ["model.onnx"], seed=i)
    out = nasprobe.probe([run], probe=labelled_probe, out=tmp_path / "s.zarr", progress=False)
    ds = nasprobe.open_store(out).to_dataset()
    assert list(ds.epoch.values) == [1, 2] and bool(ds.probed.all())
    assert run_info(out)["run"]["framework"] == "folderfw"


def test_framework_choices_and_messages_come_from_the_registry(plugins, tmp_path):
    import click

    from nasprobe.cli.probe import framework_options

    @click.command()
    @framework_options
    def cmd(**kw):
        click.echo(kw["framework"])

    res = CliRunner().invoke(cmd, ["--framework", "folderfw"])
    assert res.exit_code == 0 and res.output.strip() == "folderfw"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoCheckpointError, match=r"\.ckdir"):
        find_checkpoints([empty])
    (tmp_path / "a.missing").write_bytes(b"x")
    with pytest.raises(NasprobeError, match=r"nasprobe_no_such_module_xyz.*nasprobe\[missingfw\]"):
        adapters.open_source([contract.Checkpoint(tmp_path / "a.missing", 0)])


def test_keras_architecture_file_is_a_companion(tmp_path):
    for n in ["epoch_1.weights.h5", "epoch_2.weights.h5", "model.keras"]:
        (tmp_path / n).write_bytes(b"x")
    assert [c.path.name for c in find_checkpoints([tmp_path])] == [
        "epoch_1.weights.h5", "epoch_2.weights.h5"]
    (tmp_path / "epoch_1.weights.h5").unlink()
    (tmp_path / "epoch_2.weights.h5").unlink()
    (tmp_path / "epoch_3.keras").write_bytes(b"x")
    with pytest.raises(EpochError, match="model.keras"):
        find_checkpoints([tmp_path])


def test_probe_options_are_validated_and_hashed_once():
    a = ProbeOptions.build("p.npy", tap="preact", input_shape=[1, 8, 8])
    assert a.source.input_shape == (1, 8, 8) and a.fingerprint == ProbeOptions.build(
        "p.npy", tap="preact", input_shape=(1, 8, 8)).fingerprint
    assert a.fingerprint != ProbeOptions.build("p.npy").fingerprint
    with pytest.raises(NasprobeError, match="tap must be one of linear, preact"):
        ProbeOptions("p.npy", tap="post")
    with pytest.raises(NasprobeError, match="batch_size"):
        ProbeOptions("p.npy", batch_size=0)


class NoProvenance(contract.BaseAdapter):
    """A plug-in whose source lacks ``provenance``, which the contract asks for."""

    name = "noprovfw"
    extensions = (".noprov",)
    extra = "noprovfw"

    def make_source(self, checkpoints, options):
        source = FolderSource.__new__(FolderSource)
        return source


def test_a_source_that_breaks_the_contract_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(adapters, "get", lambda name: NoProvenance())
    with pytest.raises(NasprobeError, match="noprovfw adapter gave a source without provenance"):
        adapters.open_source([contract.Checkpoint(tmp_path / "a.noprov", 0)], "noprovfw")
