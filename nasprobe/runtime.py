"""onnxruntime sessions: provider choice (CUDA when present, CPU otherwise) and weight swaps.

One architecture is tapped once (:class:`TappedModel`); per epoch only its initializers are
replaced and a new session is made from the same graph.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import CheckpointError, NasprobeError

__all__ = ["select_providers", "TappedModel", "provider_notice", "set_intra_op_threads"]

_NOTICED: set[str] = set()
#: onnxruntime intra-op threads for new sessions (None: onnxruntime's default, all cores).
_INTRA_OP_THREADS: int | None = None


def set_intra_op_threads(n: int | None) -> None:
    """Threads one onnxruntime session may use in this process (None = all cores). Dask
    workers set it to their own thread count so that N workers on N cores do not each start
    N threads."""
    global _INTRA_OP_THREADS
    _INTRA_OP_THREADS = None if n is None else max(1, int(n))


def provider_notice(message: str) -> None:
    """Print a one-time notice about the execution provider to stderr."""
    if message not in _NOTICED:
        _NOTICED.add(message)
        print(f"nasprobe: {message}", file=sys.stderr)


def select_providers(device: str = "auto") -> list[str]:
    """onnxruntime providers for ``device`` (``auto``, ``cpu`` or ``cuda``).

    ``cuda`` or ``auto`` use ``CUDAExecutionProvider`` when this onnxruntime has it; a ``cuda``
    request without it falls back to CPU with a notice on stderr.
    """
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise NasprobeError(f"--device must be auto, cpu or cuda, not {device!r}")
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        provider_notice("CUDA was requested but this onnxruntime offers only "
                        f"{', '.join(available)}; running on CPU (install nasprobe[gpu] for "
                        "onnxruntime-gpu)")
    return ["CPUExecutionProvider"]


@dataclass
class _Init:
    index: int
    dims: tuple[int, ...]
    dtype: np.dtype


class TappedModel:
    """A tapped ONNX graph whose weights can be swapped per checkpoint.

    Args:
        model: the graph from :func:`nasprobe.graph.build_probe_graph`.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    def __init__(self, model: onnx.ModelProto, device: str = "auto"):
        self.model = model
        self.providers = select_providers(device)
        self.inits = {}
        for i, t in enumerate(model.graph.initializer):
            self.inits[t.name] = _Init(i, tuple(t.dims), onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        self.provider = None
        inputs = [i for i in model.graph.input if i.name not in self.inits]
        self.input_name = inputs[0].name
        self.input_shape = tuple(
            d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim)
        self.output_names = [o.name for o in model.graph.output]
        #: the batch size the graph was exported with, when its batch axis is not dynamic
        self.fixed_batch = self.input_shape[0] if self.input_shape and self.input_shape[0] else None

    def check_weights(self, weights: dict[str, np.ndarray], path) -> None:
        """Raise :class:`CheckpointError` naming ``path`` and the tensor when ``weights`` do not fit."""
        for name, arr in weights.items():
            init = self.inits.get(name)
            if init is None:
                raise CheckpointError(path, f"tensor {name!r} is not part of the architecture "
                                      "(a checkpoint of another model?)")
            if tuple(np.shape(arr)) != init.dims:
                raise CheckpointError(path, f"tensor {name!r} has shape {tuple(np.shape(arr))}, "
                                      f"the architecture has {init.dims}")

    def session(self, weights: dict[str, np.ndarray] | None = None, path="<checkpoint>"):
        """An ``onnxruntime.InferenceSession`` with ``weights`` (initializer name → array) swapped in.

        The provider that actually runs is checked with ``get_providers()`` and kept in
        :attr:`provider`; a CUDA request that did not take falls back to CPU with a notice.
        """
        import onnxruntime as ort

        model = self.model
        if weights:
            self.check_weights(weights, path)
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            for name, arr in weights.items():
                init = self.inits[name]
                model.graph.initializer[init.index].CopyFrom(
                    numpy_helper.from_array(np.ascontiguousarray(arr, dtype=init.dtype), name))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # Idle onnxruntime threads would otherwise spin for a while after each run, taking the
        # cores from the host NAS kernel and the store writes that follow every batch.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if _INTRA_OP_THREADS is not None:
            opts.intra_op_num_threads = _INTRA_OP_THREADS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=self.providers)
        used = sess.get_providers()
        self.provider = used[0]
        if self.providers[0] == "CUDAExecutionProvider" and used[0] != "CUDAExecutionProvider":
            provider_notice("CUDAExecutionProvider could not be used; running on CPU")
        return sess
