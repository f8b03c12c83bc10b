"""``JaxSource``: one run's JAX checkpoints as an ONNX architecture plus per-epoch weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from nasprobe.contract import Checkpoint, SourceOptions, parse_shape
from nasprobe.errors import CheckpointError, NasprobeError

from .export import Exported, export_module, module_arrays
from .loading import build_module, fit_state, read_checkpoint

__all__ = ["JaxSource", "make_source"]

#: The axis order of ``--input-shape`` (Flax's channels-last convolutions; the plug-in's
#: ``input_layout``).
LAYOUT = "H,W,C"


class JaxSource:
    """The checkpoints of one JAX run as a ``CheckpointSource`` (docs/adapters.md).

    ``architecture()`` builds the NNX module from ``--model``, exports it once through
    jax2onnx (:mod:`nasprobe_jax.export`) and returns a copy holding the first checkpoint's
    weights, which the caller owns (the export itself is not changed); ``weights(ckpt)`` only
    reads a checkpoint and lays its arrays out as the graph's initializers. ``provenance`` is
    empty.

    Args:
        checkpoints: the run's ``.msgpack`` files or Orbax folders, sorted by epoch.
        options: ``model`` (``MODULE:CALLABLE[(k=v)]``, a callable or an ``nnx.Module``;
            required, as JAX checkpoints hold only arrays) and ``input_shape`` (one sample's
            shape as the module takes it, e.g. ``(H, W, C)``; default: the module's
            ``input_shape`` attribute). JAX checkpoints never hold pickles, so
            ``trust_pickle`` changes nothing. Taps are the core's business: the graph keeps
            BatchNorm apart, so both kinds are found in it.
    """

    framework = "jax"

    def __init__(self, checkpoints: Sequence[Checkpoint], options: SourceOptions = SourceOptions()):
        if not checkpoints:
            raise NasprobeError("no JAX checkpoint given")
        self.checkpoints = list(checkpoints)
        self.model_spec = options.model
        self.input_shape = options.input_shape
        self.provenance: dict[str, Any] = {}
        self._exported: Exported | None = None

    def exported(self) -> Exported:
        """The export (built on first use, with the module's initial weights).

        The first checkpoint is read and checked against the module before the (slow)
        export, so that a damaged file or another architecture fails at once.
        """
        if self._exported is None:
            first = Path(self.checkpoints[0].path)
            if self.model_spec is None:
                raise CheckpointError(first, "JAX checkpoints hold only arrays: pass --model "
                                      "MODULE:CALLABLE building the Flax NNX module")
            module = build_module(self.model_spec)
            shapes = {k: v.shape for k, v in module_arrays(module).items()}
            fit_state(read_checkpoint(first, shapes), shapes, first)
            origin = str(self.model_spec)
            shape = self.input_shape or parse_shape(getattr(module, "input_shape", None),
                                                    LAYOUT, f"the input_shape of {origin}")
            if shape is None:
                raise NasprobeError(f"{origin}: pass --input-shape {LAYOUT} (one sample's shape "
                                    "as the module takes it, without the batch axis)")
            self._exported = export_module(module, shape, origin=origin)
        return self._exported

    def architecture(self) -> onnx.ModelProto:
        """The ONNX model with the first checkpoint's weights: a new copy each call, which the
        caller owns (the export, made once, keeps the module's initial weights)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.exported().model)
        values = self.weights(self.checkpoints[0])
        for init in model.graph.initializer:
            if init.name in values:
                init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
        return model

    def layers(self) -> list[str]:
        """The Conv/Linear module paths of the graph's linear operators, in graph order."""
        return list(self.exported().layers)

    def weights(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]:
        """The graph's weight initializers for one checkpoint.

        Returns:
            initializer name → float32 array in the graph's layout (e.g. a Flax Conv kernel
            ``(kh, kw, C_in, C_out)`` as ONNX's ``(C_out, C_in, kh, kw)``).

        Raises:
            CheckpointError: unreadable or damaged file/folder, or arrays that do not fit the
                module (names the checkpoint and the tensor).
        """
        exported = self.exported()
        path = Path(checkpoint.path)
        params = fit_state(read_checkpoint(path, exported.shapes), exported.shapes, path)
        return exported.initializers(params)


def make_source(checkpoints: Sequence[Checkpoint], options: SourceOptions = SourceOptions()
                ) -> JaxSource:
    """The :class:`JaxSource` of one run (what the ``jax`` adapter's ``make_source`` gives)."""
    return JaxSource(checkpoints, options)
