"""Model input layouts and label rules shared by array and folder probe sets.

See :mod:`nasprobe.probesets` for the rules themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from nasprobe.errors import ProbeSetError

__all__ = ["Layout", "CHANNELS", "MODES", "IMAGE_SUFFIXES", "format_dims", "fits",
           "model_layout", "check_labels"]

#: File name endings (lower case) read from a probe folder.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
#: Channel counts an image can have.
CHANNELS = (1, 3, 4)
#: Pillow mode per channel count.
MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass(frozen=True)
class Layout:
    """How a model lays out one sample: ``kind`` and the per-sample ``dims``."""

    kind: str  # "NCHW", "NHWC" or "flat" (no channel axis)
    dims: tuple[int | None, ...]  # the model's per-sample dims; None = symbolic


def format_dims(dims: Sequence[int | None]) -> str:
    """A model input for messages: ``(N, 3, ?, ?)``."""
    return "(" + ", ".join(["N"] + ["?" if d is None else str(d) for d in dims]) + ")"


def fits(shape: Sequence[int], dims: Sequence[int | None]) -> bool:
    """Whether a sample ``shape`` matches the model's ``dims`` (None matches any size)."""
    return len(shape) == len(dims) and all(d is None or d == s for s, d in zip(shape, dims))


def model_layout(path: Path, input_shape: Sequence, channels_last: bool | None) -> Layout:
    """The layout of an ONNX input shape (batch axis first), by the rules of
    :mod:`nasprobe.probesets`; ``path`` names the probe set in errors."""
    if len(input_shape) < 2:
        raise ProbeSetError(path, f"model input shape {tuple(input_shape)} has no sample axes")
    dims = tuple(int(d) if isinstance(d, (int, np.integer)) and d > 0 else None
                 for d in input_shape[1:])
    if len(dims) != 3:
        return Layout("flat", dims)
    if channels_last is None:
        channels_last = dims[2] in CHANNELS and dims[0] not in CHANNELS
    return Layout("NHWC" if channels_last else "NCHW", dims)


def check_labels(path: Path, y: np.ndarray, n: int) -> np.ndarray:
    """Labels as ``(n,)`` int64 class indices; ``(n, 1)`` and one-hot ``(n, K)`` accepted."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.size and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all():
        y = y.argmax(axis=1)
    if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != n:
        raise ProbeSetError(path, f"labels y have dtype {y.dtype} and shape {y.shape}: "
                                  f"expected integer class indices of shape ({n},)")
    if y.size and y.min() < 0:
        raise ProbeSetError(path, "labels y contain negative class indices")
    return y.astype(np.int64)
