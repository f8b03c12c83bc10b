"""nasprobe's JAX/Flax adapter: Flax NNX checkpoints → one tapped ONNX graph + per-epoch weights.

Checkpoints are Orbax checkpoint folders (``epoch_003/``) or ``flax.serialization`` msgpack
files (``epoch_003.msgpack``), each holding one epoch's model state; ``--model
MODULE:CALLABLE`` builds the NNX module. The core finds this adapter through the entry point
``nasprobe.adapters: jax`` (:mod:`nasprobe_jax.plugin`), which imports JAX only when used.
Importing this package imports no JAX either: the names below load on first use.
:func:`make_source` and :func:`entropy` follow the conventions of the PyTorch and Keras
adapters (the adapter contract's signature; ``axis`` defaulting to the framework's channel
axis, the last one in Flax).
"""

from __future__ import annotations

import importlib

__all__ = ["make_source", "JaxSource", "export_onnx", "entropy", "NASReg", "SparsityReg",
           "DecorrReg", "nas_penalty", "sparsity_penalty", "decorr_penalty", "forward_with_taps"]

_LAZY = {
    "make_source": "source", "JaxSource": "source", "export_onnx": "export", "entropy": "taps",
    "NASReg": "regularizers", "SparsityReg": "regularizers", "DecorrReg": "regularizers",
    "nas_penalty": "regularizers", "sparsity_penalty": "regularizers",
    "decorr_penalty": "regularizers", "forward_with_taps": "taps",
}


def __getattr__(name: str):
    """The public names above, imported (with JAX) on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
