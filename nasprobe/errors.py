"""The errors nasprobe raises. Each names the file and what is wrong with it.

The command line prints them to stderr without a traceback and exits with status 2
(bad input) — see the README's table of errors.
"""

from __future__ import annotations

import os
import re

__all__ = ["JobFailedError", "NasprobeError", "CheckpointError", "NoCheckpointError", "EpochError",
           "ProbeSetError", "GraphError", "StoreError", "MissingExtraError", "EXTRAS",
           "install_hint", "printable"]


#: Characters that a terminal may act on: C0 controls but tab and newline, DEL, C1 controls,
#: and the bidirectional overrides and isolates that reorder what is shown.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text) -> str:
    r"""``text`` made safe to print on a terminal: each control character (an escape sequence's
    ``ESC``, a carriage return, a bidirectional override...) written as ``\xNN`` or
    ``\uNNNN``, so that names read from a file someone else wrote cannot move the cursor,
    retitle the window or hide text. Tabs and newlines are kept."""
    return _UNSAFE.sub(lambda m: (f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                  else f"\\u{ord(m.group()):04x}"), str(text))


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


#: Optional modules (top-level import names) and the extras of nasprobe that install them: the
#: one list behind every "pip install 'nasprobe[...]'" message. tests/core/test_names.py checks
#: it against pyproject.toml's extras and each adapter's ``extra``; a new optional dependency
#: gets its line here.
EXTRAS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("cpu", "gpu"),
    "torch": ("torch",), "onnxscript": ("torch",), "safetensors": ("torch",),
    "sklearn": ("torch",),
    "keras": ("keras",), "h5py": ("keras",),
    "jax": ("jax",), "flax": ("jax",), "orbax": ("jax",), "jax2onnx": ("jax",),
    "msgpack": ("jax",),
    "tensorboard": ("tensorboard",),
    "dask": ("dask",), "distributed": ("dask",),
    "lightning": ("lightning",),
    "transformers": ("hf",),
    "s3fs": ("s3",), "gcsfs": ("gcs",), "adlfs": ("azure",),
}


def install_hint(module: str) -> str:
    """How to install the optional ``module`` (a top-level import name of :data:`EXTRAS`):
    ``"pip install 'nasprobe[dask]'"``, or the choice of extras where there are several."""
    return _how(EXTRAS[module])


def _how(extras: tuple[str, ...]) -> str:
    if extras == ("cpu", "gpu"):
        return ("install nasprobe with one of the extras cpu or gpu: "
                "pip install 'nasprobe[cpu]' (onnxruntime, CPU) or "
                "pip install 'nasprobe[gpu]' (onnxruntime-gpu, CUDA)")
    return " or ".join(f"pip install 'nasprobe[{e}]'" for e in extras)


class MissingExtraError(NasprobeError):
    """An optional dependency is not installed; the message names the extras that bring it.

    Args:
        module: the top-level import name that is missing.
        extras: the extras that install it (default: :data:`EXTRAS`'s).
        needed_for: what needs it, to start the message (``"--workers"``); optional.
    """

    def __init__(self, module: str, extras: tuple[str, ...] | None = None,
                 needed_for: str = ""):
        self.module = module
        self.extras = tuple(EXTRAS.get(module, ()) if extras is None else extras)
        what = f"{needed_for} needs {module}, which" if needed_for else module
        super().__init__(f"{what} is not installed; {_how(self.extras)}")

    @classmethod
    def from_import(cls, exc: ImportError) -> MissingExtraError | None:
        """The error for a failed import of an optional module, or ``None`` where ``exc`` is
        about some other module (a genuine bug, which should keep its traceback)."""
        while exc is not None and not isinstance(exc, ModuleNotFoundError):
            # fsspec says "Install s3fs to access S3" in an ImportError raised from the
            # ModuleNotFoundError of s3fs: the cause names the module
            exc = exc.__cause__ if isinstance(exc.__cause__, ImportError) else None
        if exc is None or not exc.name:
            return None
        top = exc.name.partition(".")[0]
        return cls(top) if top in EXTRAS else None


class JobFailedError(Exception):
    """Not bad input: the job itself failed (a Dask worker died every time it tried).

    The command line prints it without a traceback and exits with 1.
    """
