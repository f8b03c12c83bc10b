"""An ONNX file written by torch's TorchScript exporter at opset 11 (as exports made before
2023 were), probed as a plain ONNX checkpoint: upgraded in memory, layer names from the
exporter's ``/scope/Conv`` node names, NAS equal to torch's own forward pass in float64."""

import numpy as np
import torch
from torch import nn

import nasprobe
from nasprobe.job.probe_job import run_info


def _nas64(a, axis):
    a = np.moveaxis(np.asarray(a, np.float64), axis, -1)
    z = a - a.max(axis=-1, keepdims=True)
    e = np.exp(z)
    h = np.log(e.sum(-1)) - (e * z).sum(-1) / e.sum(-1)
    return 1.0 - np.exp(h) / a.shape[-1]


def test_torch_opset11_export_is_upgraded_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, bias=False),
        nn.Hardswish(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 4),
    ).eval()
    run = tmp_path / "run"
    run.mkdir()
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 8, 8),),
        str(run / "epoch_001.onnx"),
        opset_version=11,
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "N"}},
    )
    x = torch.randn(10, 3, 8, 8)
    np.save(tmp_path / "p.npy", x.numpy())
    nasprobe.probe([run], probe=tmp_path / "p.npy", out=tmp_path / "s.zarr", progress=False)
    ds = nasprobe.open_store(tmp_path / "s.zarr")
    assert list(ds.layer.values) == ["0", "2", "5"]
    outs = {}
    hooks = [
        net[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(str(i), o.double()))
        for i in (0, 2, 5)
    ]
    with torch.no_grad():
        net.double()(x.double())
    for h in hooks:
        h.remove()
    for layer, t in outs.items():
        s = _nas64(t.numpy(), 1)
        got = ds.sel(layer=layer).isel(run=0, epoch=0)
        assert abs(float(got.nas_median) - np.median(s)) < 1e-4
        assert abs(float(got.nas_mean) - s.mean()) < 1e-4
    info = run_info(tmp_path / "s.zarr")["run"]
    assert (info["opset_original"], info["opset"]) == (11, 13)
