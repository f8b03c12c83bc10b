"""The probe job: runs' checkpoints → tapped ONNX → onnxruntime → statistics → the store.

:func:`probe` is the coordinator. It finds each run's checkpoints, builds each run's tapped
model once (to learn its layers), creates this job's group for each run in the store
(:meth:`nasprobe.store.writer.Store.open_run`), then runs one task per (run, epoch) still to do — in
this process, or on Dask workers (``workers=``/``scheduler=``, see :mod:`nasprobe.job.parallel`).
A task (:mod:`nasprobe.job.tasks`) probes one checkpoint, writes its chunks and commits
the epoch last (a serial job may probe several short epochs at once; it commits them in order),
so a stopped job continues where it stopped, a serial and a parallel job write the same store,
and other jobs may write the same store at once (docs/store-design.md). The pure part,
:func:`probe_epoch`, takes a session and a probe set and returns numbers.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from tqdm.std import TqdmExperimentalWarning

from nasprobe._version import __version__
from nasprobe.contract import Checkpoint
from nasprobe.errors import (
    CheckpointError,
    EpochError,
    JobFailedError,
    NasprobeError,
    NoCheckpointError,
    StoreError,
    printable,
)
from nasprobe.frameworks.checkpoints import (
    checkpoints_in,
    find_checkpoints,
    parse_epoch,
)
from nasprobe.frameworks.registry import is_checkpoint
from nasprobe.store.download_cache import local_copy
from nasprobe.store.layer_check import PlannedRun, check_layers
from nasprobe.store.layout import LayerInfo
from nasprobe.store.storage import checked_path, is_url, location
from nasprobe.store.writer import EPOCHS_PER_CHUNK, RunWriter, Store, new_job_id

from . import pipeline
from .options import ProbeOptions
from .pipeline import one_blas_thread, prefetched
from .run_context import RunSpec, context, forget_remote
from .runs import check_sources, origin_of, run_folders, run_source
from .tasks import EpochTask, Outcome, commit_epoch, epochs_side_by_side, probe_checkpoint

# What tqdm.auto gives (a widget bar in Jupyter, text elsewhere) without its asyncio mix-in,
# whose import (asyncio) costs each probe process about 15 ms.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", TqdmExperimentalWarning)
    from tqdm.autonotebook import tqdm

__all__ = ["probe", "run_info"]


def _explicit(inputs: list[Path]) -> list[Path]:
    """Run folders replaced by their checkpoints."""
    out: list[Path] = []
    for p in inputs:
        out.extend(checkpoints_in(p) if p.is_dir() and not is_checkpoint(p) else [p])
    return out


def _find(inputs: list[Path], epoch_regex: str | None, on_error: str,
          skipped: dict[str, str]) -> list[Checkpoint]:
    """The run's checkpoints. With ``on_error="skip"``, files without an epoch and every file
    of an epoch claimed twice are left out and recorded in ``skipped`` (path → reason)."""
    files = inputs
    while True:
        try:
            return find_checkpoints(files, epoch_regex)
        except NoCheckpointError as exc:
            _hint_subfolders(Path(exc.path), exc)
            raise
        except EpochError as exc:
            bad = Path(exc.path)
            if on_error == "fail":
                raise
            files = _explicit(files)
            epoch = parse_epoch(bad, epoch_regex)
            drop = [bad] if epoch is None else \
                [f for f in files if parse_epoch(f, epoch_regex) == epoch]
            for f in drop:
                others = ", ".join(str(o) for o in drop if o != f)
                skipped[str(f)] = (exc.message if epoch is None else
                                   f"claims epoch {epoch}, as does {others}")
                print(printable(f"nasprobe: skipped {f}: {skipped[str(f)]}"), file=sys.stderr)
            files = [f for f in files if f not in drop]
            if not files:
                raise CheckpointError(inputs[0], "no usable checkpoint left (skipped: "
                                      f"{', '.join(skipped)})") from exc


def _hint_subfolders(folder: Path, exc: NoCheckpointError) -> None:
    subs = [q for q in sorted(folder.iterdir()) if q.is_dir() and checkpoints_in(q)]
    if subs:
        names = ", ".join(q.name for q in subs[:4]) + (", …" if len(subs) > 4 else "")
        raise NoCheckpointError(folder, f"folder holds no checkpoint file, but its sub-folders "
                              f"{names} do: pass them as runs, e.g. nasprobe probe "
                              f"{folder}/*") from exc


@dataclass
class _Plan:
    """One run as the coordinator sees it."""

    spec: RunSpec
    infos: list[LayerInfo]
    epochs: list[int]
    provenance: dict
    attrs: dict
    source: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    nonfinite: dict[str, list[str]] = field(default_factory=dict)
    writer: RunWriter | None = None


def _plan(name: str, inputs: list[Path], options: ProbeOptions, epoch_regex, on_error,
          origin: dict[str, str] | None = None) -> _Plan:
    """Find the run's checkpoints and build its tapped model once (in this process's cache).
    With ``on_error="skip"`` a first checkpoint that cannot give the architecture is skipped
    and the next one tried."""
    skipped: dict[str, str] = {}
    found = _find(inputs, epoch_regex, on_error, skipped)
    ckpts = list(found)
    while True:
        spec = RunSpec(run=name, checkpoints=tuple((origin_of(c.path, origin), c.epoch) for c in ckpts),
                       options=options)
        try:
            ctx = context(spec)
            break
        except CheckpointError as exc:
            if on_error == "fail" or Path(exc.path) != ckpts[0].path:
                raise
            skipped[str(ckpts[0].path)] = exc.message
            print(printable(f"nasprobe: skipped {exc}"), file=sys.stderr)
            ckpts = ckpts[1:]
            if not ckpts:
                raise CheckpointError(inputs[0], "no usable checkpoint left (skipped: "
                                      f"{', '.join(skipped)})") from exc
    spec = replace(spec, probe_sha256=ctx.probeset.sha256)
    no_preact = _without_preact(ctx, options, name) if options.tap == "preact" else []
    infos = [LayerInfo(t.layer, t.kind, t.channels, ctx.spatial[t.layer], t.depth, t.nonlinearity)
             for t in ctx.taps]
    provenance = {"source": origin_of(inputs[0].resolve(), origin), "framework": ctx.source.framework,
                  "checkpoints": len(found), "provider": ctx.tapped.provider,
                  "nas_on": "host" if ctx.host else "graph",
                  "skipped": dict(skipped), "probe_sha256": ctx.probeset.sha256}
    # what the adapter says about reading the files (nasprobe.contract.CheckpointSource);
    # the core's own keys keep their values
    provenance.update((k, v) for k, v in ctx.source.provenance.items() if k not in provenance)
    if no_preact:
        provenance["no_preact"] = no_preact
    attrs = {"nasprobe_version": __version__, "tap": options.tap,
             "exclude_bias": bool(options.exclude_bias), "probe_sha256": ctx.probeset.sha256,
             "probe_size": int(ctx.probeset.size), "probe_source": options.probe,
             "framework": ctx.source.framework}
    return _Plan(spec, infos, [c.epoch for c in ckpts], provenance, attrs,
                 run_source(inputs, origin), skipped)


def _without_preact(ctx, options: ProbeOptions, run: str) -> list[str]:
    """The layers that ``--tap preact`` leaves out (no nonlinearity follows them through
    per-channel operators: attention projections, SwiGLU's up projection, logits), said once
    on stderr."""
    from nasprobe.onnxgraph.taps import find_taps

    kept = {t.layer for t in ctx.taps}
    linear = find_taps(ctx.source.architecture(), tap="linear", layers=options.layers)
    missing = [t.layer for t in linear if t.layer not in kept]
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6
                                          else "")
        print(f"nasprobe: run {run}: --tap preact: {len(missing)} of {len(linear)} layers "
              f"have no nonlinearity after them and are left out: {shown}", file=sys.stderr)
    return missing


def probe(checkpoints: Sequence[str | os.PathLike], *, out: str | os.PathLike,
          options: ProbeOptions | None = None, run: str | None = None,
          epoch_regex: str | None = None, on_error: str = "fail", force: bool = False,
          progress: bool = True, workers: int | None = None, scheduler=None,
          **option_fields: Any) -> Path:
    """Probe every checkpoint of one or more runs and write NAS statistics into the store ``out``.

    What is measured is given either as ``options`` (a :class:`~nasprobe.job.options.ProbeOptions`)
    or as its fields in keyword arguments, e.g. ``probe(ckpts, out=..., probe="probe.npz",
    tap="preact")``; ``model``, ``input_shape`` and ``trust_pickle`` are accepted there too
    (see :meth:`ProbeOptions.build <nasprobe.job.options.ProbeOptions.build>`).

    Args:
        checkpoints: a folder of checkpoints (epochs parsed from file names) and/or files: one
            run. Several folders: one run each, named after the folder (see :func:`run_folders`).
        out: the zarr store (created, or extended: runs and epochs already there are kept).
        options: the probe options (or give their fields as keyword arguments).
        run: the run's name (default: the folder's name); only with a single run.
        epoch_regex: overrides the epoch patterns of file names.
        on_error: ``fail`` stops at the first bad checkpoint; ``skip`` records it under the
            run's ``skipped`` provenance and goes on with the other epochs.
        force: allow a store written with another probe set, and replace (delete) a run of
            the default name (the folder's) whose epochs came from another checkpoint folder;
            without it such a run is refused. A run named with ``run`` takes checkpoints of
            any folder (the folders are joined on purpose).
        progress: a progress bar over finished (run, epoch) tasks on stderr.
        workers: run the tasks on a new local Dask cluster of this many processes.
        scheduler: run them on an existing Dask scheduler (``tcp://HOST:PORT`` or a Client).
        **option_fields: the fields of :class:`~nasprobe.job.options.ProbeOptions` (``probe``,
            ``framework``, ``tap``, ``nas_on``...), when ``options`` is not given. ``nas_on``:
            ``graph`` (NAS appended to the ONNX graph), ``host`` (raw taps out of onnxruntime,
            NAS by the fused C kernel of :mod:`nasprobe.measures.kernels`) or ``auto`` (host on CPU when
            the kernel is built, else graph); results agree to 1e-5.

    Returns:
        The store path. Epochs already stored are skipped, so running the same call again after
        an interruption continues where it stopped. Epochs with non-finite weights are stored
        (NaN statistics where affected) with a warning, and listed under ``nonfinite``.
    """
    if options is None:
        if "probe" not in option_fields:
            raise NasprobeError("no probe set given (probe=...)")
        options = ProbeOptions.build(**option_fields)
    elif option_fields:
        raise NasprobeError(f"give options= or its fields ({', '.join(option_fields)}), "
                            "not both")
    if on_error not in ("fail", "skip"):
        raise NasprobeError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    if workers is not None and scheduler is not None:
        raise NasprobeError("give --workers or --scheduler, not both")
    _check_out(out)
    if is_url(str(options.probe)) or any(is_url(checked_path(c)) for c in checkpoints):
        forget_remote()  # objects may have been rewritten since this process last read them
    origin: dict[str, str] = {}  # local copy → URL, for checkpoints on object storage
    local = []
    for c in checkpoints:
        if is_url(checked_path(c)):
            copy = local_copy(str(c))
            origin[str(copy.resolve())] = str(c).rstrip("/")
            local.append(copy)
        else:
            local.append(c)
    groups = run_folders(local, run)
    plans: list[_Plan] = []
    for name, inputs in groups:
        try:
            plans.append(_plan(name, inputs, options, epoch_regex, on_error, origin))
        except CheckpointError as exc:
            if on_error == "fail" or len(groups) == 1:
                raise
            print(printable(f"nasprobe: skipped run {name}: {exc}"), file=sys.stderr)
    if not plans:
        raise NasprobeError("no run could be probed (see the messages above)")
    store = Store(out)
    named = bool(run)  # --run NAME: folders join that run on purpose
    check_sources(store.loc, [(p.spec.run, p.source) for p in plans], force, named)
    check_layers(store.loc, [PlannedRun(p.spec.run, str(p.spec.checkpoints[0][0]), p.infos,
                                        p.epochs) for p in plans])
    for plan in plans:
        store.create_or_check(plan.attrs, force=force)
    job = new_job_id()
    tasks = []
    serial = workers is None and scheduler is None  # this process writes every epoch itself
    for plan in plans:
        kept = min(options.keep_images, plan.attrs["probe_size"])  # no padding past the set
        plan.writer = store.open_run(
            plan.spec.run, plan.epochs, plan.infos, kept, plan.provenance, job=job,
            attrs={k: plan.attrs[k] for k in ("nasprobe_version", "probe_source",
                                              "probe_sha256")}, source=plan.source, named=named,
            epochs_per_chunk=EPOCHS_PER_CHUNK if serial else 1)
        done = len(plan.writer.done or ())
        print(f"nasprobe: run {printable(plan.spec.run)}: {len(plan.writer.todo)} epochs to "
              f"probe, {done} skipped as already in {printable(store.path)}", file=sys.stderr)
        paths = {epoch: path for path, epoch in plan.spec.checkpoints}
        tasks += [EpochTask(plan.spec, paths[epoch], epoch, plan.writer)
                  for epoch in plan.writer.todo]
    _execute(tasks, {p.spec.run: p for p in plans}, on_error, progress, workers, scheduler)
    for plan in plans:
        if plan.skipped != plan.provenance["skipped"] or plan.nonfinite:
            plan.provenance["skipped"] = plan.skipped
            if plan.nonfinite:
                plan.provenance["nonfinite"] = plan.nonfinite
            plan.writer.set_provenance(plan.provenance)
    return out if is_url(str(out)) else Path(out)


def _check_out(out: str | os.PathLike) -> None:
    """Refuse, before any work, a store path that cannot be a store folder (URLs are checked
    by their backend when written)."""
    loc = location(out)
    if not loc.local:
        return
    out = loc.path()
    if out.exists() and not out.is_dir():
        raise StoreError(out, "is a file, not a store folder; use another --out")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise StoreError(out, f"cannot be created: {parent} is a file, not a folder")
    if not out.exists() and not os.access(parent, os.W_OK):
        raise StoreError(out, f"cannot be created: {parent} is not writable")


def _record(plan: _Plan) -> None:
    """Write the run's provenance (skipped files, epochs with non-finite weights) into this
    job's record now, not only when the job ends: an interrupted job keeps what it learned.
    Each job has its own record; readers merge them (see nasprobe.store.reader)."""
    plan.provenance["skipped"] = dict(plan.skipped)
    if plan.nonfinite:
        plan.provenance["nonfinite"] = dict(plan.nonfinite)
    plan.writer.set_provenance(plan.provenance)


def _probed(tasks: list[EpochTask], plans: dict[str, _Plan]):
    """``(task, probe_checkpoint(task))`` in task order, for a serial job: one epoch at a time,
    or several at once where every run's epochs are short (:func:`epochs_side_by_side`), each
    on a thread of its own while this one commits the finished ones in order. A stopped job
    waits for the epochs in flight, and commits none after the one it stopped at."""
    todo = len(tasks)
    at_once = min((epochs_side_by_side(p.spec, todo) for p in plans.values()), default=1)
    return prefetched(tasks, partial(probe_checkpoint, side_by_side=at_once),
                      at_once if at_once > 1 else 0)


def _execute(tasks: list[EpochTask], plans: dict[str, _Plan], on_error: str, progress: bool,
             workers: int | None, scheduler) -> None:
    """Run the tasks here or on Dask, folding each :class:`Outcome` into its run's plan."""
    desc = "probe " + (printable(next(iter(plans))) if len(plans) == 1 else f"{len(plans)} runs")
    bar = tqdm(total=len(tasks), desc=desc, unit="epoch", disable=not progress,
               file=sys.stderr)
    shown = ""  # the provider on the bar: set_postfix redraws it, so only when it changes

    def handle(o: Outcome) -> None:
        nonlocal shown
        with pipeline.PROCESS_LOCK:  # its warnings vs. epoch threads' filters: see the lock
            bar.update(1)
            plan = plans[o.run]
            if o.status == "crashed" and on_error == "fail":  # not the file's fault
                raise JobFailedError(f"{o.path}: {o.message}")
            if o.status in ("error", "crashed"):
                if on_error == "fail":
                    raise CheckpointError(o.path, o.message)
                plan.skipped[o.path] = o.message
                print(printable(f"nasprobe: skipped {o.path}: {o.message}"), file=sys.stderr)
                _record(plan)
                return
            if o.nonfinite:
                plan.nonfinite[o.path] = o.nonfinite
                _record(plan)
                warnings.warn(f"{o.path}: non-finite weights in {', '.join(o.nonfinite[:5])}; NAS "
                              "of affected layers is recorded as NaN", stacklevel=4)
            provider = o.provider.replace("ExecutionProvider", "")
            if provider and provider != shown:  # a redraw per epoch: 6 % of 100 tiny epochs
                shown = provider
                bar.set_postfix(provider=provider)

    try:
        if workers is None and scheduler is None:
            try:
                with one_blas_thread():  # the weight correlations' products: see its docstring
                    for task, probed in _probed(tasks, plans):
                        handle(commit_epoch(task, probed))  # the write itself needs no lock
            finally:  # the epochs held for shared chunks: also when stopped by an error or ^C
                for plan in plans.values():
                    if plan.writer is not None:
                        plan.writer.flush()
        else:
            from .parallel import dask_client, run_on_dask

            with dask_client(workers, scheduler) as client:
                run_on_dask(client, tasks, handle)
    finally:
        bar.close()


def run_info(path: str | os.PathLike) -> dict:
    """The ``runs`` provenance attribute of a store, parsed (run → dict)."""
    from nasprobe.store.reader import open_store

    return json.loads(open_store(path).attrs.get("runs", "{}"))
