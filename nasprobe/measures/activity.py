"""Unit activity per channel, counted in the probe pass (docs/measures.md, "Dead units").

A channel's *activity* on the probe set is the share of (image, location) pairs where the input
of the layer's nonlinearity (after BatchNorm where there is one) is above zero; a channel with
activity 0 never fires on the probe set, and ``dead_fraction`` is the share of such channels.
Where that input is the tap itself, the host kernel counts it in the pass that computes NAS
(:func:`nasprobe.measures.kernels.nas_map`); where it is another tensor (a linear tap before BatchNorm),
that tensor is an extra output counted by :func:`nasprobe.measures.kernels.count_positive`; with NAS in
the graph, the graph counts it (:func:`nasprobe.onnxgraph.nas_graph.build_probe_graph`).
"""

from __future__ import annotations

import numpy as np

from .kernels import available, count_positive, nas_map, nas_map_blocked
from .nchwc import Block, unblock

__all__ = ["extra_outputs", "batch_maps", "activity_summary", "location_mask", "count_masked"]


def extra_outputs(acts: list[str | None], fetch: list[str]) -> list[str]:
    """The session outputs to fetch besides ``fetch`` for the taps' activity ``acts`` (per tap:
    None without a nonlinearity, ``""`` counted in the tap's own output, else an output name),
    each once."""
    out: list[str] = []
    for a in acts:
        if a and a not in fetch and a not in out:
            out.append(a)
    return out


def location_mask(mask: np.ndarray | None, locations: tuple[int, ...], layer: str = ""
                  ) -> np.ndarray | None:
    """The padding mask that applies to a layer whose maps have ``locations``.

    Args:
        mask: ``(N, T)`` bool, False on a text probe's padded tokens, or None (no padding).
        locations: the layer's location shape: ``(T,)`` (one location per token: the mask
            applies) or ``()`` (one vector per example, e.g. a pooler or a classifier on the
            first token: nothing to mask).
        layer: the layer's name, for the message.

    Raises:
        ValueError: locations that are neither the tokens nor a single one.
    """
    if mask is None or tuple(locations) == ():
        return None
    if tuple(locations) != mask.shape[1:]:
        raise ValueError(f"layer {layer!r} has locations {tuple(locations)}, not one per "
                         f"token {mask.shape[1:]}: its padding cannot be masked")
    return mask


def count_masked(a: np.ndarray, axis: int, mask: np.ndarray, counts: np.ndarray) -> None:
    """Add to ``counts`` (``(D,)`` int64) per channel along ``axis`` of ``a`` (``(N, T, D)``
    in some axis order) how many values above zero sit at the ``(N, T)`` pairs where
    ``mask`` is True (padding is not counted)."""
    a = np.moveaxis(np.asarray(a), axis % a.ndim, -1)
    if a.shape[:-1] != mask.shape:
        raise ValueError(f"tensor locations {a.shape[:-1]} differ from the mask's {mask.shape}")
    count_positive(a[mask], 1, counts)


def batch_maps(taps, tap_outs: list[np.ndarray], extra: dict[str, np.ndarray],
               acts: list[str | None], host: bool, threads: int | None = None,
               mask: np.ndarray | None = None, blocks: list[Block | None] | None = None
               ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """One batch's NAS maps and per-channel counts of values above zero.

    Args:
        taps: the :class:`~nasprobe.onnxgraph.taps.Tap` of each output.
        tap_outs: per tap the session output: the raw tap (``host``) or its NAS map.
        extra: the outputs named in ``acts`` (name → array): the nonlinearity's input
            (``host``), or the graph's ``(N, D)`` counts.
        acts: per tap where its activity is counted (see :func:`extra_outputs`).
        host: NAS maps are computed here by :func:`nasprobe.measures.kernels.nas_map` (``threads``).
        mask: ``(N, T)`` bool, False on padded tokens (text probes; needs ``host``): values
            there are not counted (:func:`location_mask` says for which taps it applies).
        blocks: per tap the :class:`~nasprobe.measures.nchwc.Block` of a raw tap that comes in
            onnxruntime's blocked layout, else None (default: none is).

    Returns:
        Per tap the NAS map ``(N, *locations)`` and the ``(D,)`` int64 counts (None for a
        layer that reaches no nonlinearity).
    """
    if mask is not None and not host:
        raise ValueError("padding can be masked out of unit activity only with host NAS")
    maps, counts = [], []
    for t, o, a, b in zip(taps, tap_outs, acts, blocks or [None] * len(taps)):
        if b is not None and (mask is not None or not available()):
            o, b = unblock(o, b), None
        c = None if a is None else np.zeros(t.channels, np.int64)
        m = None
        if mask is not None:
            locs = tuple(s for i, s in enumerate(o.shape) if i != t.channel_axis % o.ndim)
            m = location_mask(mask, locs[1:], t.layer)
        if m is not None:
            if a is not None:
                count_masked(o if a == "" else extra[a], t.channel_axis if a == "" else
                             t.act_axis, m, c)
            maps.append(nas_map(o, t.channel_axis, threads=threads))
            counts.append(c)
            continue
        if b is not None:  # host NAS of a raw tap in blocked layout
            o = nas_map_blocked(o, b.channels, b.size, threads=threads,
                                counts=c if a == "" else None)
        elif host:
            o = nas_map(o, t.channel_axis, threads=threads, counts=c if a == "" else None)
            if a:
                count_positive(extra[a], t.act_axis, c)
        elif a:
            c += np.rint(np.asarray(extra[a], np.float64).sum(axis=0)).astype(np.int64)
        maps.append(o)
        counts.append(c)
    return maps, counts


def activity_summary(active: np.ndarray | None, pairs: int) -> dict:
    """``unit_activity`` (``(D,)`` float64, ``active / pairs``) and ``dead_fraction`` (the share
    of channels with activity 0) from ``active`` counts over ``pairs`` (image, location) pairs;
    ``{}`` without counts (no nonlinearity) or pairs."""
    if active is None or pairs <= 0:
        return {}
    activity = active / float(pairs)
    return {"unit_activity": activity, "dead_fraction": float(np.mean(active == 0))}
