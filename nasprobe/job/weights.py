"""How one checkpoint's arrays reach an onnxruntime session of the tapped graph.

The tapped graph is made once per architecture; per epoch only its initializers change. Large
ones become external-data placeholders in the serialised graph and reach onnxruntime as
``OrtValue`` objects over the arrays' own memory (``SessionOptions.add_external_initializers``):
no copy of the model and no re-serialisation of its weights per epoch. Small ones are written
into a copy of the graph, because onnxruntime's shape inference reads shape-like inputs
(Reshape's shape, Unsqueeze's axes, OneHot's depth, a 0-d index) from the graph itself and
refuses external ones. A dtype onnxruntime takes only from a ``TensorProto`` (bfloat16) is
written into the graph too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

__all__ = ["EXTERNAL_MIN_BYTES", "Placed", "WeightPlacer"]

#: initializers of at least this many bytes reach onnxruntime as external initializers; smaller
#: ones (shape-like inputs among them) are written into the serialised graph
EXTERNAL_MIN_BYTES = 4096

_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                "uint64_data", "string_data", "external_data")


@dataclass
class Placed:
    """A graph ready for ``onnxruntime.InferenceSession``: ``model`` (serialised bytes) and the
    external initializers to add to the session options, ``names`` and ``values``
    (``OrtValue`` objects that must outlive the session)."""

    model: bytes
    names: list[str] = field(default_factory=list)
    values: list = field(default_factory=list)


class WeightPlacer:
    """Puts a checkpoint's arrays into sessions of one graph.

    Args:
        model: the tapped graph; its initializers name the tensors a checkpoint may replace.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.index = {t.name: i for i, t in enumerate(model.graph.initializer)}
        self._template: tuple[frozenset, onnx.ModelProto] | None = None

    def place(self, arrays: dict[str, np.ndarray]) -> Placed:
        """``arrays`` (initializer name → array of the graph's dtype and shape, C-ordered)
        into the graph: those of :data:`EXTERNAL_MIN_BYTES` or more as external initializers,
        the rest written into a copy of the graph; initializers not in ``arrays`` keep the
        graph's values."""
        import onnxruntime as ort

        large = {n: a for n, a in arrays.items() if a.nbytes >= EXTERNAL_MIN_BYTES}
        try:
            values = [ort.OrtValue.ortvalue_from_numpy(a) for a in large.values()]
        except RuntimeError:  # a dtype onnxruntime takes only from a TensorProto (bfloat16)
            return self.baked(arrays)
        names = list(large)
        model = self._placeholders(frozenset(names)) if names else self.model
        small = {n: a for n, a in arrays.items() if n not in large}
        model = self._written(small, model) if small else model
        return Placed(model.SerializeToString(), names, values)

    def baked(self, arrays: dict[str, np.ndarray]) -> Placed:
        """Every array of ``arrays`` written into a copy of the graph (no external
        initializers): slower for large models, taken by any graph onnxruntime can load."""
        return Placed(self._written(arrays, self.model).SerializeToString())

    def _placeholders(self, names: frozenset[str]) -> onnx.ModelProto:
        """A copy of the graph in which the initializers ``names`` are external-data
        placeholders (dims and type, no data); kept for the next epoch with the same names."""
        if self._template is None or self._template[0] != names:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            for name in names:
                t = model.graph.initializer[self.index[name]]
                for data in _DATA_FIELDS:
                    t.ClearField(data)
                t.data_location = onnx.TensorProto.EXTERNAL
                entry = t.external_data.add()
                entry.key, entry.value = "location", "nasprobe-supplied-weights"
            self._template = (names, model)
        return self._template[1]

    def _written(self, arrays: dict[str, np.ndarray], model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of ``model`` holding ``arrays`` as its initializers."""
        from onnx import numpy_helper

        out = onnx.ModelProto()
        out.CopyFrom(model)
        for name, arr in arrays.items():
            out.graph.initializer[self.index[name]].CopyFrom(numpy_helper.from_array(arr, name))
        return out
