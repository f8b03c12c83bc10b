"""The probe job: a run's checkpoints → tapped ONNX → onnxruntime → statistics → the store.

Pure parts (:func:`probe_epoch`) take a session and a probe set and return numbers; the I/O
(reading checkpoints, writing the store, progress) stays in :func:`probe`.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from onnx import numpy_helper
from tqdm.auto import tqdm

from . import __version__
from .aggregate import LayerStats
from .checkpoints import Checkpoint, find_checkpoints, open_source
from .correlation import corr_histogram
from .errors import CheckpointError, NasprobeError
from .graph import Tap, build_probe_graph, find_taps
from .probesets import ProbeSet, load_probe_set
from .runtime import TappedModel
from .store import LayerInfo, Store

__all__ = ["probe", "probe_epoch", "EpochResult", "output_kind"]


@dataclass
class EpochResult:
    """One epoch's numbers: per-layer summaries, ``loss``/``accuracy`` (NaN without labels)."""

    summaries: dict[str, dict]
    metrics: dict[str, float] = field(default_factory=dict)


def output_kind(model) -> str:
    """``"probs"``, ``"logprobs"`` or ``"logits"``: what the model's first output holds."""
    out = model.graph.output[0].name
    for node in model.graph.node:
        if out in node.output:
            return {"Softmax": "probs", "LogSoftmax": "logprobs"}.get(node.op_type, "logits")
    return "logits"


def _log_probs(out: np.ndarray, kind: str) -> np.ndarray:
    out = np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)
    if kind == "probs":
        return np.log(np.clip(out, 1e-300, None))
    if kind == "logprobs":
        return out
    m = out.max(axis=1, keepdims=True)
    return out - m - np.log(np.exp(out - m).sum(axis=1, keepdims=True))


def probe_epoch(session, probeset: ProbeSet, taps: list[Tap], spatial: dict[str, tuple],
                *, batch_size: int = 64, keep_images: int = 8, kind: str = "logits",
                input_name: str = "input") -> EpochResult:
    """Run the probe set through a tapped session and aggregate every layer's NAS maps.

    Memory is bounded by ``batch_size``: each batch's maps are folded into running statistics.
    With labels, cross-entropy ``loss`` (nats, mean over images) and ``accuracy`` (fraction)
    come from the same forward pass (the model's first output).
    """
    stats = {t.layer: LayerStats(t.channels, spatial[t.layer], keep_images) for t in taps}
    names = [t.output for t in taps]
    labelled = probeset.labels is not None
    out_names = ([session.get_outputs()[0].name] if labelled else []) + names
    loss_sum, correct, n = 0.0, 0, 0
    for _, xb, yb in probeset.batches(batch_size):
        outs = session.run(out_names, {input_name: xb})
        if labelled:
            lp = _log_probs(outs[0], kind)
            yb = np.asarray(yb, dtype=np.int64)
            loss_sum += float(-lp[np.arange(len(yb)), yb].sum())
            correct += int((lp.argmax(axis=1) == yb).sum())
            outs = outs[1:]
        n += len(xb)
        for t, o in zip(taps, outs):
            stats[t.layer].update(o)
    metrics = {}
    if labelled:
        metrics = {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1)}
    return EpochResult({layer: s.summary() for layer, s in stats.items()}, metrics)


def _arch_weights(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _nonfinite(weights: dict[str, np.ndarray]) -> list[str]:
    return [k for k, v in weights.items()
            if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()]


def probe(checkpoints: Sequence[str | os.PathLike], *, probe: str | os.PathLike,
          out: str | os.PathLike, run: str | None = None, framework: str = "auto",
          model: str | None = None, input_shape: Sequence[int] | None = None,
          tap: str = "linear", exclude_bias: bool = False, layers: str | None = None,
          batch_size: int = 64, keep_images: int = 8, epoch_regex: str | None = None,
          device: str = "auto", on_error: str = "fail", trust_pickle: bool = False,
          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          force: bool = False, progress: bool = True) -> Path:
    """Probe every checkpoint of one run and write NAS statistics into the store ``out``.

    Args:
        checkpoints: a folder of checkpoints (epochs parsed from file names) and/or files.
        probe: ``.npy`` images, ``.npz`` with ``x`` (and optional labels ``y``), or an image folder.
        out: the zarr store (created, or extended: runs and epochs already there are kept).
        run: the run's name (default: the folder's name).
        framework: ``auto``, ``onnx``, ``torch`` or ``keras``.
        model, input_shape, trust_pickle: for framework checkpoints (see the adapters).
        tap: ``linear`` (output of the linear op, before BatchNorm) or ``preact``.
        exclude_bias: subtract the layer's bias before measuring.
        layers: regex selecting layers by name.
        batch_size: probe images per forward pass (bounds memory).
        keep_images: per-image heatmaps kept for the first N probe images.
        epoch_regex: overrides the epoch patterns of file names.
        device: ``auto``, ``cpu`` or ``cuda`` (falls back to CPU with a notice).
        on_error: ``fail`` stops at the first bad checkpoint; ``skip`` records it and goes on.
        mean, std: per-channel normalisation of the probe images.
        force: allow a store written with another probe set.

    Returns:
        The store path. Epochs already stored for ``run`` are skipped, so running the same call
        again after an interruption continues where it stopped.
    """
    if on_error not in ("fail", "skip"):
        raise NasprobeError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    ckpts = find_checkpoints(checkpoints, epoch_regex)
    first_in = Path(checkpoints[0])
    run = run or (first_in.name if first_in.is_dir() else first_in.parent.name)
    source = open_source(ckpts, framework, model=model, input_shape=input_shape,
                         trust_pickle=trust_pickle, tap=tap)
    arch = source.architecture()
    label = str(ckpts[0].path)
    taps = find_taps(arch, tap=tap, layers=layers, source=label)
    tapped_graph = build_probe_graph(arch, taps, exclude_bias=exclude_bias, source=label)
    tapped = TappedModel(tapped_graph, device=device)
    probeset = load_probe_set(probe, tapped.input_shape, mean=mean, std=std)
    base = _arch_weights(arch)
    # One image through the architecture gives every map's location shape.
    sess = tapped.session()
    _, x1, _ = next(probeset.batches(1))
    outs = sess.run([t.output for t in taps], {tapped.input_name: x1})
    spatial = {t.layer: tuple(o.shape[1:]) for t, o in zip(taps, outs)}
    store = Store(out)
    store.create_or_check({
        "nasprobe_version": __version__, "tap": tap, "exclude_bias": bool(exclude_bias),
        "probe_sha256": probeset.sha256, "probe_size": int(probeset.size),
        "probe_source": str(probe), "framework": source.framework,
    }, force=force, layer_chunk=len(taps))
    infos = [LayerInfo(t.layer, t.kind, t.channels, spatial[t.layer], t.depth) for t in taps]
    provenance = {"source": str(Path(checkpoints[0]).resolve()), "framework": source.framework,
                  "checkpoints": len(ckpts), "provider": tapped.provider, "skipped": {}}
    run_i, slots, done = store.reserve(run, [c.epoch for c in ckpts], infos, keep_images, provenance)
    todo = [c for c in ckpts if c.epoch not in done]
    kind = output_kind(arch)
    skipped: dict[str, str] = {}
    bar = tqdm(todo, desc=f"probe {run}", unit="epoch", disable=not progress, file=sys.stderr)
    for ck in bar:
        try:
            weights = source.weights(ck)
            session = tapped.session(weights, ck.path)
        except CheckpointError as exc:
            if on_error == "fail":
                raise
            skipped[str(ck.path)] = exc.message
            print(f"nasprobe: skipped {exc}", file=sys.stderr)
            continue
        bad = _nonfinite(weights)
        if bad:
            warnings.warn(f"{ck.path}: non-finite weights in {', '.join(bad[:5])}; NAS of "
                          "affected layers is recorded as NaN", stacklevel=2)
        result = probe_epoch(session, probeset, taps, spatial, batch_size=batch_size,
                             keep_images=keep_images, kind=kind, input_name=tapped.input_name)
        full = {**base, **weights}
        corr = {t.layer: corr_histogram(t.filters(full)) for t in taps
                if np.isfinite(full[t.weight]).all()}
        store.write_epoch(run_i, slots[ck.epoch], result.summaries, result.metrics, corr)
        bar.set_postfix(provider=session.get_providers()[0].replace("ExecutionProvider", ""))
    if skipped:
        provenance["skipped"] = skipped
        store.reserve(run, [], infos, keep_images, provenance)
    return Path(out)


def run_info(path: str | os.PathLike) -> dict:
    """The ``runs`` provenance attribute of a store, parsed (run → dict)."""
    import zarr

    return json.loads(zarr.open_group(str(path), mode="r").attrs.get("runs", "{}"))
