"""``TorchSource``: one run's PyTorch checkpoints as an ONNX architecture plus per-epoch weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from nasprobe.contract import Checkpoint, SourceOptions, parse_shape
from nasprobe.errors import CheckpointError, NasprobeError

from .export import Exported, export_model
from .loading import build_model, fit_state_dict, load_file, state_dict_of

__all__ = ["make_source", "TorchSource", "ExportedSource"]

SELF_CONTAINED = (nn.Module, torch.export.ExportedProgram)

#: The axis order of ``--input-shape`` (PyTorch's own; the plug-in's ``input_layout``).
LAYOUT = "C,H,W"


class ExportedSource:
    """What every source that exports a torch module once has in common: the export is built on
    first use by the subclass's ``_build()`` (an :class:`~nasprobe_torch.export.Exported`) and
    kept; :meth:`architecture` hands out copies of it."""

    _exported: Exported | None = None

    def _build(self) -> Exported:
        raise NotImplementedError

    def exported(self) -> Exported:
        """The export (built on first use): graph, initializer layout and layer names."""
        if self._exported is None:
            self._exported = self._build()
        return self._exported

    def architecture(self) -> onnx.ModelProto:
        """The ONNX model with the first checkpoint's weights (exported once): a new copy each
        call, which the caller owns."""
        model = onnx.ModelProto()
        model.CopyFrom(self.exported().model)
        return model

    def layers(self) -> list[str]:
        """The module paths of the graph's linear operators, in graph order."""
        return list(self.exported().layers)


class TorchSource(ExportedSource):
    """The checkpoints of one PyTorch run as a :class:`nasprobe.contract.CheckpointSource`.

    ``architecture()`` exports once (the model from ``options.model`` with the first
    checkpoint's weights, or the first checkpoint itself when it is a self-contained program)
    and gives a copy each call; ``weights(ckpt)`` then only reads a state dict and returns the
    graph's initializers. ``provenance`` is empty. Arguments: see :func:`make_source`.
    """

    framework = "torch"

    def __init__(self, checkpoints: Sequence[Checkpoint],
                 options: SourceOptions = SourceOptions()):
        if not checkpoints:
            raise NasprobeError("no checkpoints given")
        self.checkpoints = list(checkpoints)
        self.model_spec = options.model
        self.input_shape = options.input_shape
        self.trust_pickle = options.trust_pickle
        self.provenance: dict[str, Any] = {}
        self._exported: Exported | None = None
        self._expected: dict[str, torch.Size] = {}

    def _load_state(self, path: Path, obj: Any = None) -> dict[str, torch.Tensor]:
        if obj is None:
            obj = load_file(path, self.trust_pickle)
        return fit_state_dict(state_dict_of(obj, path), self._expected, path)

    def _build(self) -> Exported:
        first = self.checkpoints[0].path
        obj = load_file(first, self.trust_pickle)
        shape = self.input_shape
        if self.model_spec is not None:
            target = build_model(self.model_spec)
            self._expected = {k: v.shape for k, v in target.state_dict().items()}
            state = self._load_state(first, obj)
            target.load_state_dict(state, strict=False)
            shape = shape or parse_shape(getattr(target, "input_shape", None), LAYOUT,
                                         f"the input_shape of {self.model_spec}")
        elif isinstance(obj, SELF_CONTAINED):
            target = obj
            self._expected = {k: v.shape for k, v in state_dict_of(obj, first).items()}
            if shape is None and isinstance(obj, torch.export.ExportedProgram):
                args = (obj.example_inputs or ((), {}))[0]
                if args and isinstance(args[0], torch.Tensor):
                    shape = tuple(args[0].shape[1:])
        else:
            raise CheckpointError(first, "holds only weights (a state dict): pass --model "
                                  "MODULE:CALLABLE to build the architecture")
        if shape is None:
            raise NasprobeError(f"{first}: pass --input-shape {LAYOUT} (one sample's shape, "
                                "without the batch axis)")
        return export_model(target, shape, origin=str(first))

    def weights(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]:
        """The graph's weight initializers for one checkpoint.

        Returns:
            initializer name → float32 array in the graph's layout (e.g. a ``MatMul`` weight is
            the transposed ``nn.Linear`` weight, shape ``(D_in, D_out)``); every initializer
            that comes from the model's state dict is given.

        Raises:
            CheckpointError: unreadable file, or a state dict that does not fit the
                architecture (names the file and the tensor).
        """
        exported = self.exported()
        state = self._load_state(Path(checkpoint.path))
        out: dict[str, np.ndarray] = {}
        for name, (key, perm) in exported.layout.items():
            if key not in state:
                raise CheckpointError(checkpoint.path, f"tensor {key!r} is missing")
            tensor = state[key].detach()
            array = (tensor.to(torch.float32) if tensor.is_floating_point() else tensor).numpy()
            if perm is not None:
                array = array.transpose(perm)
            out[name] = np.ascontiguousarray(array)
        return out


def make_source(checkpoints: Sequence[Checkpoint], options: SourceOptions = SourceOptions()
                ) -> TorchSource:
    """The :class:`TorchSource` for one run's PyTorch checkpoints (the adapter contract's
    ``make_source``).

    Args:
        checkpoints: the run's checkpoints (``.pt .pth .bin .ckpt .safetensors .pt2``,
            TorchScript archives), sorted by epoch.
        options: ``model``: ``MODULE:CALLABLE`` or ``MODULE:CALLABLE(key=value, ...)``
            (literal arguments; ``MODULE`` may be a ``.py`` path), a callable, or an
            ``nn.Module``; needed unless the checkpoints are self-contained (TorchScript,
            ``.pt2``, a pickled module). ``input_shape``: one sample's shape without the batch
            axis, ``(C, H, W)``; defaults to the model's ``input_shape`` attribute or a
            ``.pt2``'s example input. ``trust_pickle``: allow pickles holding Python objects
            (can run code).
    """
    return TorchSource(checkpoints, options)
