"""The errors nasprobe raises. Each names the file and what is wrong with it.

The command line prints them to stderr without a traceback and exits with status 2
(bad input) — see the README's table of errors.
"""

from __future__ import annotations

import os

__all__ = ["NasprobeError", "CheckpointError", "NoCheckpointError", "EpochError",
           "ProbeSetError", "GraphError", "StoreError"]


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
