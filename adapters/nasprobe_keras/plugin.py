"""The Keras adapter as the core's registry sees it (entry point ``nasprobe.adapters:keras``).

Importing this module imports neither keras nor the rest of the adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nasprobe.contract import BaseAdapter, Checkpoint, CheckpointSource, SourceOptions

from .formats import EXTENSIONS, is_weights_only

__all__ = ["KerasAdapter", "adapter"]


class KerasAdapter(BaseAdapter):
    """Keras checkpoints: ``.keras`` archives, full or weight-only ``.h5``, ``.weights.h5``."""

    name = "keras"
    extensions = EXTENSIONS
    extra = "keras"
    requires = ("keras", "h5py")
    input_layout = "H,W,C"

    def companions(self, files: Sequence[Path]) -> set[Path]:
        """Beside weight-only checkpoints, the ``.keras`` files: the architecture, not an epoch."""
        if not any(is_weights_only(f) for f in files):
            return set()
        return {Path(f) for f in files if Path(f).suffix.lower() == ".keras"}

    def make_source(self, checkpoints: list[Checkpoint], options: SourceOptions
                    ) -> CheckpointSource:
        """A :class:`~nasprobe_keras.source.KerasSource` (``options.input_shape`` is H,W,C)."""
        from .source import make_source

        return make_source(checkpoints, options)


#: The instance the entry point names.
adapter = KerasAdapter()
