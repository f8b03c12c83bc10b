"""Keras checkpoint file kinds, by name only (no keras or h5py import)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXTENSIONS", "WEIGHTS_ONLY", "is_weights_only"]

#: Suffixes of Keras checkpoints: ``.keras`` archives, Keras 3 weight-only files, legacy HDF5.
EXTENSIONS = (".keras", ".weights.h5", ".h5")
#: Suffix of Keras 3 weight-only checkpoints (the architecture comes from elsewhere).
WEIGHTS_ONLY = ".weights.h5"


def is_weights_only(path: str | Path) -> bool:
    """Whether ``path`` names a Keras 3 weight-only checkpoint (``*.weights.h5``)."""
    return Path(path).name.lower().endswith(WEIGHTS_ONLY)
