"""The built-in ONNX adapter: checkpoints that are already ONNX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .contract import BaseAdapter, Checkpoint, SourceOptions
from .errors import CheckpointError

__all__ = ["load_onnx", "OnnxSource", "OnnxAdapter", "adapter"]


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file, refusing external data that points outside the file's folder."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several kinds
        raise CheckpointError(path, f"not a readable ONNX model ({exc.__class__.__name__}: "
                              f"{exc})") from exc
    folder = path.resolve().parent
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = dict((e.key, e.value) for e in init.external_data).get("location", "")
            target = (folder / loc).resolve()
            if folder not in target.parents:
                raise CheckpointError(path, f"initializer {init.name!r} points to external "
                                      f"data outside its folder ({loc!r}); refused")
    try:
        onnx.load_external_data_for_model(model, str(folder))
    except Exception as exc:
        raise CheckpointError(path, f"cannot read its external data: {exc}") from exc
    return model


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
