"""One (run, epoch) as a self-contained task: the unit of work of serial and Dask probing.

A task (:class:`EpochTask`) holds only small, picklable things — a :class:`RunSpec` (paths and
options), one checkpoint's path (or URL) and epoch, and the job's
:class:`~nasprobe.store.writer.RunWriter` for the run — and rebuilds the heavy objects (checkpoint
source, tapped ONNX graph,
onnxruntime model, probe set) itself. They are cached per process in a small LRU keyed by
:attr:`RunSpec.key`, so a worker builds a run's tapped model once and keeps at most
:data:`CACHE_SIZE` of them: memory grows with neither the number of epochs nor of runs.

:func:`run_epoch` writes the epoch with one :meth:`nasprobe.store.writer.RunWriter.write_epoch` call
(its chunks, then the commit marker; see docs/store-design.md) and returns a small
:class:`Outcome`; nothing per epoch is kept after it returns.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from concurrent.futures import wait
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import numpy as np
from onnx import numpy_helper

from nasprobe.contract import Checkpoint
from nasprobe.errors import CheckpointError, NasprobeError, ProbeSetError, printable
from nasprobe.frameworks.registry import open_source
from nasprobe.measures.activity import location_mask
from nasprobe.measures.correlation import corr_histogram
from nasprobe.measures.kernels import available as kernels_available
from nasprobe.onnxgraph.nas_graph import ACT_PREFIX, build_probe_graph, build_tap_graph
from nasprobe.onnxgraph.taps import Tap, find_taps
from nasprobe.probesets import ProbeSet, is_text_probe, load_probe_set, load_text_probe
from nasprobe.store.download_cache import local_copy
from nasprobe.store.storage import is_url

from .epoch import output_kind, probe_epoch
from .options import ProbeOptions
from .pipeline import cpu_streams, worker_pool
from .runtime import (
    CPU,
    CUDA,
    TappedModel,
    intra_op_threads,
    provider_notice,
    run_batch,
    select_providers,
)

__all__ = ["RunSpec", "EpochTask", "RunContext", "Outcome", "context", "run_epoch", "host_nas",
           "reading", "CACHE_SIZE", "forget_remote", "one_blas_thread",
           "weight_correlations"]

#: Run contexts (tapped model + probe set) kept per process.
CACHE_SIZE = 2


@dataclass(frozen=True)
class RunSpec:
    """Everything a process needs to rebuild one run's tapped model; small and picklable.

    ``checkpoints`` are ``(path, epoch)`` pairs of the run (the first gives the architecture);
    ``options`` are the job's :class:`~nasprobe.job.options.ProbeOptions`. ``probe_sha256``, once
    known, lets a worker check that it reads the probe set the coordinator hashed. ``key``
    identifies the run's tapped model in the per-process cache: the run, its checkpoints and
    the options' fingerprint.
    """

    run: str
    checkpoints: tuple[tuple[str, int], ...]
    options: ProbeOptions
    probe_sha256: str | None = None

    @cached_property
    def key(self) -> str:
        """Cache key of the run's tapped model (see the class docstring)."""
        text = json.dumps([self.run, self.checkpoints, self.options.fingerprint])
        return hashlib.sha256(text.encode()).hexdigest()

    def ckpts(self) -> list[Checkpoint]:
        """The run's checkpoints as :class:`~nasprobe.contract.Checkpoint` objects."""
        return [Checkpoint(local_copy(p), e) for p, e in self.checkpoints]


@dataclass(frozen=True)
class EpochTask:
    """One (run, epoch) of a probe job: the argument of :func:`run_epoch`.

    Attributes:
        spec: the run (paths and options, not objects).
        path, epoch: the checkpoint and its epoch.
        writer: the job's :class:`~nasprobe.store.writer.RunWriter` for the run (it commits the
            epoch; see docs/store-design.md).
    """

    spec: RunSpec
    path: str
    epoch: int
    writer: Any


@dataclass
class RunContext:
    """One run's heavy objects, built once per process by :func:`context`.

    ``spatial`` maps layer → location shape of its NAS map (``()`` for a dense layer);
    ``base`` holds the architecture's initializers (name → array) for the weight correlations;
    ``kind`` says what the model's first output holds (see :func:`output_kind`); ``fetch``
    names, per tap, the session output to read: the NAS map, or with ``host`` the raw tap
    tensor whose NAS :func:`nasprobe.measures.kernels.nas_map` computes; ``acts`` says per
    tap where its unit activity is counted (:func:`nasprobe.measures.activity.extra_outputs`).
    """

    source: Any
    taps: list[Tap]
    tapped: TappedModel
    probeset: ProbeSet
    spatial: dict[str, tuple[int, ...]]
    base: dict[str, np.ndarray]
    kind: str
    fetch: list[str]
    host: bool = False
    acts: list[str | None] | None = None


@dataclass
class Outcome:
    """What a task reports back: ``status`` ``ok``, ``error`` (a bad checkpoint) or
    ``crashed`` (the process running it died: a failure, not bad input); for ``error`` and
    ``crashed`` the file and message; for ``ok`` the execution provider and the tensors with
    non-finite weights."""

    run: str
    epoch: int
    path: str
    status: str = "ok"
    message: str = ""
    provider: str = ""
    nonfinite: list[str] = field(default_factory=list)


#: tap values (checkpoints × probe images × values per image) from which a run leaves its taps in
#: onnxruntime's blocked layout: below, the plan (about 0.07 s for a 9 MB model) costs more
#: than the conversions it saves (about 0.25 ns per value on a 2-core Xeon)
BLOCKED_MIN_VALUES = 2 ** 28

_CONTEXTS: OrderedDict[str, RunContext] = OrderedDict()
_PROBESETS: OrderedDict[tuple, ProbeSet] = OrderedDict()


def _probe_set(spec: RunSpec, input_shape: tuple, input_dtype=np.float32, source=None
               ) -> ProbeSet:
    """The probe set fitted to ``input_shape`` (and integer token ids to an integer
    ``input_dtype``), shared by runs of one architecture; a text probe is tokenised by the
    run's ``source`` (its own tokenizer: not shared)."""
    opts = spec.options
    if is_text_probe(opts.probe):
        return load_text_probe(local_copy(opts.probe), getattr(source, "tokenize", None),
                               opts.max_length, input_dtype,
                               f"the {getattr(source, 'framework', '?')} checkpoints")
    if opts.max_length is not None:
        raise ProbeSetError(opts.probe, "--max-length applies to text probes (.txt) only")
    k = (opts.probe, tuple(input_shape), opts.mean, opts.std, np.dtype(input_dtype).str)
    if k not in _PROBESETS:
        while len(_PROBESETS) >= CACHE_SIZE:
            _PROBESETS.popitem(last=False)
        _PROBESETS[k] = load_probe_set(local_copy(opts.probe), input_shape, mean=opts.mean,
                                       std=opts.std, input_dtype=input_dtype)
    _PROBESETS.move_to_end(k)
    return _PROBESETS[k]


def _graph(arch, taps, host: bool, opts: ProbeOptions, label: str):
    """The tapped graph, the outputs to fetch per tap (raw taps on the host, or NAS maps) and
    where each tap's unit activity is counted (:class:`RunContext`)."""
    if host:
        return build_tap_graph(arch, taps, exclude_bias=opts.exclude_bias, source=label,
                               activity=True)
    graph = build_probe_graph(arch, taps, exclude_bias=opts.exclude_bias, source=label,
                              activity=True)
    return graph, [t.output for t in taps], [None if t.act_tensor is None else
                                             ACT_PREFIX + t.layer for t in taps]


def _build(spec: RunSpec) -> RunContext:
    ckpts = spec.ckpts()
    opts = spec.options
    source = reading(ckpts[0].path, open_source, ckpts, opts.framework, opts.source)
    arch = reading(ckpts[0].path, source.architecture)
    label, first = str(ckpts[0].path), ckpts[0].path
    # A damaged first checkpoint can fail anywhere below (onnx, onnxruntime): `reading`
    # reports that as the checkpoint's fault, naming it.
    taps = reading(first, lambda: find_taps(arch, tap=opts.tap, layers=opts.layers,
                                            source=label))
    # Where NAS goes depends on the provider that runs: asked-for CUDA may not start.
    host = host_nas(opts.nas_on, select_providers(opts.device)[0])
    graph, fetch, acts = reading(first, _graph, arch, taps, host, opts, label)
    tapped = reading(first, lambda: TappedModel(graph, device=opts.device))
    session = reading(first, tapped.session)
    if host_nas(opts.nas_on, tapped.provider) != host:  # CUDA fell back to CPU
        host = True
        graph, fetch, acts = reading(first, _graph, arch, taps, host, opts, label)
        tapped = reading(first, lambda: TappedModel(graph, device="cpu"))
        session = reading(first, tapped.session)
    probeset = _probe_set(spec, tapped.input_shape, tapped.input_dtype, source)
    if probeset.mask is not None and not host:  # padding is left out of unit activity per
        host = True  # token, which needs the raw taps (the graph sums over locations)
        if opts.nas_on == "graph":
            provider_notice(f"--nas-on graph gives way to host NAS for the text probe "
                            f"{printable(str(opts.probe))}: unit activity must leave out its "
                            "padding tokens, and the graph's counts sum over all tokens")
        graph, fetch, acts = reading(first, _graph, arch, taps, host, opts, label)
        tapped = reading(first, lambda: TappedModel(graph, device=opts.device))
        session = reading(first, tapped.session)
    # One image through the architecture gives every map's location shape.
    first_out = [session.get_outputs()[0].name] if probeset.labels is not None else []
    sample = probeset.first(1)
    outs = reading(first, run_batch, session, first_out + fetch, tapped.input_name, sample,
                   tapped.fixed_batch)
    del session
    if first_out:  # labels index the model's first output: check them once, here
        classes = int(np.prod(outs[0].shape[1:]))
        if probeset.layout == "tokens" and outs[0].ndim != 2:
            raise ProbeSetError(spec.options.probe, f"labels y need a model output of shape "
                                f"(N, classes); {first_out[0]!r} has shape "
                                f"{tuple(outs[0].shape)} (one prediction per token): drop y")
        outs = outs[1:]
        top = int(probeset.labels.max()) if len(probeset.labels) else -1
        if top >= classes:
            raise ProbeSetError(spec.options.probe, f"label {top} is out of range: the model's "
                                f"output {first_out[0]!r} has {classes} classes (labels must "
                                f"be 0..{classes - 1})")
    spatial = {}
    for t, o in zip(taps, outs):
        shape = [int(d) for d in o.shape]
        if host:
            del shape[t.channel_axis]
        spatial[t.layer] = tuple(shape[1:])
        if probeset.mask is not None:  # padded tokens must be maskable in every layer's maps
            try:
                location_mask(probeset.mask[:1], spatial[t.layer], t.layer)
            except ValueError as exc:
                raise ProbeSetError(opts.probe, f"{exc}; give token ids of one length as an "
                                    "integer .npy array instead") from None
    values = len(ckpts) * probeset.size * sum(o[:1].size for o in outs)
    if host and probeset.mask is None and kernels_available() and values >= BLOCKED_MIN_VALUES:
        # the tap outputs as onnxruntime's CPU convolutions make them (blocked_taps)
        tapped.block_taps(fetch, sample, outs)
    base = reading(first, lambda: {t.name: numpy_helper.to_array(t)
                                   for t in arch.graph.initializer})
    return RunContext(source, taps, tapped, probeset, spatial, base, output_kind(arch), fetch,
                      host, acts)


def host_nas(nas_on: str, provider: str = CPU) -> bool:
    """Whether NAS is computed on the host from raw taps (True) or inside the graph (False).

    ``nas_on``: ``graph``, ``host``, or ``auto`` — host when the compiled kernels are built and
    ``provider`` (the execution provider that runs the session) is not CUDA: on CPU the fused
    host kernel is cheaper than six graph operators over each tap tensor; on CUDA the graph
    keeps the taps on the GPU and only maps leave.
    """
    if nas_on not in ("auto", "graph", "host"):
        raise NasprobeError(f"nas_on must be auto, graph or host, not {nas_on!r}")
    if nas_on == "auto":
        return kernels_available() and provider != CUDA
    return nas_on == "host"


def forget_remote() -> None:
    """Drop this process's cached contexts and probe sets: a new probe job with remote inputs
    reads them again (the objects may have been rewritten since the last job)."""
    _CONTEXTS.clear()
    _PROBESETS.clear()


def context(spec: RunSpec) -> RunContext:
    """The run's :class:`RunContext`, from this process's cache or built (and cached). A
    cached context whose remote probe set has another hash than the job's is built again (a
    long-lived Dask worker after the object was rewritten)."""
    key = spec.key
    ctx = _CONTEXTS.get(key)
    if ctx is not None and spec.probe_sha256 and ctx.probeset.sha256 != spec.probe_sha256 \
            and is_url(spec.options.probe):
        forget_remote()
        ctx = None
    if ctx is None:
        while len(_CONTEXTS) >= CACHE_SIZE:  # evict first: never CACHE_SIZE + 1 alive at once
            _CONTEXTS.popitem(last=False)
        ctx = _build(spec)
        _CONTEXTS[key] = ctx
    _CONTEXTS.move_to_end(key)
    if spec.probe_sha256 and ctx.probeset.sha256 != spec.probe_sha256:
        raise ProbeSetError(spec.options.probe, "changed while it was being probed (sha256 "
                            f"{ctx.probeset.sha256[:12]}…, expected {spec.probe_sha256[:12]}…)")
    return ctx


def nonfinite(weights: dict[str, np.ndarray]) -> list[str]:
    """Names of float tensors in ``weights`` that hold NaN or ±Inf."""
    return [k for k, v in weights.items()
            if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()]


def reading(path, func, *args):
    """``func(*args)`` for an adapter reading the checkpoint ``path``; any error but a
    :class:`~nasprobe.errors.NasprobeError` becomes a :class:`CheckpointError` naming the file
    (a damaged or hostile file raises whatever its parser raises: ``KeyError`` from h5py,
    ``ValueError`` from onnx, ``MemoryError`` for absurd sizes...), so that ``--on-error skip``
    can skip it."""
    try:
        return func(*args)
    except NasprobeError:
        raise
    except Exception as exc:
        raise CheckpointError(path, f"cannot be read ({exc.__class__.__name__}: "
                              f"{str(exc)[:300]})") from exc


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread (threadpoolctl), for every thread of
    the process; a serial probe job runs its epochs in it (:mod:`nasprobe.job.probe_job`),
    entered once, in the thread that runs them. numpy's OpenBLAS (0.3.31, pthreads) takes the
    thread count set from the main thread for all threads, but one set from another thread
    does not limit even that thread's own products (measured: 1.94 CPU seconds per second
    under a limit set in a worker thread, 1.21 under one set in the main thread); and setting
    it anew per epoch cost more system time than it saved (100 tiny checkpoints: 2.48 -> 2.56 s).

    The weight correlations' matrix products are a probe job's only BLAS calls. Left to
    itself, OpenBLAS runs them on every core and its threads then spin, waiting for more
    work, while onnxruntime's streams need those cores: on the README's 100-checkpoint job
    the spinning was 4 % of the process's CPU time. On one thread the largest product of the
    README's table job (256 filters of 8,192 weights) takes 11 ms instead of 7.

    Each call looks anew at the BLAS libraries loaded (1.4 ms): one found once per process
    would miss a BLAS that a later import (scipy, torch) brings."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def weight_correlations(taps: list[Tap], weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``corr_hist`` counts ``(200,)`` per tapped layer whose weights are all finite
    (:func:`nasprobe.measures.correlation.corr_histogram`); ``weights``: every initializer of
    the checkpoint, by name. :func:`run_epoch` computes them on a thread of their own."""
    return {t.layer: corr_histogram(t.filters(weights)) for t in taps
            if np.isfinite(weights[t.weight]).all()}


def run_epoch(task: EpochTask) -> Outcome:
    """Probe one checkpoint and commit its (run, epoch) cell; the unit of work of a probe job.

    Returns:
        An :class:`Outcome`. A checkpoint that cannot be used (corrupt, another architecture)
        gives ``status="error"`` and leaves its epoch uncommitted; other errors propagate. An
        epoch that another job committed meanwhile is not probed again.
    """
    spec, path, epoch = task.spec, task.path, task.epoch
    if task.writer.committed_by(epoch) is not None:
        return Outcome(spec.run, epoch, str(path))
    ctx = context(spec)
    ck = Checkpoint(local_copy(path), epoch)
    # On CPU with host NAS, batches run as streams sharing the usable cores (a cgroup quota
    # included: pipeline.cpu_streams); with NAS in the graph, one onnxruntime-default stream.
    streams, threads = (cpu_streams(intra_op_threads()) if ctx.host and ctx.tapped.provider != CUDA
                        else (1, None))
    try:
        weights = reading(ck.path, ctx.source.weights, ck)
        session = reading(ck.path, partial(ctx.tapped.session, weights, ck.path, threads=threads))
    except CheckpointError as exc:
        return Outcome(spec.run, epoch, str(path), "error", exc.message)
    bad = nonfinite(weights)
    # The weight correlations need only the weights: a thread computes them while the probe
    # set runs, instead of after it on one core.
    pending = (worker_pool(1, "corr").submit(weight_correlations, ctx.taps, {**ctx.base, **weights})
               if spec.options.corr else None)
    try:
        result = probe_epoch(session, ctx.probeset, ctx.taps, ctx.spatial,
                             batch_size=spec.options.batch_size,
                             keep_images=spec.options.keep_images,
                             kind=ctx.kind, input_name=ctx.tapped.input_name, fetch=ctx.fetch,
                             host=ctx.host, fixed_batch=ctx.tapped.fixed_batch,
                             bind=ctx.tapped.provider == CUDA, streams=streams,
                             threads=threads, acts=ctx.acts)
        provider = session.get_providers()[0]
        del session
        corr = {} if pending is None else pending.result()
    finally:  # an epoch that fails leaves no correlations running behind it
        if pending is not None:
            wait([pending])
    del weights
    task.writer.write_epoch(epoch, result.summaries, result.metrics, corr)
    return Outcome(spec.run, epoch, str(path), provider=provider, nonfinite=bad)
