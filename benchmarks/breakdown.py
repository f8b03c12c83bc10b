"""Where the time of a host-mode probe epoch goes, measured inside one process (issue 14).

Whole-process ratios (``probe_speed.py``) say how far nasprobe is from a plain onnxruntime
script; this says why. On one model and probe set it times, in turn and ``--repeats`` times
(minimum wall and CPU seconds, so that a busy machine disturbs less):

* ``plain``: onnxruntime on the original graph, every output fetched (what the plain script does);
* ``taps``: onnxruntime on nasprobe's tapped graph, only the raw tap tensors fetched — the
  floor of any tool that must get pre-activations out of onnxruntime on CPU — once with one
  session on every core, once in NCHW layout (without :mod:`nasprobe.job.blocked_taps`, whose
  plan leaves convolution taps in onnxruntime's blocked layout where it makes one), once as
  the streams a probe job uses
  (:func:`nasprobe.job.pipeline.cpu_streams`: on 2 cores two threads, each running whole batches
  with one onnxruntime thread);
* ``nas``: nasprobe's host NAS kernel over those tap tensors (one thread, and the default);
* ``fold``: folding the NAS maps into the running statistics;
* ``epoch``: :func:`nasprobe.job.epoch.probe_epoch`, as one stream on every core (onnxruntime of
  the next batch overlapping the host work of the current one) and as a probe job runs it
  (streams).

It prints each in ms per image and as a ratio to ``plain``. Run by hand:
``.venv/bin/python benchmarks/breakdown.py FOLDER_OR_ONNX PROBE.npy [--batch 64]``; without
arguments it builds probe_speed.py's VanillaNet-m 32×32 and 3,072 images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(func, repeats: int) -> tuple[float, float]:
    """Minimum (wall s, CPU s of this process) of ``repeats`` calls of ``func``."""
    best_w = best_c = float("inf")
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        func()
        best_w = min(best_w, time.perf_counter() - w)
        best_c = min(best_c, time.process_time() - c)
    return best_w, best_c


def breakdown(onnx_file: Path, probe: Path, batch: int, repeats: int) -> None:
    import onnxruntime as ort

    from nasprobe import kernels
    from nasprobe.job import epoch, run_context
    from nasprobe.job.options import ProbeOptions
    from nasprobe.job.pipeline import cpu_streams, prefetched
    from nasprobe.job.runtime import intra_op_threads, tap_blocks
    from nasprobe.measures.activity import batch_maps
    from nasprobe.measures.aggregate import LayerStats

    opts = ProbeOptions(probe=str(probe), batch_size=batch, keep_images=0)
    ctx = run_context.context(run_context.RunSpec("bench", ((str(onnx_file), 0),), opts))
    if not ctx.host:
        raise SystemExit("the compiled kernels are not built: host NAS is not used")
    x = np.load(probe)
    n = len(x)
    plain = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    tapped = ctx.tapped.session()
    blocks = [tap_blocks(tapped).get(name) for name in ctx.fetch]
    plan, ctx.tapped.blocked = ctx.tapped.blocked, None
    ordinary = ctx.tapped.session()
    ctx.tapped.blocked = plan
    streams, threads = cpu_streams(intra_op_threads())
    shared = ctx.tapped.session(threads=threads)  # what a probe job's streams share
    inp = ctx.tapped.input_name
    starts = range(0, n, batch)
    kept = [tapped.run(ctx.fetch, {inp: x[i:i + batch]}) for i in list(starts)[:4]]

    def run_plain():
        for i in starts:
            plain.run(None, {plain.get_inputs()[0].name: x[i:i + batch]})

    def run_taps():
        for i in starts:
            tapped.run(ctx.fetch, {inp: x[i:i + batch]})

    def run_taps_ordinary():
        for i in starts:
            ordinary.run(ctx.fetch, {inp: x[i:i + batch]})

    def run_taps_streams():
        for _ in prefetched(starts, lambda i: shared.run(ctx.fetch, {inp: x[i:i + batch]}),
                            streams):
            pass

    def run_nas():  # every batch's taps: the kept batches in turn (the same shapes)
        for k in range(len(starts)):
            batch_maps(ctx.taps, kept[k % len(kept)], {}, [None] * len(ctx.taps), True,
                       blocks=blocks)

    maps = batch_maps(ctx.taps, kept[0], {}, [None] * len(ctx.taps), True, blocks=blocks)[0]

    def run_fold():
        stats = {t.layer: LayerStats(t.channels, ctx.spatial[t.layer], 0) for t in ctx.taps}
        for _ in starts:
            for t, m in zip(ctx.taps, maps):
                stats[t.layer].update(m)

    def run_epoch(session=tapped, **kw):
        epoch.probe_epoch(session, ctx.probeset, ctx.taps, ctx.spatial, batch_size=batch,
                          keep_images=0, kind=ctx.kind, input_name=inp, fetch=ctx.fetch,
                          host=True, **kw)

    got = {"plain": timed(run_plain, repeats), "taps": timed(run_taps, repeats),
           "taps, NCHW layout": timed(run_taps_ordinary, repeats),
           f"taps, {streams} streams": timed(run_taps_streams, repeats)}
    kernels.set_threads(1)
    got["nas, 1 thread"] = timed(run_nas, repeats)
    kernels.set_threads(None)
    got["nas, default threads"] = timed(run_nas, repeats)
    got["fold"] = timed(run_fold, repeats)
    got["epoch, one stream"] = timed(run_epoch, repeats)
    got[f"epoch, {streams} streams (job)"] = timed(
        lambda: run_epoch(shared, streams=streams, threads=threads), repeats)
    values = sum(a[0].size for a in kept[0]) if kept else 0
    print(f"{onnx_file.name}: {n} images, batch {batch}, {len(ctx.taps)} taps "
          f"({sum(b is not None for b in blocks)} in blocked layout), {values} tap values per "
          f"image; minimum of {repeats}")
    print(f"  {'':24s} {'wall ms/img':>12s} {'CPU ms/img':>12s} {'wall/plain':>11s}")
    for name, (w, c) in got.items():
        print(f"  {name:24s} {1e3 * w / n:12.4f} {1e3 * c / n:12.4f} "
              f"{w / got['plain'][0]:11.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", type=Path, nargs="?", help="an .onnx file or a folder (its first)")
    ap.add_argument("probe", type=Path, nargs="?", help="an .npy probe set of the input shape")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if args.onnx is None:
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_models import export_vanilla, images

            export_vanilla(Path(d) / "vanilla", 1)
            args.onnx, args.probe = Path(d) / "vanilla", images(Path(d) / "p.npy", 3072, 32)
        f = args.onnx if args.onnx.is_file() else sorted(args.onnx.glob("*.onnx"))[0]
        breakdown(f, args.probe, args.batch, args.repeats)


if __name__ == "__main__":
    main()
