"""One (run, epoch) as a self-contained task: the unit of work of serial and Dask probing.

A task (:class:`EpochTask`) holds only small, picklable things — a
:class:`~nasprobe.job.run_context.RunSpec` (paths and options), one checkpoint's path (or URL) and
epoch, and the job's :class:`~nasprobe.store.writer.RunWriter` for the run — and takes the heavy
objects (checkpoint source, tapped ONNX graph, onnxruntime model, probe set) from the process's
cache (:func:`nasprobe.job.run_context.context`).

:func:`run_epoch` probes the checkpoint (:func:`probe_checkpoint`) and writes the epoch with one
:meth:`nasprobe.store.writer.RunWriter.write_epoch` call (:func:`commit_epoch`: its chunks, then
the commit marker; see docs/store-design.md) and returns a small :class:`Outcome`; nothing per
epoch is kept after it returns. A serial job calls the two halves itself, so that it can probe
short epochs side by side and still commit them in order (:func:`epochs_side_by_side`).
"""

from __future__ import annotations

from concurrent.futures import wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from nasprobe.contract import Checkpoint
from nasprobe.errors import CheckpointError
from nasprobe.measures.correlation import corr_histogram
from nasprobe.onnxgraph.taps import Tap
from nasprobe.store.download_cache import local_copy

from . import pipeline
from .epoch import probe_epoch, run_size
from .pipeline import HOST_TAP_BUDGET, cpu_streams, epochs_at_once, worker_pool
from .run_context import RunSpec, context, reading
from .runtime import CUDA, intra_op_threads

__all__ = ["EpochTask", "Outcome", "ProbedEpoch", "run_epoch", "probe_checkpoint",
           "commit_epoch", "epochs_side_by_side", "nonfinite", "weight_correlations"]


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


def nonfinite(weights: dict[str, np.ndarray]) -> list[str]:
    """Names of float tensors in ``weights`` that hold NaN or ±Inf."""
    return [k for k, v in weights.items()
            if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()]


def weight_correlations(taps: list[Tap], weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``corr_hist`` counts ``(200,)`` per tapped layer whose weights are all finite
    (:func:`nasprobe.measures.correlation.corr_histogram`); ``weights``: every initializer of
    the checkpoint, by name. :func:`run_epoch` computes them on a thread of their own."""
    return {t.layer: corr_histogram(t.filters(weights)) for t in taps
            if np.isfinite(weights[t.weight]).all()}


@dataclass
class ProbedEpoch:
    """A probed checkpoint not yet written: what :func:`commit_epoch` stores."""

    result: Any  # nasprobe.job.epoch.EpochResult
    provider: str
    corr: dict[str, np.ndarray]
    nonfinite: list[str]


def epochs_side_by_side(spec: RunSpec, epochs: int) -> int:
    """How many of the run's ``epochs`` (left to probe) a serial job probes at once
    (:func:`nasprobe.job.pipeline.epochs_at_once`): more than one only on CPU with host NAS,
    for an epoch of few onnxruntime runs and a model whose weights are not large."""
    ctx = context(spec)
    if not ctx.host or ctx.tapped.provider == CUDA:
        return 1
    streams, _ = cpu_streams(intra_op_threads())
    size = run_size(ctx.taps, ctx.spatial, spec.options.batch_size, host=True,
                    fixed_batch=ctx.tapped.fixed_batch)
    weights = sum(a.nbytes for a in ctx.base.values())
    return epochs_at_once(epochs, -(-ctx.probeset.size // size), streams, weights)


def probe_checkpoint(task: EpochTask, side_by_side: int = 1) -> ProbedEpoch | Outcome:
    """Probe one checkpoint without writing it: a :class:`ProbedEpoch` for
    :func:`commit_epoch`, or an :class:`Outcome` when there is nothing to write (the epoch was
    committed by another job meanwhile; ``status="error"`` for a checkpoint that cannot be
    used). ``side_by_side``: how many epochs are probed at once in this process
    (:func:`epochs_side_by_side`); above 1, this one runs its batches in the calling thread
    within its share of the tap memory budget."""
    spec, path, epoch = task.spec, task.path, task.epoch
    if task.writer.committed_by(epoch) is not None:
        return Outcome(spec.run, epoch, str(path))
    ctx = context(spec)
    ck = Checkpoint(local_copy(path), epoch)
    # On CPU with host NAS, batches run as streams sharing the usable cores (a cgroup quota
    # included: pipeline.cpu_streams), or epochs side by side with a stream each; with NAS in
    # the graph, one onnxruntime-default stream.
    streams, threads = (cpu_streams(intra_op_threads()) if ctx.host and ctx.tapped.provider != CUDA
                        else (1, None))
    budget = None
    if side_by_side > 1:
        streams, budget = 0, HOST_TAP_BUDGET // side_by_side
    try:
        with pipeline.PROCESS_LOCK:  # sources need not be thread-safe (nasprobe.contract)
            weights = reading(ck.path, ctx.source.weights, ck)
        session = reading(ck.path, partial(ctx.tapped.session, weights, ck.path, threads=threads))
    except CheckpointError as exc:
        return Outcome(spec.run, epoch, str(path), "error", exc.message)
    bad = nonfinite(weights)
    # The weight correlations need only the weights: a thread computes them while the probe
    # set runs, instead of after it on one core. Epochs side by side already keep every core
    # busy, so there each epoch's thread computes its own after its batches: a third and
    # fourth thread only took turns on the same cores (docs/speed.md).
    correlations = partial(weight_correlations, ctx.taps, {**ctx.base, **weights})
    pending = (worker_pool(1, "corr").submit(correlations)
               if spec.options.corr and side_by_side <= 1 else None)
    try:
        result = probe_epoch(session, ctx.probeset, ctx.taps, ctx.spatial,
                             batch_size=spec.options.batch_size,
                             keep_images=spec.options.keep_images,
                             kind=ctx.kind, input_name=ctx.tapped.input_name, fetch=ctx.fetch,
                             host=ctx.host, fixed_batch=ctx.tapped.fixed_batch,
                             tap_budget=budget, bind=ctx.tapped.provider == CUDA,
                             streams=streams, threads=threads, acts=ctx.acts)
        provider = session.get_providers()[0]
        del session
        if pending is not None:
            corr = pending.result()
        else:
            corr = correlations() if spec.options.corr else {}
    finally:  # an epoch that fails leaves no correlations running behind it
        if pending is not None:
            wait([pending])
    return ProbedEpoch(result, provider, corr, bad)


def commit_epoch(task: EpochTask, probed: ProbedEpoch | Outcome) -> Outcome:
    """Write and commit a :func:`probe_checkpoint` result into the task's run (an
    :class:`Outcome` is passed through); the :class:`Outcome` of the task."""
    if isinstance(probed, Outcome):
        return probed
    result = probed.result
    task.writer.write_epoch(task.epoch, result.summaries, result.metrics, probed.corr)
    return Outcome(task.spec.run, task.epoch, str(task.path), provider=probed.provider,
                   nonfinite=probed.nonfinite)


def run_epoch(task: EpochTask) -> Outcome:
    """Probe one checkpoint and commit its (run, epoch) cell; the unit of work of a Dask job
    (a serial job runs :func:`probe_checkpoint` and :func:`commit_epoch` itself, several epochs
    at once where :func:`epochs_side_by_side` says so).

    Returns:
        An :class:`Outcome`. A checkpoint that cannot be used (corrupt, another architecture)
        gives ``status="error"`` and leaves its epoch uncommitted; other errors propagate. An
        epoch that another job committed meanwhile is not probed again.
    """
    return commit_epoch(task, probe_checkpoint(task))
