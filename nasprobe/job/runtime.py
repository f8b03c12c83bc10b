"""onnxruntime sessions: provider choice, CUDA start-up, a session per checkpoint, batched runs.

One architecture is tapped once (:class:`TappedModel`); per epoch a new session is made from
the same graph with the checkpoint's arrays put in by :mod:`nasprobe.job.weights`. The provider
that *runs* a session is
read back after creation: a CUDA request that onnxruntime could not honour (no driver, missing
CUDA/cuDNN libraries) runs on CPU, with one short notice of ours instead of onnxruntime's own
multi-line log (the README's Install section describes the GPU set-up).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from nasprobe.cpus import usable_cpus
from nasprobe.errors import CheckpointError, NasprobeError

from . import pipeline
from .arena import shared_cpu_arena
from .blocked_taps import BlockedGraph, plan_blocked
from .weights import Placed, WeightPlacer

__all__ = ["CPU", "CUDA", "select_providers", "TappedModel", "provider_notice",
           "set_intra_op_threads", "intra_op_threads", "preload_cuda_libraries", "new_session",
           "short_reason", "captured_stderr", "forget_notices", "run_batch",
           "tap_blocks"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_NOTICED: set[str] = set()
_PRELOADED = False
#: onnxruntime intra-op threads for new sessions (None: onnxruntime's default, all cores).
_INTRA_OP_THREADS: int | None = None
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ORT_PREFIX = re.compile(r"^.*?\[[A-Z]:onnxruntime:[^\]]*\]\s*")
#: "EP Error /path/file.cc:729 void Function(Args&) " before the message of a failed start
_EP_ERROR = re.compile(r"^EP Error\s+(\S+:\d+\s+.*?\)\s+)?")


def set_intra_op_threads(n: int | None) -> None:
    """Threads one onnxruntime session may use in this process (None = all cores). Dask
    workers set it to their own thread count so that N workers on N cores do not each start
    N threads."""
    global _INTRA_OP_THREADS
    _INTRA_OP_THREADS = None if n is None else max(1, int(n))


def intra_op_threads() -> int:
    """The cores one probe job's sessions may use: :func:`set_intra_op_threads`'s number, else
    the CPUs this process may run on (its affinity mask, e.g. a cluster job's share)."""
    return _INTRA_OP_THREADS if _INTRA_OP_THREADS is not None else usable_cpus()


def forget_notices() -> None:
    """Forget which one-time notices were printed, so that each is printed once more (a
    long-lived process that starts a new job, or a test)."""
    _NOTICED.clear()


def provider_notice(message: str) -> None:
    """Print a one-time notice about where the job runs (the execution provider, where NAS
    is computed) to stderr."""
    if message not in _NOTICED:
        _NOTICED.add(message)
        print(f"nasprobe: {message}", file=sys.stderr)


def select_providers(device: str = "auto") -> list[str]:
    """Onnxruntime providers to ask for on ``device`` (``auto``, ``cpu`` or ``cuda``).

    ``cuda`` or ``auto`` ask for ``CUDAExecutionProvider`` when this onnxruntime lists it; a
    ``cuda`` request without it gets CPU with a notice on stderr. Listed is not working: which
    provider runs is known only once a session exists (:attr:`TappedModel.provider`).
    """
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise NasprobeError(f"--device must be auto, cpu or cuda, not {device!r}")
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        provider_notice("CUDA was requested but this onnxruntime offers only "
                        f"{', '.join(available)}; running on CPU (install nasprobe[gpu] for "
                        "onnxruntime-gpu)")
    return [CPU]


def preload_cuda_libraries() -> None:
    """Call ``onnxruntime.preload_dlls()`` once, where it exists (onnxruntime-gpu >= 1.21).

    It loads the CUDA and cuDNN libraries that the ``nvidia-*`` wheels of the ``gpu`` extra put
    into site-packages, so that a GPU user needs a driver and nothing else. What it prints about
    libraries it cannot find is dropped: a session that cannot start says why (see
    :func:`new_session`)."""
    global _PRELOADED
    if _PRELOADED:
        return
    _PRELOADED = True
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with captured_stderr(), contextlib.redirect_stdout(open(os.devnull, "w")):
        try:
            preload()
        except Exception:  # noqa: BLE001 - a missing library shows when the session starts
            pass


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor 2 (onnxruntime's logger) while the
    block runs; the yielded list receives the text when the block ends."""
    text: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode("utf-8", "replace"))


def short_reason(log: str) -> str:
    """One line saying why onnxruntime could not start a provider, from its log ``log``:
    the library it failed to load when it names one, else its first message."""
    lines = [_ORT_PREFIX.sub("", _ANSI.sub("", line)).strip() for line in log.splitlines()]
    lines = [_EP_ERROR.sub("", line) for line in lines if line.strip("* ") and
             not line.startswith(("*", "when using", "Falling back"))]
    for line in lines:
        m = re.search(r"with error: (.+)", line)
        if m:
            return m.group(1).strip()
    for line in lines:
        if "CUDA" in line or "cuda" in line:
            return line.split(". Please")[0].rstrip(".")
    return lines[0].split(", make sure")[0].rstrip(".") if lines else "onnxruntime gave no reason"


def new_session(model: bytes | str, providers: list[str], options=None):
    """An ``onnxruntime.InferenceSession`` on the first of ``providers`` that starts.

    Returns:
        ``(session, reason)``: ``reason`` is None when the first provider runs the session,
        else one line saying why it did not (onnxruntime's log of a CUDA start is captured and
        shortened by :func:`short_reason`, never printed raw).
    """
    import onnxruntime as ort

    quiet = providers[0] != CPU  # onnxruntime logs a failed start natively and print()s a retry
    if quiet:  # CUDA, TensorRT: their libraries may come from the nvidia-* wheels
        preload_cuda_libraries()
    printed = io.StringIO()
    # catch_warnings and the redirections act on every thread: see pipeline.PROCESS_LOCK
    with pipeline.PROCESS_LOCK, warnings.catch_warnings(), \
            (captured_stderr() if quiet else contextlib.nullcontext([])) as log, \
            (contextlib.redirect_stdout(printed) if quiet else contextlib.nullcontext()):
        warnings.simplefilter("ignore")
        try:
            sess = ort.InferenceSession(model, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - any failure to start: try the next provider
            sess, err = None, exc
    text = "".join(log) + printed.getvalue()
    if sess is None:  # some onnxruntime versions raise instead of falling back
        if not quiet or len(providers) == 1:
            sys.stderr.write(text)
            raise err
        sess, _ = new_session(model, providers[1:], options)
        said = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return sess, short_reason(text) if text.strip() else said
    if sess.get_providers()[0] != providers[0]:
        return sess, short_reason(text)
    if text.strip():  # the provider runs: whatever onnxruntime said is not ours to drop
        sys.stderr.write(text)
    return sess, None


@dataclass
class _Init:
    dims: tuple[int, ...]
    dtype: np.dtype


class TappedModel:
    """A tapped ONNX graph whose weights can be swapped per checkpoint.

    Args:
        model: the graph from :func:`nasprobe.onnxgraph.nas_graph.build_probe_graph` or
            :func:`nasprobe.onnxgraph.nas_graph.build_tap_graph`.
        device: ``auto``, ``cpu`` or ``cuda``.

    After the first :meth:`session`, :attr:`provider` is the provider that runs the sessions
    and :attr:`fallback` (None when CUDA started or was not asked for) says why CUDA did not;
    a CUDA start that failed once is not tried again for this model.
    """

    def __init__(self, model: onnx.ModelProto, device: str = "auto"):
        self.model = model
        self.providers = select_providers(device)
        self.inits = {t.name: _Init(tuple(t.dims), onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
                      for t in model.graph.initializer}
        self.placer = WeightPlacer(model)
        #: the graph with tap outputs left in onnxruntime's blocked layout (:meth:`block_taps`)
        self.blocked: BlockedGraph | None = None
        self.provider: str | None = None
        self.fallback: str | None = None
        inputs = [i for i in model.graph.input if i.name not in self.inits]
        self.input_name = inputs[0].name
        self.input_shape = tuple(
            d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim)
        #: numpy dtype of the input (an integer one for token ids)
        self.input_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(
            inputs[0].type.tensor_type.elem_type or onnx.TensorProto.FLOAT))
        self.output_names = [o.name for o in model.graph.output]
        #: the batch size the graph was exported with, when its batch axis is not dynamic
        self.fixed_batch = self.input_shape[0] if self.input_shape and self.input_shape[0] else None

    def _session_args(self, placed: Placed, threads: int | None, optimise: bool = True) -> tuple:
        """``new_session``'s arguments for the graph ``placed`` (``optimise``: off for a graph
        onnxruntime has optimised already)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if not optimise:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # Idle onnxruntime threads would otherwise spin for a while after each run, taking the
        # cores from the host NAS kernel and the store writes that follow every batch.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None or _INTRA_OP_THREADS is not None:
            opts.intra_op_num_threads = threads if threads is not None else _INTRA_OP_THREADS
        if self.providers == [CPU] and shared_cpu_arena():
            opts.add_session_config_entry("session.use_env_allocators", "1")
        if placed.names:
            opts.add_external_initializers(placed.names, placed.values)
        return placed.model, self.providers, opts

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

    def session(self, weights: dict[str, np.ndarray] | None = None, path="<checkpoint>", *,
                threads: int | None = None):
        """An ``onnxruntime.InferenceSession`` with ``weights`` (initializer name → array) swapped in.

        ``threads``: onnxruntime intra-op threads of one run (default: the
        :func:`set_intra_op_threads` setting, else onnxruntime's own, all cores); probe streams
        that call ``run`` from several threads at once give each run a share.

        Each array is cast to the graph's dtype and shape (a 0-d array stays 0-d) and placed by
        :meth:`nasprobe.job.weights.WeightPlacer.place`; should onnxruntime refuse that graph,
        every array is written into it instead (:meth:`~nasprobe.job.weights.WeightPlacer.baked`).
        Initializers not in ``weights`` keep the graph's values.

        The provider that actually runs is kept in :attr:`provider`; a CUDA request that did
        not take falls back to CPU with one short notice (the reason in one line).
        """
        arrays = None
        if weights:
            self.check_weights(weights, path)
            arrays = {name: np.asarray(arr, dtype=self.inits[name].dtype, order="C")
                      .reshape(self.inits[name].dims)  # not ascontiguousarray: it makes 0-d 1-d
                      for name, arr in weights.items()}
        if self.blocked is not None:
            sess = self._blocked_session(arrays or {}, threads)
            if sess is not None:
                return sess
        if arrays:
            placed = self.placer.place(arrays)
        else:
            placed = Placed(self.model.SerializeToString())
        try:
            sess, reason = new_session(*self._session_args(placed, threads))
        except Exception:
            if not placed.names:
                raise
            # a graph whose external initializers onnxruntime will not take (an input it must
            # read at load time): the slower way, every array written into the graph
            placed = self.placer.baked(arrays)
            sess, reason = new_session(*self._session_args(placed, threads))
        # onnxruntime reads external initializers where they lie: they must outlive the session
        sess._nasprobe_weights = placed.values
        self.provider = sess.get_providers()[0]
        sess._nasprobe_blocks = {}
        if reason is not None and self.providers[0] == CUDA:
            self.fallback = reason
            self.providers = [CPU]
            provider_notice(f"CUDA could not start ({reason}); running on CPU")
        return sess


    def block_taps(self, fetch: list[str], sample: np.ndarray, reference: list[np.ndarray]
                   ) -> bool:
        """Let later sessions return the outputs ``fetch`` in onnxruntime's blocked layout
        (:func:`nasprobe.job.blocked_taps.plan_blocked`; ``reference``: their ordinary values
        for the input ``sample``). Returns whether any is; :func:`tap_blocks` says which."""
        if self.providers != [CPU] or self.fixed_batch:
            return False
        self.blocked = plan_blocked(self.model, fetch, sample, self.input_name, reference)
        return self.blocked is not None

    def _blocked_session(self, arrays: dict[str, np.ndarray], threads: int | None):
        """A session of :attr:`blocked` with ``arrays``; None where that plan does not apply
        to these arrays or onnxruntime refuses it (the ordinary session is made instead)."""
        placed = self.blocked.place(arrays, lambda name: numpy_helper.to_array(
            self.model.graph.initializer[self.placer.index[name]]))
        if placed is None:
            return None
        try:
            sess, _ = new_session(*self._session_args(placed, threads, optimise=False))
        except Exception:  # noqa: BLE001 - the ordinary way still works
            return None
        sess._nasprobe_weights = placed.values
        sess._nasprobe_blocks = self.blocked.blocks
        self.provider = sess.get_providers()[0]
        return sess


def tap_blocks(session) -> dict:
    """Output name → :class:`nasprobe.measures.nchwc.Block` for the outputs of ``session`` (one
    of :meth:`TappedModel.session`'s) that come in onnxruntime's blocked layout; ``{}`` for
    any other session."""
    return getattr(session, "_nasprobe_blocks", {})


def run_batch(session, names: list[str], input_name: str, x: np.ndarray,
              fixed_batch: int | None = None, *, bind: bool = False) -> list[np.ndarray]:
    """``session.run(names, {input_name: x})`` as host arrays.

    With ``fixed_batch``, ``x`` (``n <= fixed_batch`` images) is padded with zeros to that size
    and every output cut back to ``n`` rows; an output whose first axis is not the batch (a
    sequence model's ``(T * N, D)`` after its recurrent layer) cannot be cut, so padding is
    refused for it (unpadded batches return every row). With ``bind`` (sessions on CUDA) the run goes
    through onnxruntime's IO binding: the input is copied to the device once and only the
    ``names`` outputs (NAS maps, not tap tensors) are copied back to the host.
    """
    n = len(x)
    padded = bool(fixed_batch) and n < fixed_batch
    if padded:
        x = np.concatenate([x, np.zeros((fixed_batch - n, *x.shape[1:]), x.dtype)])
    if bind:
        io = session.io_binding()
        io.bind_cpu_input(input_name, np.ascontiguousarray(x))
        for name in names:
            io.bind_output(name, "cpu")
        session.run_with_iobinding(io)
        outs = io.copy_outputs_to_cpu()
    else:
        outs = session.run(names, {input_name: x})
    if not padded:
        return outs
    if any(o.ndim == 0 or o.shape[0] != fixed_batch for o in outs):
        raise NasprobeError(f"the model has a fixed batch of {fixed_batch} and a tap whose first "
                            "axis is not the batch, so the last batch cannot be padded: use a "
                            f"probe set whose size is a multiple of {fixed_batch}")
    return [o[:n] for o in outs]
