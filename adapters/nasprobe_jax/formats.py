"""JAX checkpoint kinds, by their files only (no JAX, Flax or Orbax import).

Shared by the entry point (:mod:`nasprobe_jax.plugin`) and the loaders
(:mod:`nasprobe_jax.loading`), so that neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ORBAX_MARKERS", "orbax_item", "is_orbax_checkpoint"]

#: Files Orbax writes into every checkpoint folder (``StandardCheckpointer``,
#: ``PyTreeCheckpointer``) or into each item folder of a ``CheckpointManager`` step.
ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")


def orbax_item(folder: Path) -> Path | None:
    """The folder holding the saved tree inside an Orbax checkpoint ``folder``, or ``None``.

    That is ``folder`` itself when it holds the tree (``_METADATA``), or its single item folder
    (a ``CheckpointManager`` step such as ``3/default/``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / "_METADATA").is_file() or (folder / "manifest.ocdbt").is_file():
        return folder
    if (folder / "_CHECKPOINT_METADATA").is_file():
        items = [p for p in folder.iterdir() if p.is_dir() and (p / "_METADATA").is_file()]
        if len(items) == 1:
            return items[0]
    return None


def is_orbax_checkpoint(path: Path) -> bool:
    """Whether ``path`` is an Orbax checkpoint folder (see :func:`orbax_item`)."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in ORBAX_MARKERS)
