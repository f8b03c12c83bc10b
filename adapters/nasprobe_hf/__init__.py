"""nasprobe's Hugging Face adapter: ``save_pretrained`` / ``Trainer`` folders → tapped ONNX.

A folder of ``checkpoint-N/`` sub-folders (each ``config.json`` + safetensors) is one run whose
checkpoints are the training steps N. The architecture comes from ``config.json`` through
transformers' own classes, the weights through its own loading; the export reuses
:mod:`nasprobe_torch.export`. Everything here is imported on first use, so that importing the
package (as the registry does) imports neither torch nor transformers.

Public API: :func:`make_source`, :class:`HFSource`, :func:`export_pretrained`,
:func:`load_model`.
"""

from __future__ import annotations

import importlib

__all__ = ["make_source", "HFSource", "export_pretrained", "load_model"]

_LAZY = {"make_source": "source", "HFSource": "source", "export_pretrained": "export",
         "load_model": "loading"}


def __getattr__(name: str):
    """The public names, imported on first use (torch and transformers only then)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
