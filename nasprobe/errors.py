"""The errors nasprobe raises. Each names the file and what is wrong with it.

The command line prints them to stderr without a traceback and exits with status 2
(bad input) — see the README's table of errors.
"""

from __future__ import annotations

import os

__all__ = ["JobFailedError", "NasprobeError", "CheckpointError", "NoCheckpointError", "EpochError",
           "ProbeSetError", "GraphError", "StoreError", "MissingExtraError"]


class NasprobeError(Exception):
    """Base class: a problem with the user's input that nasprobe can explain."""


class _FileError(NasprobeError):
    def __init__(self, path: str | os.PathLike, message: str):
        self.path = os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


class CheckpointError(_FileError):
    """A checkpoint file or folder that cannot be used (corrupt, other architecture, ...)."""


class NoCheckpointError(CheckpointError):
    """A folder in which no adapter finds a checkpoint."""


class EpochError(CheckpointError):
    """A checkpoint whose epoch cannot be parsed from its name, or claimed by two files."""


class ProbeSetError(_FileError):
    """A probe set that cannot be read or does not fit the model's input."""


class GraphError(_FileError):
    """An ONNX graph in which no tap can be found, or whose taps cannot be labelled honestly."""


class StoreError(_FileError):
    """A store that cannot be written, or that would mix incompatible probes."""


#: Optional modules (top-level import names) and the extras of nasprobe that install them.
EXTRAS = {
    "onnxruntime": ("cpu", "gpu"),
    "torch": ("torch",), "onnxscript": ("torch",), "safetensors": ("torch",),
    "sklearn": ("torch",),
    "keras": ("keras",), "h5py": ("keras",),
    "tensorboard": ("tensorboard",),
    "dask": ("dask",), "distributed": ("dask",),
    "lightning": ("lightning",),
}


class MissingExtraError(NasprobeError):
    """An optional dependency is not installed; the message names the extras that bring it."""

    def __init__(self, module: str, extras: tuple[str, ...]):
        self.module, self.extras = module, extras
        if extras == ("cpu", "gpu"):
            how = ("install nasprobe with one of the extras cpu or gpu: "
                   "pip install 'nasprobe[cpu]' (onnxruntime, CPU) or "
                   "pip install 'nasprobe[gpu]' (onnxruntime-gpu, CUDA)")
        else:
            how = " or ".join(f"pip install 'nasprobe[{e}]'" for e in extras)
        super().__init__(f"{module} is not installed; {how}")

    @classmethod
    def from_import(cls, exc: ImportError) -> MissingExtraError | None:
        """The error for a failed import of an optional module, or ``None`` where ``exc`` is
        about some other module (a genuine bug, which should keep its traceback)."""
        if not isinstance(exc, ModuleNotFoundError) or not exc.name:
            return None
        top = exc.name.partition(".")[0]
        return cls(top, EXTRAS[top]) if top in EXTRAS else None


class JobFailedError(Exception):
    """Not bad input: the job itself failed (a Dask worker died every time it tried).

    The command line prints it without a traceback and exits with 1.
    """
