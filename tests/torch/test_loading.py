"""Reading checkpoint files safely, fitting their keys, and parsing --model."""

from __future__ import annotations

import builtins

import pytest
import torch

from nasprobe.contract import Checkpoint, SourceOptions
from nasprobe.errors import CheckpointError, NasprobeError
from nasprobe_torch import make_source, models
from nasprobe_torch.loading import (
    build_model,
    fit_state_dict,
    load_file,
    parse_model_spec,
    state_dict_of,
)

from .conftest import TINY, SequenceNet, randomize


class Payload:
    """Unpickling this object would create a file: the test checks it never does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": SequenceNet().state_dict(), "extra": Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as info:
        load_file(path)
    assert "--trust-pickle" in str(info.value) and "epoch_1.pt" in str(info.value)
    src = make_source([Checkpoint(path, 1)], SourceOptions(model=SequenceNet))
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        src.architecture()
    assert not marker.exists()


def test_pickled_module_needs_trust(tmp_path):
    model = randomize(SequenceNet(), seed=3)
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_file(path)
    loaded = load_file(path, trust_pickle=True)
    assert isinstance(loaded, SequenceNet)
    for k, v in state_dict_of(loaded, path).items():
        assert torch.equal(v, model.state_dict()[k])


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_file(path)


def test_fit_state_dict_strips_wrapper_and_common_prefixes(tmp_path):
    sd = models.vanilla_net(**TINY).state_dict()
    shapes = {k: v.shape for k, v in sd.items()}
    for prefixed in ({f"module.module.{k}": v for k, v in sd.items()},
                     {f"_orig_mod.{k}": v for k, v in sd.items()},
                     {**{f"net.{k}": v for k, v in sd.items()}, "criterion.weight": torch.ones(3)}):
        fitted = fit_state_dict(prefixed, shapes, tmp_path / "x.ckpt")
        assert set(fitted) == set(sd)


def test_state_dict_of_explains_what_it_found(tmp_path):
    with pytest.raises(CheckpointError, match="'epoch'.*'optimizer'"):
        state_dict_of({"epoch": 1, "optimizer": {"lr": 0.1}}, tmp_path / "x.pt")


def test_parse_model_spec_reads_literals_only():
    assert parse_model_spec("pkg.mod:make") == ("pkg.mod", "make", (), {})
    assert parse_model_spec("a/b.py:make(3, widths=(1, 2), name='x', bn=True)") == (
        "a/b.py", "make", (3,), {"widths": (1, 2), "name": "x", "bn": True})
    for bad in ("no_colon", "m:f(x=__import__('os').system('true'))", "m:f(**{'a': 1})",
                "m:f(x=", "m:1f"):
        with pytest.raises(NasprobeError):
            parse_model_spec(bad)


def test_build_model_from_module_and_file(tmp_path):
    net = build_model("nasprobe_torch.models:vanilla_net(widths=(2, 2, 3, 3, 4), input_size=8)")
    assert isinstance(net, models.VanillaNet) and net.conv1.out_channels == 2
    assert net.input_shape == (3, 8, 8)
    file = tmp_path / "my_net.py"
    file.write_text("import torch\n\ndef make(width=2):\n"
                    "    return torch.nn.Sequential(torch.nn.Linear(4, width))\n")
    seq = build_model(f"{file}:make(width=5)")
    assert seq[0].out_features == 5
    with pytest.raises(NasprobeError, match="has no"):
        build_model(f"{file}:missing")
    with pytest.raises(NasprobeError, match="not a torch.nn.Module"):
        build_model("builtins:dict")


def test_paper_sizes():
    for size, widths in models.SIZES.items():
        net = models.vanilla_net(size)
        assert [getattr(net, f"conv{i}").out_channels for i in range(1, 5)] == list(widths[:4])
        assert net.fc1.out_features == widths[4]
        assert net.fc1.in_features == widths[3] * 8 * 8
    norm, drop = models.norm_net("s"), models.drop_net("s")
    assert isinstance(norm.bn3, torch.nn.BatchNorm2d) and models.vanilla_net("s").bn3 is None
    assert drop.drop1.p == 0.25 and drop.drop_fc1.p == 0.5
    x = torch.randn(2, 3, 32, 32)
    assert norm.eval()(x).shape == (2, 10)
