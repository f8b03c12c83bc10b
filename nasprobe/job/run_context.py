"""One run's heavy objects, built once per process: its checkpoint source, tapped ONNX graph and
onnxruntime model, probe set and layer shapes (:class:`RunContext`), rebuilt from a small,
picklable :class:`RunSpec` (paths and options).

They are cached per process in a small LRU keyed by :attr:`RunSpec.key`, so a worker builds a
run's tapped model once and keeps at most :data:`CACHE_SIZE` of them: memory grows with neither
the number of epochs nor of runs. The per-epoch work that uses them is
:mod:`nasprobe.job.tasks`.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from onnx import numpy_helper

from nasprobe.contract import Checkpoint
from nasprobe.errors import CheckpointError, NasprobeError, ProbeSetError, printable
from nasprobe.frameworks.registry import open_source
from nasprobe.measures.activity import location_mask
from nasprobe.measures.kernels import available as kernels_available
from nasprobe.onnxgraph.nas_graph import ACT_PREFIX, build_probe_graph, build_tap_graph
from nasprobe.onnxgraph.taps import Tap, find_taps
from nasprobe.probesets import ProbeSet, is_text_probe, load_probe_set, load_text_probe
from nasprobe.store.download_cache import local_copy
from nasprobe.store.storage import is_url

from . import pipeline
from .epoch import output_kind
from .options import ProbeOptions
from .runtime import CPU, CUDA, TappedModel, provider_notice, run_batch, select_providers

__all__ = ["RunSpec", "RunContext", "context", "host_nas", "reading", "forget_remote",
           "CACHE_SIZE", "BLOCKED_MIN_VALUES"]

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
        # a large .npy is hashed and checked while the run's model is built (_build waits)
        _PROBESETS[k] = load_probe_set(local_copy(opts.probe), input_shape, mean=opts.mean,
                                       std=opts.std, input_dtype=input_dtype, background=True)
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
    try:
        probeset.wait()  # its background hash and check (_probe_set)
    except ProbeSetError:
        for k in [k for k, v in _PROBESETS.items() if v is probeset]:
            del _PROBESETS[k]  # a fixed file is read again by the next job
        raise
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
    with pipeline.PROCESS_LOCK:
        _CONTEXTS.clear()
        _PROBESETS.clear()


def context(spec: RunSpec) -> RunContext:
    """The run's :class:`RunContext`, from this process's cache or built (and cached). A
    cached context whose remote probe set has another hash than the job's is built again (a
    long-lived Dask worker after the object was rewritten). Thread-safe: epochs probed side by
    side ask for their runs' contexts at once; they are looked up and built under
    :data:`nasprobe.job.pipeline.PROCESS_LOCK` (a checkpoint source need not be thread-safe)."""
    with pipeline.PROCESS_LOCK:
        return _context(spec)


def _context(spec: RunSpec) -> RunContext:
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
