"""Shared pieces of the PyTorch adapter tests: small models, checkpoint pairs, and a runner that
exposes a graph's linear outputs through onnxruntime for comparison with torch forward hooks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from torch import nn

try:  # the adapter is installed editable; fall back to the source tree
    import nasprobe_torch  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "adapters"))

from nasprobe_torch import models  # noqa: E402

LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


class ResidualNet(nn.Module):
    """conv1 → BN → ReLU, then a residual depthwise-separable block (depthwise 3×3 conv with
    groups=C → ReLU → pointwise 1×1 conv without bias → BN → + skip → ReLU), then fc."""

    input_shape = (2, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.relu_dw = nn.ReLU()
        self.pointwise = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        z = self.bn2(self.pointwise(self.relu_dw(self.depthwise(y))))
        y = self.relu2(z + y)
        return self.fc(y.mean(dim=(2, 3)))


class SequenceNet(nn.Module):
    """Conv1d layers on (N, C, T) signals, then nn.Linear on the (N, T, D) sequence (exported
    as MatMul + bias Add, and a MatMul without bias)."""

    input_shape = (2, 12)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 4, 3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(4, 4, 3, stride=2)
        self.act2 = nn.ReLU()
        self.embed = nn.Linear(4, 6)
        self.act3 = nn.ReLU()
        self.out = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.out(self.act3(self.embed(y.transpose(1, 2))))


TINY = dict(widths=(3, 3, 4, 4, 5), input_size=8)

#: kind → zero-argument factory; every factory's model has an ``input_shape`` attribute.
FACTORIES = {
    "vanilla": lambda: models.vanilla_net(**TINY),
    "norm": lambda: models.norm_net(**TINY),
    "drop": lambda: models.drop_net(**TINY),
    "residual_depthwise": ResidualNet,
    "conv1d_sequence": SequenceNet,
}


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Fresh random weights and BatchNorm statistics (so no BatchNorm is an identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                v = torch.randn(t.shape, generator=g) * 0.5
                t.copy_(v.abs() + 0.5 if name.endswith("running_var") else v)
    return model.eval()


def save_pair(kind: str, folder: Path) -> list[nn.Module]:
    """Write ``epoch_001.pt`` and ``epoch_002.pt`` (plain state dicts) of two random models."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for epoch in (1, 2):
        m = randomize(FACTORIES[kind](), seed=100 * epoch + len(kind))
        torch.save(m.state_dict(), folder / f"epoch_{epoch:03d}.pt")
        out.append(m)
    return out


def linear_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """``nasprobe.layer`` → output tensor of each Conv/Gemm/MatMul node (after a bias Add)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name for t in model.graph.initializer}
    found = {}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        meta = {p.key: p.value for p in n.metadata_props}
        out = n.output[0]
        users = consumers.get(out, [])
        if n.op_type == "MatMul" and len(users) == 1 and users[0].op_type == "Add" \
                and any(i in inits for i in users[0].input):
            out = users[0].output[0]
        found[meta["nasprobe.layer"]] = out
    return found


def run_onnx(model: onnx.ModelProto, weights: dict[str, np.ndarray], x: np.ndarray,
             outputs: list[str]) -> dict[str, np.ndarray]:
    """Run ``model`` with initializers replaced by ``weights``, returning the named tensors."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    for name, value in weights.items():
        assert tuple(inits[name].dims) == value.shape, name
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    present = {o.name for o in m.graph.output}
    for name in outputs:
        if name not in present:
            m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    values = sess.run(outputs, {sess.get_inputs()[0].name: x})
    return dict(zip(outputs, values))


def torch_taps(model: nn.Module, x: np.ndarray) -> tuple[dict, dict]:
    """Forward hooks: Conv/Linear module outputs, and the inputs of ReLU modules, by path."""
    linear, relu_in, handles = {}, {}, []
    for name, m in model.named_modules():
        if isinstance(m, LINEAR_MODULES):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, name=name: linear.__setitem__(name, o.detach().numpy())))
        elif isinstance(m, nn.ReLU):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, name=name: relu_in.__setitem__(name, i[0].detach().numpy())))
    with torch.no_grad():
        model.eval()(torch.from_numpy(x))
    for h in handles:
        h.remove()
    return linear, relu_in
