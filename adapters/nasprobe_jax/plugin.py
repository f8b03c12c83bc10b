"""The entry point ``nasprobe.adapters: jax``: claims msgpack files and Orbax folders.

Importing this module imports neither JAX nor Flax (the core imports every registered adapter
to learn its extensions); :meth:`JaxAdapter.make_source` imports them when a run is probed.
"""

from __future__ import annotations

from pathlib import Path

from nasprobe.contract import BaseAdapter, Checkpoint, CheckpointSource, SourceOptions

from .formats import is_orbax_checkpoint, orbax_item

__all__ = ["JaxAdapter", "adapter", "is_orbax_checkpoint", "orbax_item"]


class JaxAdapter(BaseAdapter):
    """JAX/Flax checkpoints: ``.msgpack`` files (``flax.serialization``) and Orbax folders."""

    name = "jax"
    extensions = (".msgpack",)
    extra = "jax"
    requires = ("jax", "flax", "orbax.checkpoint", "jax2onnx")
    input_layout = "H,W,C"

    def claims(self, path: Path) -> bool:
        """A ``.msgpack`` file, or a folder Orbax wrote (``_CHECKPOINT_METADATA``...)."""
        path = Path(path)
        if path.is_dir():
            return is_orbax_checkpoint(path)
        return path.name.lower().endswith(self.extensions)

    def make_source(self, checkpoints: list[Checkpoint], options: SourceOptions
                    ) -> CheckpointSource:
        """A :class:`~nasprobe_jax.source.JaxSource` (``options.input_shape`` is H,W,C)."""
        from .source import make_source

        return make_source(checkpoints, options)


#: The object the entry point names.
adapter = JaxAdapter()
