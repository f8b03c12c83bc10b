"""A ResNet-50-shaped torch network written out by hand (torchvision cannot be installed
beside the pinned torch), and a run of ONNX checkpoints of it for the benchmarks.

Bottleneck blocks ``[3, 4, 6, 3]`` of widths 64/128/256/512 (×4 out), 7×7 stem with stride 2
and max-pool, BatchNorm after every conv, global average pool, a 1000-way classifier: the
layer shapes (53 conv/linear layers, 25.6 M parameters) of torchvision's ``resnet50``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def resnet50(classes: int = 1000):
    """The network (``torch.nn.Module``), in eval mode, seeded weights."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, c_in: int, width: int, stride: int):
            super().__init__()
            c_out = width * 4
            self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
            self.down = None
            if stride != 1 or c_in != c_out:
                self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            blocks, c_in = [], 64
            for width, n, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
                for i in range(n):
                    blocks.append(Bottleneck(c_in, width, stride if i == 0 else 1))
                    c_in = width * 4
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(2048, classes)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    model = ResNet50()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_run(folder: Path, epochs: int, size: int = 224) -> None:
    """``epochs`` ONNX checkpoints of :func:`resnet50` at ``size``² (one export, the weights
    scaled by a random factor in [0.8, 1.2] per tensor element for each later epoch)."""
    import torch

    model = resnet50()
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "epoch_000.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(first), dynamo=True,
                      dynamic_shapes=({0: "N"},), verbose=False, external_data=False,
                      optimize=False)  # BatchNorm kept: initializers named as in torch
    reweight(first, folder, epochs)


def reweight(first: Path, folder: Path, epochs: int) -> None:
    """Write epochs ``1 .. epochs-1`` next to ``first`` with its float weights rescaled."""
    import onnx
    from onnx import numpy_helper

    base = onnx.load(str(first))
    rng = np.random.default_rng(0)
    for e in range(1, epochs):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        for i, t in enumerate(m.graph.initializer):
            a = numpy_helper.to_array(t)
            if a.dtype == np.float32 and a.ndim >= 1 and a.size > 1:
                a = (a * rng.uniform(0.8, 1.2, a.shape)).astype(np.float32)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, t.name))
        onnx.save(m, str(folder / f"epoch_{e:03d}.onnx"))
