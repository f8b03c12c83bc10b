"""Every checkpoint format gives the same weights; self-contained programs need no --model (but
--trust-pickle: they are code); checkpoints of another architecture are refused naming the file
and the tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from nasprobe.contract import Checkpoint, SourceOptions
from nasprobe.errors import CheckpointError, NasprobeError
from nasprobe_torch import make_source, models

from .conftest import TINY, linear_outputs, randomize, run_onnx, torch_taps

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit")

FACTORY = "nasprobe_torch.models:norm_net(widths=(3, 3, 4, 4, 5), input_size=8)"


def _write_all(folder, model):
    """The same weights in every supported format; returns format → file."""
    sd = model.state_dict()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    files = {
        "plain": ("plain.pt", sd),
        "state_dict": ("nested.pth", {"state_dict": sd, "epoch": 3}),
        "model_state_dict": ("nested2.pth", {"model_state_dict": sd, "epoch": 3,
                                             "optimizer_state_dict": opt.state_dict()}),
        "model": ("nested3.bin", {"model": sd, "meta": {"note": "x"}}),
        "ddp": ("ddp.pt", {f"module.{k}": v for k, v in sd.items()}),
        "compiled_ddp": ("compiled.pt", {f"module._orig_mod.{k}": v for k, v in sd.items()}),
        "lightning": ("lightning.ckpt", {
            "epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.4.0",
            "state_dict": {**{f"model.{k}": v for k, v in sd.items()},
                           "loss_fn.pos_weight": torch.ones(2)},
            "loops": {}, "callbacks": {}, "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [], "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.01}}),
    }
    out = {}
    for fmt, (name, obj) in files.items():
        torch.save(obj, folder / name)
        out[fmt] = folder / name
    out["safetensors"] = folder / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out["safetensors"]))
    x = torch.randn(2, *model.input_shape)
    out["torchscript"] = folder / "scripted.pt"
    torch.jit.trace(model, (x,)).save(str(out["torchscript"]))
    out["pt2"] = folder / "program.pt2"
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(out["pt2"]))
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    model = randomize(models.norm_net(**TINY), seed=7)
    return model, _write_all(folder, model)


FORMATS = ["plain", "state_dict", "model_state_dict", "model", "ddp", "compiled_ddp", "lightning",
           "safetensors", "torchscript", "pt2"]


def test_every_format_yields_the_same_weights_and_misfits_are_named(saved, tmp_path):
    """One export (from the plain state dict); every format's weights equal it; checkpoints
    of another architecture are refused naming the file and the tensor."""
    model, files = saved
    source = make_source([Checkpoint(files["plain"], 0)],
                         SourceOptions(model=FACTORY, trust_pickle=True))
    source.architecture()
    reference = source.weights(Checkpoint(files["plain"], 0))
    np.testing.assert_array_equal(reference["conv1.weight"], model.conv1.weight.detach().numpy())
    for fmt in FORMATS:
        got = source.weights(Checkpoint(files[fmt], 1))
        assert set(got) == set(reference), fmt
        for name in reference:
            np.testing.assert_array_equal(got[name], reference[name], err_msg=f"{fmt}: {name}")
    check_other_architecture_names_file_and_tensor(source, tmp_path)


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_self_contained_programs_need_no_model(saved, fmt):
    model, files = saved
    src = make_source([Checkpoint(files[fmt], 0), Checkpoint(files["plain"], 1)],
                      SourceOptions(input_shape=(3, 8, 8) if fmt == "torchscript" else None,
                                    trust_pickle=True))
    arch = src.architecture()
    assert sum(n.op_type == "BatchNormalization" for n in arch.graph.node) == 4
    taps = linear_outputs(arch)
    assert list(taps) == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    linear, _ = torch_taps(model, x)
    for ckpt in src.checkpoints:
        got = run_onnx(arch, src.weights(ckpt), x, list(taps.values()))
        for layer, tensor in taps.items():
            np.testing.assert_allclose(got[tensor], linear[layer], rtol=1e-4, atol=1e-4,
                                       err_msg=f"{fmt} {ckpt.path.name}: {layer}")


def check_other_architecture_names_file_and_tensor(source, tmp_path):
    wider = models.norm_net(widths=(3, 6, 4, 4, 5), input_size=8).state_dict()
    torch.save(wider, tmp_path / "wider.pt")
    with pytest.raises(CheckpointError) as info:
        source.weights(Checkpoint(tmp_path / "wider.pt", 2))
    assert "wider.pt" in str(info.value) and "'conv2.weight'" in str(info.value)
    assert "(6, 3, 3, 3)" in str(info.value)

    sd = models.norm_net(**TINY).state_dict()
    missing = {k: v for k, v in sd.items() if k != "fc2.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing\.pt.*'fc2\.bias'"):
        source.weights(Checkpoint(tmp_path / "missing.pt", 3))

    torch.save({**sd, "extra.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"extra\.pt.*'extra\.weight'"):
        source.weights(Checkpoint(tmp_path / "extra.pt", 4))


def test_wrong_first_checkpoint_is_refused_before_export(tmp_path):
    torch.save(models.vanilla_net(**TINY).state_dict(), tmp_path / "vanilla.pt")
    src = make_source([Checkpoint(tmp_path / "vanilla.pt", 0)], SourceOptions(model=FACTORY))
    with pytest.raises(CheckpointError, match=r"vanilla\.pt.*'bn1\.weight'"):
        src.architecture()


def test_state_dict_without_model_asks_for_model(saved):
    _, files = saved
    with pytest.raises(CheckpointError, match=r"plain\.pt.*--model"):
        make_source([Checkpoint(files["plain"], 0)]).architecture()


def test_missing_input_shape_is_asked_for(saved):
    _, files = saved
    src = make_source([Checkpoint(files["torchscript"], 0)], SourceOptions(trust_pickle=True))
    with pytest.raises(NasprobeError, match="--input-shape"):
        src.architecture()
