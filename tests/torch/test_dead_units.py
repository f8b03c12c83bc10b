"""Dead units of PyTorch checkpoints against torch's own forward hooks: NormNet (Conv → BN →
ReLU) with BatchNorm near identity and fc1's bias at +20, so that no unit is dead, but for the
BatchNorm shifts (conv2, conv3) or fc1 biases of exactly k channels set to -1e4, which never
fire; ``unit_activity`` must be the share of positive ReLU inputs per channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nasprobe
from nasprobe_torch import models

from .conftest import TINY, randomize

MODEL = "nasprobe_torch.models:norm_net(widths=(3, 3, 4, 4, 5), input_size=8)"
RELU_OF = {"conv1": "relu1", "conv2": "relu2", "conv3": "relu3", "conv4": "relu4",
           "fc1": "relu_fc1"}
KILLED = {1: {"bn2.bias": [0, 2]}, 2: {"fc1.bias": [1, 3, 4], "bn3.bias": [3]}}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dead") / "normnet"
    folder.mkdir()
    nets = {}
    for epoch, killed in KILLED.items():
        net = randomize(models.norm_net(**TINY), seed=60 + epoch)
        state = net.state_dict()
        with torch.no_grad():
            for name in state:  # BatchNorm near identity, so that no other unit is dead
                if name.startswith("bn") and name.endswith(("weight", "running_var")):
                    state[name][:] = 1.0
                elif name.startswith("bn") and name.endswith(("bias", "running_mean")):
                    state[name][:] = 0.0
            state["fc1.bias"][:] = 20.0  # fc1's units fire, but for those killed below
            for name, channels in killed.items():
                state[name][channels] = -1e4
        net.load_state_dict(state)
        torch.save({"epoch": epoch, "model_state_dict": net.state_dict()},
                   folder / f"epoch_{epoch}.pth")
        nets[epoch] = net
    x = np.random.default_rng(7).standard_normal((64, 3, 8, 8)).astype(np.float32)
    probe = folder.parent / "probe.npz"
    np.savez(probe, x=x)
    return folder, probe, x, nets


def _relu_inputs(net, x):
    got, handles = {}, []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.ReLU):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, n=name: got.__setitem__(n, i[0].numpy())))
    with torch.no_grad():
        net(torch.from_numpy(x))
    for h in handles:
        h.remove()
    return got


@pytest.mark.parametrize("nas_on", ["host", "graph"])
@pytest.mark.parametrize("tap", ["linear", "preact"])
def test_dead_units_match_torch_hooks(run_folder, tmp_path, tap, nas_on):
    folder, probe, x, nets = run_folder
    store = tmp_path / "s.zarr"
    nasprobe.probe([folder], probe=probe, out=store, run="r", framework="torch", model=MODEL,
                   input_shape=(3, 8, 8), tap=tap, nas_on=nas_on, progress=False)
    tree = nasprobe.open_store(store)
    ds = tree.to_dataset()
    dead = {}
    for epoch, net in nets.items():
        relu_in = _relu_inputs(net, x)
        for layer, relu in RELU_OF.items():
            a = relu_in[relu]
            want = (np.moveaxis(a, 1, 0).reshape(a.shape[1], -1) > 0).mean(axis=1)
            got = tree[f"heatmaps/{layer}"]["unit_activity"].sel(run="r", epoch=epoch).values
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12,
                                       err_msg=f"{tap} {nas_on} {layer} {epoch}")
            killed = {"conv2": "bn2.bias", "conv3": "bn3.bias", "fc1": "fc1.bias"}.get(layer)
            assert (got[KILLED[epoch].get(killed, [])] == 0).all()
            assert ds["dead_fraction"].sel(run="r", epoch=epoch, layer=layer) == \
                pytest.approx(np.mean(want == 0)), (layer, epoch)
            dead[layer, epoch] = int((got == 0).sum())
    want = {(layer, e): len(KILLED[e].get(k, [])) for e in KILLED for layer, k in
            {"conv1": "bn1.bias", "conv2": "bn2.bias", "conv3": "bn3.bias", "conv4": "bn4.bias",
             "fc1": "fc1.bias"}.items()}
    assert dead == want  # exactly the k killed channels per layer and epoch
    assert ds["nonlinearity"].sel(layer="conv1") == "Relu"
    if tap == "linear":  # the logits reach no nonlinearity
        assert ds["nonlinearity"].sel(layer="fc2") == ""
        assert np.isnan(ds["dead_fraction"].sel(layer="fc2")).all()
        assert "unit_activity" not in tree["heatmaps/fc2"].ds
