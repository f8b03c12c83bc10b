"""``KerasSource``: one run's Keras checkpoints as an ONNX architecture plus per-epoch weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from nasprobe.contract import Checkpoint, SourceOptions
from nasprobe.errors import CheckpointError, NasprobeError

from .builder import UnsupportedLayerError, WeightRef
from .export import convert
from .formats import is_weights_only
from .loading import (
    find_architecture_file,
    load_architecture_json,
    load_model,
    model_from_spec,
    read_weights,
)

__all__ = ["KerasSource", "make_source"]


class KerasSource:
    """A run of Keras checkpoints (``.keras``, ``.h5``, ``.weights.h5``).

    The architecture is converted to ONNX once (see :mod:`nasprobe_keras.export`); per epoch
    the weights are read from the file with h5py and put in ONNX layout.

    Attributes:
        framework: ``"keras"``.
        checkpoints: the run's checkpoints, sorted by epoch.
        model: the Keras model that gave the architecture.
        architecture_file: the file (or ``--model`` spec) it came from.
        refs: ``{initializer name: WeightRef}`` for every Keras-variable initializer.
        provenance: empty (the contract's record of how the checkpoints were read).
    """

    framework = "keras"

    def __init__(self, checkpoints: list[Checkpoint], model, architecture_file: str):
        if not checkpoints:
            raise NasprobeError("no Keras checkpoint given")
        self.checkpoints = list(checkpoints)
        self.model = model
        self.architecture_file = architecture_file
        self.provenance: dict = {}
        try:
            converted = convert(model)
        except UnsupportedLayerError as exc:
            raise CheckpointError(architecture_file, str(exc)) from exc
        self._onnx = converted.model
        self.refs: dict[str, WeightRef] = converted.weights
        self._counts = {layer.name: len(layer.weights) for layer in model.layers
                        if len(layer.weights)}
        self._vars = {(layer.name, i): (w.name, tuple(int(d) for d in w.shape))
                      for layer in model.layers for i, w in enumerate(layer.weights)}

    def weights(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]:
        """Initializer values (float32, ONNX layout) of every weight for ``checkpoint``.

        Raises:
            CheckpointError: naming the file and the tensor when a layer is missing or extra,
                or a tensor's shape differs from the architecture's.
        """
        path = Path(checkpoint.path)
        arrays = read_weights(path)
        for lname, arrs in arrays.items():
            if lname not in self._counts:
                raise CheckpointError(path, f"tensors of layer {lname!r}: the "
                                      "architecture has no such layer (other "
                                      f"architecture than {self.architecture_file}?)")
            if len(arrs) != self._counts[lname]:
                raise CheckpointError(path, f"layer {lname!r} has {len(arrs)} tensors "
                                      f"({lname}/0..{len(arrs) - 1}); the architecture "
                                      f"expects {self._counts[lname]}")
            for i, a in enumerate(arrs):
                var, want = self._vars[(lname, i)]
                if tuple(a.shape) != want:
                    raise CheckpointError(path, f"tensor {lname}/{var} has shape "
                                          f"{tuple(a.shape)}; the architecture "
                                          f"({self.architecture_file}) expects {want}")
        out = {}
        for name, ref in self.refs.items():
            if ref.layer not in arrays:
                raise CheckpointError(path, f"tensor {name} missing: no weights for layer "
                                      f"{ref.layer!r}")
            out[name] = ref.to_onnx(arrays[ref.layer][ref.index])
        return out

    def architecture(self) -> onnx.ModelProto:
        """The ONNX model with the first checkpoint's weights (a fresh copy each call)."""
        model = onnx.ModelProto()
        model.CopyFrom(self._onnx)
        values = self.weights(self.checkpoints[0])
        for init in model.graph.initializer:
            if init.name in values:
                init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
        return model


def make_source(checkpoints: list[Checkpoint], options: SourceOptions = SourceOptions()
                ) -> KerasSource:
    """The :class:`KerasSource` of a run (the adapter contract's ``make_source``).

    The architecture comes from, in order: ``options.model`` (``MODULE:CALLABLE[(k=v, ...)]``,
    a callable or a ``keras.Model``); the first whole-model checkpoint (``.keras`` or full
    ``.h5``); for ``.weights.h5`` runs, the single ``.json``/``.keras`` file in the first
    checkpoint's folder that is not a checkpoint.

    Args:
        checkpoints: the run's checkpoints (not empty).
        options: ``model`` (``--model``); ``input_shape`` (``--input-shape`` in Keras order
            without batch, H,W,C, for unbuilt models); ``trust_pickle`` (load with
            ``safe_mode=False``, which allows Lambda layers' Python code).
    """
    model, input_shape, trust_pickle = options.model, options.input_shape, options.trust_pickle
    if not checkpoints:
        raise NasprobeError("no Keras checkpoint given")
    if model is not None:
        return KerasSource(checkpoints, model_from_spec(model, input_shape), str(model))
    whole = [c for c in checkpoints if not is_weights_only(Path(c.path))]
    if whole:
        path = Path(whole[0].path)
        return KerasSource(checkpoints, load_model(path, trust_pickle), str(path))
    first = Path(checkpoints[0].path)
    arch = find_architecture_file(first.parent, {Path(c.path).resolve() for c in checkpoints})
    if arch.name.lower().endswith(".json"):
        keras_model = load_architecture_json(arch, trust_pickle)
    else:
        keras_model = load_model(arch, trust_pickle)
    return KerasSource(checkpoints, keras_model, str(arch))
