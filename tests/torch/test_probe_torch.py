"""End to end: nasprobe.probe on PyTorch checkpoints stores the NAS of torch's own tensors
(forward hooks: Conv/Linear module outputs for ``linear``, ReLU module inputs for ``preact``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nasprobe
from nasprobe.measures.correlation import corr_histogram
from nasprobe.measures.nas import nas
from nasprobe_torch import models

from .conftest import TINY, randomize

MODEL = "nasprobe_torch.models:norm_net(widths=(3, 3, 4, 4, 5), input_size=8)"
PREACT_OF = {"conv1": "relu1", "conv2": "relu2", "conv3": "relu3", "conv4": "relu4",
             "fc1": "relu_fc1"}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "normnet"
    folder.mkdir()
    nets = {}
    for epoch in (1, 2):
        net = randomize(models.norm_net(**TINY), seed=40 + epoch)
        torch.save({"epoch": epoch, "model_state_dict": net.state_dict()},
                   folder / f"epoch_{epoch}.pth")
        nets[epoch] = net
    x = np.random.default_rng(5).standard_normal((5, 3, 8, 8)).astype(np.float32)
    probe = folder.parent / "probe.npz"
    np.savez(probe, x=x)
    return folder, probe, x, nets


def _hooks(net, x):
    linear, relu_in, handles = {}, {}, []
    for name, m in net.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, n=name: linear.__setitem__(n, o.numpy())))
        elif isinstance(m, torch.nn.ReLU):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, n=name: relu_in.__setitem__(n, i[0].numpy())))
    with torch.no_grad():
        net(torch.from_numpy(x))
    for h in handles:
        h.remove()
    return linear, relu_in


@pytest.mark.parametrize("tap", ["linear", "preact"])
def test_probe_stores_nas_of_torch_tensors(run_folder, tmp_path, tap):
    folder, probe, x, nets = run_folder
    store = tmp_path / f"{tap}.zarr"
    nasprobe.probe([folder], probe=probe, out=store, run="r", framework="torch", model=MODEL,
                   input_shape=(3, 8, 8), tap=tap, progress=False)
    tree = nasprobe.open_store(store)
    layers = list(tree["/"].dataset["layer"].values)
    expected_layers = ["conv1", "conv2", "conv3", "conv4", "fc1"] + (["fc2"] if tap == "linear"
                                                                     else [])
    assert layers == expected_layers
    for epoch, net in nets.items():
        linear, relu_in = _hooks(net, x)
        for layer in layers:
            tensor = linear[layer] if tap == "linear" else relu_in[PREACT_OF[layer]]
            stored = tree[f"heatmaps/{layer}"]["nas_image_map"].sel(run="r", epoch=epoch)
            stored = stored.isel(image=slice(0, len(x))).values
            np.testing.assert_allclose(stored, nas(tensor.astype(np.float64), axis=1),
                                       rtol=1e-4, atol=1e-4, err_msg=f"{tap} {layer} {epoch}")


#: Per model kind: its ``--model`` spec and, for ``preact``, the ReLU module whose input is each
#: layer's pre-activation (layers absent here reach no nonlinearity: logits, a residual sum).
MODELS = {
    "vanilla": ("nasprobe_torch.models:vanilla_net(widths=(3, 3, 4, 4, 5), input_size=8)",
                {"conv1": "relu1", "conv2": "relu2", "conv3": "relu3", "conv4": "relu4",
                 "fc1": "relu_fc1"}),
    "drop": ("nasprobe_torch.models:drop_net(widths=(3, 3, 4, 4, 5), input_size=8)",
             {"conv1": "relu1", "conv2": "relu2", "conv3": "relu3", "conv4": "relu4",
              "fc1": "relu_fc1"}),
    "residual_depthwise": ("tests.torch.conftest:ResidualNet",
                           {"conv1": "relu1", "depthwise": "relu_dw"}),
    "conv1d_sequence": ("tests.torch.conftest:SequenceNet",
                        {"conv1": "act1", "conv2": "act2", "embed": "act3"}),
}


@pytest.mark.parametrize("tap", ["linear", "preact"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_model_kind_end_to_end(kind, tap, tmp_path):
    """VanillaNet, DropNet (eval mode), a residual depthwise-separable net, Conv1d and a Linear
    on (N, T, D) sequences: the stored per-image NAS maps equal numpy NAS of torch's tensors."""
    from .conftest import FACTORIES, save_pair, torch_taps

    spec, preact_of = MODELS[kind]
    nets = save_pair(kind, tmp_path / kind)
    shape = FACTORIES[kind]().input_shape
    x = np.random.default_rng(3).standard_normal((4, *shape)).astype(np.float32)
    np.save(tmp_path / "probe.npy", x)
    store = tmp_path / "s.zarr"
    nasprobe.probe([tmp_path / kind], probe=tmp_path / "probe.npy", out=store, run="r",
                   framework="torch", model=spec, input_shape=shape, tap=tap, progress=False)
    tree = nasprobe.open_store(store)
    layers = list(tree.to_dataset()["layer"].values)
    modules = dict(nets[0].named_modules())
    for epoch, net in zip((1, 2), nets):
        linear, relu_in = torch_taps(net, x)
        assert layers == (list(linear) if tap == "linear" else list(preact_of))
        for layer in layers:
            tensor = linear[layer] if tap == "linear" else relu_in[preact_of[layer]]
            axis = -1 if isinstance(modules[layer], torch.nn.Linear) else 1
            stored = tree[f"heatmaps/{layer}"]["nas_image_map"].sel(run="r", epoch=epoch).values
            np.testing.assert_allclose(stored, nas(tensor.astype(np.float64), axis=axis),
                                       rtol=1e-4, atol=1e-4, err_msg=f"{kind} {tap} {layer}")
            # Filter correlations from the framework's own weights (2020 paper Fig. 7).
            w = dict(net.named_modules())[layer].weight.detach().numpy()
            np.testing.assert_array_equal(
                tree.to_dataset().corr_hist.sel(run="r", epoch=epoch, layer=layer).values,
                corr_histogram(w))
