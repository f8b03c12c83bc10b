"""nasprobe's Keras adapter: Keras checkpoints → ONNX with separate linear/activation taps.

The core finds this adapter through its entry point (:mod:`nasprobe_keras.plugin`). Public API:

* :func:`make_source` — the ``CheckpointSource`` of a run (the adapter contract's);
* :class:`KerasSource` — ``architecture()`` (ONNX, once) and ``weights(checkpoint)`` per epoch;
* :func:`export_onnx` — convert a built Keras model to ONNX;
* :func:`entropy` and :class:`TapCapture`;
* the regularisers and callbacks (:class:`NASReg`, :class:`SparsityReg`, :class:`DecorrReg`,
  :class:`NASMonitor`, :class:`Regularized`, :class:`CheckpointCallback`,
  :class:`LiveNASCallback`, :class:`NASEarlyStoppingCallback`).

The PyTorch adapter uses the same names and arguments where both frameworks have the thing.

Everything is imported on first use, so importing the package does not import keras (set
``KERAS_BACKEND``; ``torch`` works, TensorFlow is not needed).
"""

from __future__ import annotations

import importlib

__all__ = ["make_source", "KerasSource", "export_onnx", "UnsupportedLayerError", "entropy",
           "TapCapture", "NASReg", "SparsityReg", "DecorrReg", "NASMonitor", "Regularized",
           "CheckpointCallback", "LiveNASCallback", "NASEarlyStoppingCallback"]

_LAZY = {
    "make_source": "source", "KerasSource": "source",
    "export_onnx": "export", "UnsupportedLayerError": "export",
    "entropy": "taps", "TapCapture": "taps",
    "NASReg": "regularizers", "SparsityReg": "regularizers", "DecorrReg": "regularizers",
    "NASMonitor": "regularizers", "Regularized": "regularizers",
    "CheckpointCallback": "callbacks", "LiveNASCallback": "callbacks",
    "NASEarlyStoppingCallback": "early_stopping", "NASEarlyStopping": "early_stopping",
}


def __getattr__(name: str):
    """The public names, imported on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
