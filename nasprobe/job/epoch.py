"""One epoch's forward passes: the probe set through one onnxruntime session, in streams of
batches, each batch's taps turned into NAS maps and folded into per-layer statistics.

:func:`probe_epoch` is what :func:`nasprobe.job.tasks.run_epoch` runs once it has a session
with this epoch's weights; it returns an :class:`EpochResult` of summaries, never the taps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nasprobe.measures.activity import batch_maps, extra_outputs, location_mask
from nasprobe.measures.aggregate import LayerStats
from nasprobe.measures.nchwc import unblock
from nasprobe.onnxgraph.taps import Tap
from nasprobe.probesets import ProbeSet

from . import pipeline
from .pipeline import prefetched, sub_batch_size, tap_bytes_per_image
from .runtime import run_batch, tap_blocks

__all__ = ["EpochResult", "probe_epoch", "run_size", "output_kind"]


def output_kind(model) -> str:
    """``"probs"``, ``"logprobs"`` or ``"logits"``: what the model's first output holds."""
    out = model.graph.output[0].name
    for node in model.graph.node:
        if out in node.output:
            return {"Softmax": "probs", "LogSoftmax": "logprobs"}.get(node.op_type, "logits")
    return "logits"


@dataclass
class EpochResult:
    """One epoch's numbers: per-layer summaries, ``loss``/``accuracy`` (NaN without labels),
    and what left onnxruntime for the host (``fetched_bytes`` over ``images``)."""

    summaries: dict[str, dict]
    metrics: dict[str, float] = field(default_factory=dict)
    #: bytes of session outputs copied to the host, and the images they came from
    fetched_bytes: int = 0
    images: int = 0


def _log_probs(out: np.ndarray, kind: str) -> np.ndarray:
    out = np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)
    if kind == "probs":
        return np.log(np.clip(out, 1e-300, None))
    if kind == "logprobs":
        return out
    m = out.max(axis=1, keepdims=True)
    return out - m - np.log(np.exp(out - m).sum(axis=1, keepdims=True))


def _mask(probeset: ProbeSet, start: int, n: int) -> np.ndarray | None:
    """The padding mask ``(n, T)`` of images ``start:start + n``, or None without padding."""
    mask = getattr(probeset, "mask", None)
    return None if mask is None else mask[start:start + n]


def run_size(taps: list[Tap], spatial: dict[str, tuple], batch_size: int, *,
             fixed_batch: int | None = None, host: bool = False, tap_budget: int | None = None,
             streams: int = 1) -> int:
    """Images per onnxruntime run of :func:`probe_epoch` (same arguments): the model's
    ``fixed_batch``; with ``host`` NAS, ``batch_size`` or fewer so that the raw taps of the runs
    in flight fit ``tap_budget`` bytes (:func:`nasprobe.job.pipeline.sub_batch_size`); else
    ``batch_size``."""
    if fixed_batch:
        return fixed_batch
    if not host:
        return batch_size
    per_image = tap_bytes_per_image((t.channels, *spatial[t.layer]) for t in taps)
    budget = pipeline.HOST_TAP_BUDGET if tap_budget is None else tap_budget
    return sub_batch_size(batch_size, per_image, budget, max(pipeline.IN_FLIGHT, streams))


def probe_epoch(session, probeset: ProbeSet, taps: list[Tap], spatial: dict[str, tuple],
                *, batch_size: int = 64, keep_images: int = 8, kind: str = "logits",
                input_name: str = "input", fetch: list[str] | None = None,
                host: bool = False, fixed_batch: int | None = None,
                tap_budget: int | None = None, bind: bool = False, streams: int = 1,
                threads: int | None = None, acts: list[str | None] | None = None
                ) -> EpochResult:
    """Run the probe set through a tapped session and aggregate every layer's NAS maps.

    Memory is bounded by ``batch_size``: each batch's maps are folded into running statistics,
    in probe-set order. With labels, cross-entropy ``loss`` (nats, mean over images) and
    ``accuracy`` (fraction) come from the same forward pass (the model's first output).
    ``fetch`` names the outputs to read per tap (default ``tap.output``, the in-graph NAS map);
    with ``host`` they are raw tap tensors and NAS is computed by
    :func:`nasprobe.measures.kernels.nas_map` (``threads`` kernel threads) on the worker that ran the
    batch, and a batch is run in sub-batches whose raw taps fit ``tap_budget`` bytes (default
    :data:`nasprobe.job.pipeline.HOST_TAP_BUDGET`; see :func:`nasprobe.job.pipeline.sub_batch_size`).
    ``streams`` worker threads run batches through ``session`` at once (make it with a
    ``threads`` share of the cores: :func:`nasprobe.job.pipeline.cpu_streams`) while this thread
    folds finished ones (:func:`nasprobe.job.pipeline.prefetched`); with ``streams=0`` this
    thread runs them itself, one at a time (an epoch probed beside others, see
    :func:`nasprobe.job.pipeline.epochs_at_once`). A model exported with a fixed
    batch size ``fixed_batch`` gets batches of exactly that size (the last one padded with
    zeros, whose outputs are dropped). ``bind``: see :func:`nasprobe.job.runtime.run_batch`.
    ``acts``: per tap where its unit activity is counted (:class:`RunContext`; default none).
    A probe set with a padding ``mask`` (text) needs ``host``: padded tokens count in no
    statistic (:meth:`nasprobe.measures.aggregate.LayerStats.update`).
    """
    streams = max(0, int(streams))
    batch_size = run_size(taps, spatial, batch_size, fixed_batch=fixed_batch, host=host,
                          tap_budget=tap_budget, streams=streams)
    stats = {t.layer: LayerStats(t.channels, spatial[t.layer], keep_images) for t in taps}
    names = list(fetch) if fetch is not None else [t.output for t in taps]
    acts = list(acts) if acts is not None else [None] * len(taps)
    extra = extra_outputs(acts, names)
    labelled = probeset.labels is not None
    out_names = ([session.get_outputs()[0].name] if labelled else []) + names + extra
    blocked = tap_blocks(session)  # raw taps onnxruntime returns in its blocked layout
    blocks = [blocked.get(x) for x in names]
    # a tap's output that is another tap's activity input is read there in NCHW layout
    unblocked = {a for a in acts if a and a in blocked}
    loss_sum, correct, n, fetched = 0.0, 0, 0, 0

    def run(batch):
        """One batch: its outputs (NAS maps on the host: the raw taps end here) and the bytes
        that left onnxruntime."""
        outs = run_batch(session, out_names, input_name, batch[1], fixed_batch, bind=bind)
        mask = _mask(probeset, batch[0], len(batch[1]))
        size = sum(o.nbytes for o in outs)
        head = outs[:1] if labelled else []
        got = dict(zip(names + extra, outs[len(head):]))
        taps_out = [got[x] for x in names]
        got.update({a: unblock(got[a], blocked[a]) for a in unblocked})
        maps, counts = batch_maps(taps, taps_out, got, acts, host, threads, mask, blocks)
        return head + maps, counts, size

    for (start, xb, yb), (outs, counts, size) in prefetched(probeset.batches(batch_size), run,
                                                         streams):
        fetched += size
        if labelled:
            lp = _log_probs(outs[0], kind)
            yb = np.asarray(yb, dtype=np.int64)
            loss_sum += float(-lp[np.arange(len(yb)), yb].sum())
            correct += int((lp.argmax(axis=1) == yb).sum())
            outs = outs[1:]
        n += len(xb)
        mask = _mask(probeset, start, len(xb))
        for t, o, c in zip(taps, outs, counts):
            m = location_mask(mask, o.shape[1:], t.layer)
            stats[t.layer].update(o, m)
            if c is not None:
                stats[t.layer].update_activity(c, o.size if m is None else int(m.sum()))
        outs = o = None
    metrics = {}
    if labelled:
        metrics = {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1)}
    return EpochResult({layer: s.summary() for layer, s in stats.items()}, metrics,
                       fetched_bytes=fetched, images=n)

