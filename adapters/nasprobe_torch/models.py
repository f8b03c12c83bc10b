"""The papers' networks in PyTorch: VanillaNet, NormNet (BatchNorm) and DropNet (dropout).

Two conv-conv-pool blocks and two dense layers, ReLU after every layer but the last
(2020 paper Fig. 2 and Table 1; 2021 paper Sec. 4). Module attributes are named
``conv1 … conv4``, ``fc1``, ``fc2`` (so these are the layer names nasprobe reports), with
``bn1 … bn4`` (NormNet), ``relu1 … relu4``, ``relu_fc1``, ``pool1``, ``pool2`` and
``drop1``, ``drop2``, ``drop_fc1`` (DropNet).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["SIZES", "VanillaNet", "vanilla_net", "norm_net", "drop_net"]

#: Channels of conv1..conv4 and neurons of fc1 per size (2020 paper Table 1).
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "s": (16, 16, 32, 32, 64),
    "m": (64, 64, 128, 128, 256),
    "xxl": (256, 256, 512, 512, 1024),
}


class VanillaNet(nn.Module):
    """conv1-conv2-pool1 · conv3-conv4-pool2 · fc1 · fc2 (3×3 convolutions, 'same' padding).

    Input ``(N, in_channels, input_size, input_size)``; output logits ``(N, classes)``.
    ``input_shape`` (attribute) is ``(in_channels, input_size, input_size)``.
    """

    def __init__(self, widths: Sequence[int], in_channels: int = 3, classes: int = 10,
                 input_size: int = 32, batch_norm: bool = False, dropout: float = 0.0,
                 fc_dropout: float | None = None):
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths must give conv1..conv4 and fc1 (5 numbers), not {widths}")
        if input_size % 4:
            raise ValueError(f"input_size must be a multiple of 4 (two 2x2 poolings), "
                             f"not {input_size}")
        c1, c2, c3, c4, f1 = (int(w) for w in widths)
        self.input_shape = (in_channels, input_size, input_size)
        fc_dropout = dropout if fc_dropout is None else fc_dropout
        for i, (cin, cout) in enumerate(((in_channels, c1), (c1, c2), (c2, c3), (c3, c4)), 1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(cout) if batch_norm else None)
            setattr(self, f"relu{i}", nn.ReLU())
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.MaxPool2d(2)
        self.drop1 = nn.Dropout(dropout) if dropout > 0 else None
        self.drop2 = nn.Dropout(dropout) if dropout > 0 else None
        self.fc1 = nn.Linear(c4 * (input_size // 4) ** 2, f1)
        self.relu_fc1 = nn.ReLU()
        self.drop_fc1 = nn.Dropout(fc_dropout) if fc_dropout > 0 else None
        self.fc2 = nn.Linear(f1, classes)

    def _conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, f"conv{i}")(x)
        bn = getattr(self, f"bn{i}")
        if bn is not None:
            x = bn(x)
        return getattr(self, f"relu{i}")(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` of images ``(N, C, H, W)``."""
        x = self.pool1(self._conv(2, self._conv(1, x)))
        if self.drop1 is not None:
            x = self.drop1(x)
        x = self.pool2(self._conv(4, self._conv(3, x)))
        if self.drop2 is not None:
            x = self.drop2(x)
        x = self.relu_fc1(self.fc1(torch.flatten(x, 1)))
        if self.drop_fc1 is not None:
            x = self.drop_fc1(x)
        return self.fc2(x)


def vanilla_net(size: str = "s", widths: Sequence[int] | None = None, in_channels: int = 3,
                classes: int = 10, input_size: int = 32, batch_norm: bool = False,
                dropout: float = 0.0, fc_dropout: float | None = None) -> VanillaNet:
    """VanillaNet of a paper size (``"s"``, ``"m"``, ``"xxl"``) or explicit ``widths``.

    Args:
        size: key of :data:`SIZES`; ignored when ``widths`` is given.
        widths: channels of conv1..conv4 and neurons of fc1 (5 numbers).
        in_channels, classes, input_size: image channels, logits, image side in pixels
            (a multiple of 4).
        batch_norm: a BatchNorm after every convolution, before its ReLU (NormNet).
        dropout: dropout rate after each conv block's pooling (DropNet; 0 = none).
        fc_dropout: dropout rate after fc1's ReLU; defaults to ``dropout``.
    """
    if widths is None:
        if size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
        widths = SIZES[size]
    return VanillaNet(widths, in_channels, classes, input_size, batch_norm, dropout, fc_dropout)


def norm_net(size: str = "s", **kwargs) -> VanillaNet:
    """NormNet: VanillaNet with BatchNorm in every conv block (keyword arguments as
    :func:`vanilla_net`)."""
    return vanilla_net(size, batch_norm=True, **kwargs)


def drop_net(size: str = "s", dropout: float = 0.25, fc_dropout: float | None = 0.5,
             **kwargs) -> VanillaNet:
    """DropNet: VanillaNet with dropout after every conv block (2020 paper: p = 0.25) and
    after fc1 (0.5; the 2021 paper used 0.3 for conv1..fc1 and 0.5 before fc2)."""
    return vanilla_net(size, dropout=dropout, fc_dropout=fc_dropout, **kwargs)
