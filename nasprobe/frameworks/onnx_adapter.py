"""The built-in ONNX adapter: checkpoints that are already ONNX files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nasprobe.contract import BaseAdapter, Checkpoint, SourceOptions
from nasprobe.errors import CheckpointError

if TYPE_CHECKING:  # the registry (and so the command line) loads this module: onnx on use
    import numpy as np
    import onnx

__all__ = ["load_onnx", "OnnxSource", "OnnxAdapter", "adapter"]


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file, refusing external data that points outside the file's folder (every
    tensor that can carry it: see :mod:`nasprobe.onnxgraph.external_data`)."""
    import onnx

    from nasprobe.onnxgraph.external_data import load_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several kinds
        raise CheckpointError(path, f"not a readable ONNX model ({exc.__class__.__name__}: "
                              f"{exc})") from exc
    return load_external_data(model, path)


class OnnxSource:
    """Checkpoints that are already ONNX files: the first one gives the architecture, made
    probe-ready by :func:`nasprobe.onnxgraph.prepare.prepare_model` (old opsets upgraded, half
    precision widened...; ``provenance`` says what was done, see docs/onnx.md).
    ``architecture()`` gives a copy of it each call."""

    framework = "onnx"

    def __init__(self, checkpoints: list[Checkpoint]):
        from nasprobe.onnxgraph.prepare import constants_to_initializers, prepare_model

        self.checkpoints = checkpoints
        raw = load_onnx(checkpoints[0].path)
        prepared = prepare_model(raw, str(checkpoints[0].path))
        # what later files are compared with: the first file as written, weights moved only
        self._like = _signature(constants_to_initializers(raw)[0])
        self._first = prepared.model
        self.provenance = prepared.notes
        self._shapes = {t.name: tuple(t.dims) for t in self._first.graph.initializer}

    def architecture(self) -> onnx.ModelProto:
        """The first checkpoint's model, prepared: a new copy each call, owned by the caller."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self._first)
        return model

    def weights(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]:
        """The initializers of ``checkpoint``'s file, by name (arrays in the file's dtype), as
        the prepared architecture names them: weights kept in ``Constant`` nodes are moved to
        initializers as for the first file, and when preparing changed an initializer (its
        name or shape) the epoch's file is prepared the same way.

        Raises:
            CheckpointError: a tensor that cannot be decoded, or a file whose initializers
                are not those of the first checkpoint (a missing, extra or reshaped one would
                otherwise leave the first epoch's values in place): names the tensor.
        """
        from nasprobe.onnxgraph.prepare import constants_to_initializers, prepare_model

        if checkpoint.path == self.checkpoints[0].path:
            return _decode(self._first, checkpoint.path)
        model = load_onnx(checkpoint.path)
        if self.provenance.get("constants_as_initializers"):
            model = constants_to_initializers(model)[0]
        _check_like(self._like, model, checkpoint.path)
        found = _decode(model, checkpoint.path)
        if any(self._shapes.get(k) != tuple(v.shape) for k, v in found.items()):
            found = _decode(prepare_model(model, str(checkpoint.path)).model, checkpoint.path)
        return found


def _decode(model: onnx.ModelProto, path) -> dict[str, np.ndarray]:
    """Every initializer of ``model`` as an array, by name (names the one that cannot be read)."""
    from onnx import numpy_helper

    out = {}
    for t in model.graph.initializer:
        try:
            out[t.name] = numpy_helper.to_array(t)
        except Exception as exc:  # onnx raises ValueError, TypeError, KeyError...
            raise CheckpointError(path, f"initializer {t.name!r} cannot be "
                                  f"decoded ({exc.__class__.__name__}: {exc})") from exc
    return out


def _signature(model: onnx.ModelProto) -> dict[str, tuple]:
    """Initializer name → (dims, element type)."""
    return {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}


def _check_like(want: dict[str, tuple], model: onnx.ModelProto, path) -> None:
    """Refuse a later checkpoint whose initializers differ from the first one's (``want``, its
    :func:`_signature`) in name, shape or element type (names the first such tensor)."""
    got = _signature(model)
    missing = [n for n in want if n not in got]
    if missing:
        raise CheckpointError(path, f"initializer {missing[0]!r} of the first checkpoint is "
                              f"missing ({len(missing)} in all): another architecture?")
    extra = [n for n in got if n not in want]
    if extra:
        raise CheckpointError(path, f"initializer {extra[0]!r} is not in the first checkpoint: "
                              "another architecture?")
    for name, (dims, dtype) in want.items():
        if got[name][0] != dims:
            raise CheckpointError(path, f"tensor {name!r} has shape {got[name][0]}, the "
                                  f"architecture has {dims}")
        if got[name][1] != dtype:
            raise CheckpointError(path, f"tensor {name!r} has element type {got[name][1]}, the "
                                  f"first checkpoint {dtype} (onnx.TensorProto data types)")


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
