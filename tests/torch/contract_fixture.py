"""A tiny PyTorch run for the adapter contract test (tests/core/test_adapters.py)."""

from __future__ import annotations

from pathlib import Path

from nasprobe.contract import SourceOptions

#: ``--model`` for the saved state dicts.
MODEL = "nasprobe_torch.models:vanilla_net(widths=(3, 3, 4, 4, 5), in_channels=1, classes=3, input_size=8)"


def tiny_run(folder: Path) -> SourceOptions:
    """Two epochs of state dicts (``epoch_001.pt``, ``epoch_002.pt``) with different weights."""
    import torch

    from nasprobe_torch.models import vanilla_net

    folder.mkdir(parents=True, exist_ok=True)
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        net = vanilla_net(widths=(3, 3, 4, 4, 5), in_channels=1, classes=3, input_size=8)
        torch.save(net.state_dict(), folder / f"epoch_{epoch:03d}.pt")
    return SourceOptions(model=MODEL, input_shape=(1, 8, 8))


#: Where ``nasprobe_torch.entropy`` and the taps keep channels by default (NCHW).
CHANNEL_AXIS = 1


def tensor(a):
    """A numpy array as the framework's tensor."""
    import torch

    return torch.as_tensor(a)


def array(t):
    """A framework tensor as a numpy array."""
    return t.detach().cpu().numpy()


def tiny_model():
    """``(model, probe inputs)`` for the training helpers (``NASMonitor``, ``TapCapture``...)."""
    import numpy as np
    import torch

    from nasprobe_torch.models import vanilla_net

    torch.manual_seed(0)
    net = vanilla_net(widths=(3, 3, 4, 4, 5), in_channels=1, classes=3, input_size=8)
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    return net, x
