"""The built-in ONNX adapter: checkpoints that are already ONNX files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .contract import BaseAdapter, Checkpoint, SourceOptions
from .errors import CheckpointError

if TYPE_CHECKING:  # the registry (and so the command line) loads this module: onnx on use
    import numpy as np
    import onnx

__all__ = ["load_onnx", "OnnxSource", "OnnxAdapter", "adapter"]


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file, refusing external data that points outside the file's folder (every
    tensor that can carry it: see :mod:`nasprobe.external_data`)."""
    import onnx

    from .external_data import load_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several kinds
        raise CheckpointError(path, f"not a readable ONNX model ({exc.__class__.__name__}: "
                              f"{exc})") from exc
    return load_external_data(model, path)


class OnnxSource:
    """Checkpoints that are already ONNX files: the first one gives the architecture."""

    framework = "onnx"

    def __init__(self, checkpoints: list[Checkpoint]):
        self.checkpoints = checkpoints
        self._first = load_onnx(checkpoints[0].path)

    def architecture(self) -> onnx.ModelProto:
        """The first checkpoint's model."""
        return self._first

    def weights(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]:
        """All initializers of ``checkpoint``'s file, by name (arrays in the file's dtype)."""
        from onnx import numpy_helper

        if checkpoint.path == self.checkpoints[0].path:
            model = self._first
        else:
            model = load_onnx(checkpoint.path)
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


class OnnxAdapter(BaseAdapter):
    """``.onnx`` files, one per epoch; no option applies to them."""

    name = "onnx"
    extensions = (".onnx",)
    extra = "cpu"
    requires = ("onnx",)

    def make_source(self, checkpoints: list[Checkpoint], options: SourceOptions) -> OnnxSource:
        """An :class:`OnnxSource` (``options`` are not used: the files hold everything)."""
        return OnnxSource(checkpoints)


#: The instance the registry uses.
adapter = OnnxAdapter()
