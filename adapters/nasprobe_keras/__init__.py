"""nasprobe's Keras adapter: Keras checkpoints → ONNX with separate linear/activation taps.

Public API:

* :func:`make_source` — the ``CheckpointSource`` of a run (used by ``nasprobe.open_source``);
* :class:`KerasSource` — ``architecture()`` (ONNX, once) and ``weights(checkpoint)`` per epoch;
* :func:`export_onnx` — convert a built Keras model to ONNX.

Keras is imported lazily (set ``KERAS_BACKEND``; ``torch`` works, TensorFlow is not needed).
"""

from .export import UnsupportedLayerError, export_onnx
from .source import KerasSource, make_source

__all__ = ["make_source", "KerasSource", "export_onnx", "UnsupportedLayerError"]

_LAZY = {
    "NASReg": "regularizers", "SparsityReg": "regularizers", "DecorrReg": "regularizers",
    "NASMonitor": "regularizers", "Regularized": "regularizers",
    "CheckpointCallback": "callbacks", "LiveNASCallback": "callbacks",
}


def __getattr__(name: str):
    """Regularisers and callbacks, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
