"""nasprobe: Neural Activation Sparsity of saved training checkpoints.

The public API, each name with one import path:

- :func:`probe` (checkpoints → store) and :func:`open_store` (store → ``xarray.DataTree`` with
  the ``.nas`` accessor);
- the pure measures :func:`nas`, :func:`entropy` and :func:`perplexity`;
- the modules :mod:`kernels` (the host NAS kernel, ``nasprobe.measures.kernels``) and
  :mod:`stopping` (label-free stopping rules, ``nasprobe.measures.stopping``);
- the packages, one per concept (docs/architecture.md): ``measures``, ``probesets``,
  ``onnxgraph``, ``frameworks``, ``store``, ``job``, ``plots``, ``report``, ``cli``, and the
  base modules ``contract`` (what an adapter implements), ``errors`` and ``cpus``.

Names are imported on first use (PEP 562), so that ``import nasprobe`` and the command line
start without loading xarray, zarr, onnx or onnxruntime. The ``.nas`` accessor on xarray
objects is registered by :func:`open_store`, by ``import nasprobe.accessor``, and here
when xarray is already imported.
"""

import sys
from importlib import import_module

from ._version import __version__

__all__ = ["probe", "open_store", "nas", "entropy", "perplexity", "kernels", "stopping",
           "__version__"]

#: public function → the module that defines it
_FUNCTIONS = {"probe": "nasprobe.job.probe_job", "open_store": "nasprobe.store.reader",
              "nas": "nasprobe.measures.nas", "entropy": "nasprobe.measures.nas",
              "perplexity": "nasprobe.measures.nas"}
#: public short module names → their home
_MODULES = {"kernels": "nasprobe.measures.kernels", "stopping": "nasprobe.measures.stopping"}
#: the packages and base modules, importable as attributes of ``nasprobe``
_SUBMODULES = frozenset({"measures", "probesets", "onnxgraph", "frameworks", "store", "job",
                         "plots", "report", "cli", "contract", "errors", "cpus"})


def __getattr__(name: str):
    """Import a public function, module or package on first use."""
    if name in _FUNCTIONS:
        value = getattr(import_module(_FUNCTIONS[name]), name)
        if name == "open_store":  # a store opened here has the ``.nas`` accessor
            import_module("nasprobe.accessor")
    elif name in _MODULES:
        value = import_module(_MODULES[name])
    elif name in _SUBMODULES:
        value = import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)


if "xarray" in sys.modules:  # a notebook that imported xarray first gets ``.nas`` at once
    import_module("nasprobe.accessor")
