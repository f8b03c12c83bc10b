"""The entry point ``nasprobe.adapters: jax``: claims msgpack files and Orbax folders.

Importing this module imports neither JAX nor Flax (the core imports every registered adapter
to learn its extensions); :meth:`JaxAdapter.make_source` imports them when a run is probed.
"""

from __future__ import annotations

from pathlib import Path

from nasprobe.contract import BaseAdapter, Checkpoint, CheckpointSource, SourceOptions

__all__ = ["JaxAdapter", "adapter", "is_orbax_checkpoint", "orbax_item"]

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


class JaxAdapter(BaseAdapter):
    """JAX/Flax checkpoints: ``.msgpack`` files (``flax.serialization``) and Orbax folders."""

    name = "jax"
    extensions = (".msgpack",)
    extra = "jax"
    requires = ("jax", "flax", "orbax.checkpoint", "jax2onnx")

    def claims(self, path: Path) -> bool:
        """A ``.msgpack`` file, or a folder Orbax wrote (``_CHECKPOINT_METADATA``...)."""
        path = Path(path)
        if path.is_dir():
            return is_orbax_checkpoint(path)
        return path.name.lower().endswith(self.extensions)

    def make_source(self, checkpoints: list[Checkpoint], options: SourceOptions
                    ) -> CheckpointSource:
        """A :class:`~nasprobe_jax.source.JaxSource` (``options.input_shape`` is H,W,C)."""
        from .source import JaxSource

        return JaxSource(checkpoints, options)


#: The object the entry point names.
adapter = JaxAdapter()
