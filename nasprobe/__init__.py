"""nasprobe: Neural Activation Sparsity of saved training checkpoints.

Public API: :func:`probe` (checkpoints → store), :func:`open_store` (store → xarray.DataTree),
and the pure measures :func:`nas`, :func:`entropy`, :func:`perplexity`.

Names are imported on first use (PEP 562), so that ``import nasprobe`` and the command line
start without loading xarray, zarr, onnx or onnxruntime. The ``.nas`` accessor on xarray
objects is registered by :func:`open_store`, by ``import nasprobe.analysis``, and here when
xarray is already imported (see :mod:`nasprobe.analysis`).
"""

import sys
import types
from importlib import import_module

from ._version import __version__

__all__ = ["probe", "open_store", "nas", "entropy", "perplexity", "__version__"]

#: public name → the module that defines it
_LAZY = {"probe": "probe", "open_store": "store", "nas": "measures", "entropy": "measures",
         "perplexity": "measures"}


def __getattr__(name: str):
    """Import a public function (or a submodule such as ``analysis``) on first use."""
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        if name == "open_store":  # a store opened here has the ``.nas`` accessor
            import_module(".analysis", __name__)
    elif not name.startswith("__"):
        try:
            value = import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """This package's module type: the submodule ``nasprobe.probe`` shares its name with the
    function :func:`probe`, and importing the submodule (which the import system records as an
    attribute of the package) must not hide the function."""

    def __setattr__(self, name: str, value) -> None:
        if name == "probe" and isinstance(value, types.ModuleType):
            value = value.probe
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if "xarray" in sys.modules:  # a notebook that imported xarray first gets ``.nas`` at once
    from . import analysis  # noqa: E402,F401
