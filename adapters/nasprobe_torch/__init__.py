"""nasprobe's PyTorch adapter: PyTorch checkpoints → one tapped ONNX graph + per-epoch weights.

The core finds this adapter through its entry point (:mod:`nasprobe_torch.plugin`) and builds a
:class:`~nasprobe_torch.source.TorchSource` per run. Everything here is imported on first use,
so that importing the package (as the registry does) does not import torch.

Public API: :func:`make_source` (the adapter contract's), :class:`TorchSource`,
:func:`export_onnx`, :func:`entropy`, :class:`TapCapture`, the regularisers (:class:`NASReg`,
:class:`SparsityReg`, :class:`DecorrReg`, :class:`NASMonitor`) and the training helpers: for
your own loop :class:`CheckpointWriter`, :class:`LiveNAS`, :class:`NASEarlyStopping`; for
Lightning the callbacks :class:`CheckpointCallback` and :class:`NASEarlyStoppingCallback`.
The Keras adapter uses the same names and arguments where both frameworks have the thing.
"""

from __future__ import annotations

import importlib

__all__ = ["make_source", "TorchSource", "export_onnx", "entropy", "TapCapture", "NASReg",
           "SparsityReg", "DecorrReg", "NASMonitor", "CheckpointWriter", "LiveNAS",
           "CheckpointCallback", "NASEarlyStopping", "NASEarlyStoppingCallback"]

_LAZY = {
    "make_source": "source", "TorchSource": "source", "export_onnx": "export",
    "entropy": "taps", "TapCapture": "taps",
    "NASReg": "regularizers", "SparsityReg": "regularizers", "DecorrReg": "regularizers",
    "NASMonitor": "regularizers", "CheckpointWriter": "callbacks", "LiveNAS": "callbacks",
    "CheckpointCallback": "callbacks", "NASCheckpointCallback": "callbacks",
    "NASEarlyStopping": "early_stopping", "NASEarlyStoppingCallback": "early_stopping",
}


def __getattr__(name: str):
    """The public names, imported on first use (torch, tensorboard and lightning are imported
    only when something that needs them is used)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
