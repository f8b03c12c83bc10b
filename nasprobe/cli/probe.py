"""CLI commands that read checkpoints: ``probe``, ``export``, ``info`` and ``demo``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from nasprobe.contract import parse_shape
from nasprobe.frameworks import registry as adapters

from .paths import PathOrUrl

__all__ = ["probe_cmd", "export_cmd", "info_cmd", "migrate_cmd", "demo_cmd", "framework_options"]


def _floats(text: str | None, option: str = "--mean/--std") -> list[float] | None:
    from nasprobe.errors import NasprobeError

    try:
        return [float(v) for v in text.split(",")] if text else None
    except ValueError:
        raise NasprobeError(f"{option} {text!r}: expected numbers separated by commas") from None


def _shape(text: str | None) -> tuple[int, ...] | None:
    return parse_shape(text or None)


#: The help of ``--input-shape``. Each adapter declares its axis order (``input_layout``);
#: they are written out here because ``--help`` imports no plug-in (tests/core/test_names.py
#: checks that every installed adapter's order is named).
INPUT_SHAPE_HELP = ("One sample's input shape without the batch axis, in the framework's axis "
                    "order: C,H,W for torch, H,W,C for keras and jax; for checkpoints that do "
                    "not record it.")


def framework_options(f):
    """Options shared by ``probe`` and ``export`` (how checkpoints are read and tapped)."""
    opts = [
        click.option("--framework", type=click.Choice(["auto", *adapters.names()]),
                     default="auto", show_default=True,
                     help="Checkpoint format (auto: from the files; the choices are the "
                          "installed adapters)."),
        click.option("--model", "model", default=None, metavar="MODULE:CALLABLE",
                     help="Factory of the architecture for weight-only checkpoints; "
                          "MODULE:CALLABLE(key=value, ...) passes keyword arguments."),
        click.option("--input-shape", default=None, metavar="SHAPE", help=INPUT_SHAPE_HELP),
        click.option("--tap", type=click.Choice(["linear", "preact"]), default="linear",
                     show_default=True, help="linear: output of Conv/Gemm/MatMul+bias before "
                     "BatchNorm; preact: input of the nonlinearity."),
        click.option("--exclude-bias", is_flag=True, help="Subtract the layer's bias first."),
        click.option("--layers", default=None, metavar="REGEX", help="Only layers matching."),
        click.option("--epoch-regex", default=None, metavar="RE",
                     help="Regex with a group 'epoch' parsing file names."),
        click.option("--trust-pickle", is_flag=True,
                     help="Allow pickles that hold more than weights (runs their code!)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.command("probe")
@click.argument("checkpoints", nargs=-1, required=True, type=PathOrUrl(exists=True))
@click.option("--probe", "probe_path", required=True, type=PathOrUrl(exists=True),
              help=".npy images, .npz (x, optional y), a folder of images, or for token "
                   "models a .txt file, one example per line (path or URL).")
@click.option("--out", required=True, type=PathOrUrl(),
              help="The zarr store to write (a path, or a URL such as s3://bucket/nas.zarr).")
@click.option("--run", default=None, help="Run name (default: the folder's name).")
@framework_options
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--keep-images", default=8, show_default=True, type=click.IntRange(0),
              help="Per-image heatmaps for the first N probe images.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--nas-on", type=click.Choice(["auto", "graph", "host"]), default="auto",
              show_default=True, help="Compute NAS inside the ONNX graph, or on the host from "
                                      "raw taps with the fused C kernel (auto: host on CPU).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail",
              show_default=True, help="What to do with a bad checkpoint.")
@click.option("--max-length", default=None, type=click.IntRange(1), metavar="N",
              help="Text probes: truncate each line to N tokens and pad to N (default: pad "
                   "to the longest line); padding counts in no statistic.")
@click.option("--mean", default=None, metavar="M[,M,M]", help="Probe normalisation mean.")
@click.option("--std", default=None, metavar="S[,S,S]", help="Probe normalisation std.")
@click.option("--metrics", "metrics_log", default=None, type=click.Path(exists=True),
              help="Training log (Keras CSV/JSON, Lightning metrics.csv, TensorBoard events, "
                   "nasprobe metrics.csv) to import as loss/accuracy.")
@click.option("--force", is_flag=True, help="Allow a store written with another probe set.")
@click.option("--corr/--no-corr", default=True, show_default=True,
              help="Histogram the filter weight correlations of every layer (corr_hist); "
                   "layers over 2048 filters use a fixed sample of 2048.")
@click.option("--workers", default=None, type=click.IntRange(1), metavar="N",
              help="Probe on a local Dask cluster of N processes (needs nasprobe[dask]).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Probe on an existing Dask scheduler, e.g. tcp://HOST:8786.")
def probe_cmd(checkpoints, probe_path, out, run, framework, model, input_shape, tap,
              exclude_bias, layers, epoch_regex, trust_pickle, batch_size, keep_images, device,
              nas_on, on_error, max_length, mean, std, metrics_log, force, corr, workers,
              scheduler):
    """Measure NAS in every checkpoint of a run and write it into a zarr store.

    CHECKPOINTS is one run (a folder, or files), or several folders, one run each, named after
    the folder (nasprobe probe runs/*)."""
    from nasprobe.errors import NasprobeError
    from nasprobe.job.arena import share_cpu_arena
    from nasprobe.job.options import ProbeOptions
    from nasprobe.job.probe_job import probe
    from nasprobe.job.runs import run_folders
    from nasprobe.store.writer import Store

    if workers is not None and scheduler is not None:
        raise click.UsageError("give --workers or --scheduler, not both")
    runs = run_folders(checkpoints, run)
    if metrics_log and len(runs) > 1:
        raise NasprobeError(f"--metrics imports the log of one run, but {len(runs)} run "
                            "folders were given; import each run's log separately")
    log = None
    if metrics_log:  # read (and refused) before probing: a bad log costs no work
        from nasprobe.store.training_logs import read_training_log, store_metric_names

        log = store_metric_names(read_training_log(metrics_log), metrics_log)
    options = ProbeOptions.build(probe_path, framework=framework, model=model,
                                 input_shape=_shape(input_shape), trust_pickle=trust_pickle,
                                 tap=tap, exclude_bias=exclude_bias, layers=layers,
                                 device=device, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                                 batch_size=batch_size, keep_images=keep_images, nas_on=nas_on,
                                 corr=corr, max_length=max_length)
    share_cpu_arena()  # this process ends with the job: its sessions may share one arena
    path = probe(list(checkpoints), out=out, options=options, run=run, epoch_regex=epoch_regex,
                 on_error=on_error, force=force, workers=workers, scheduler=scheduler)
    if metrics_log:
        n = Store(path).write_metrics(runs[0][0], log)
        click.echo(f"imported {n} metric values from {metrics_log}", err=True)
    click.echo(str(path))


@click.command("export")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the tapped ONNX files.")
@framework_options
def export_cmd(checkpoints, out, framework, model, input_shape, tap, exclude_bias, layers,
               epoch_regex, trust_pickle):
    """Write one ONNX file per checkpoint with every tap exposed as an extra output."""
    from nasprobe.job.tapped_onnx import export_tapped

    for path in export_tapped(list(checkpoints), out, framework=framework, model=model,
                              input_shape=_shape(input_shape), tap=tap,
                              exclude_bias=exclude_bias, layers=layers,
                              epoch_regex=epoch_regex, trust_pickle=trust_pickle):
        click.echo(str(path))


@click.command("info")
@click.argument("store", type=PathOrUrl(exists=True))
def info_cmd(store):
    """Print a store's runs, epochs, layers and provenance."""
    from nasprobe.errors import printable
    from nasprobe.store.provenance import mixed_probe_sets
    from nasprobe.store.runs import summary

    def say(text: str) -> None:  # every name comes from the store: escaped for the terminal
        click.echo(printable(text))

    got = summary(store)
    if got is None:  # a store of nasprobe 0.1: read through the xarray view
        got = _legacy_summary(store)
    say(f"store: {store}")
    for key in sorted(got.attrs):
        say(f"  {key}: {got.attrs[key]}")
    say(f"runs ({len(got.runs)}):")
    for r in got.runs:
        eps, p = r.epochs, r.provenance
        span = f"{min(eps)}..{max(eps)}" if eps else "none"
        unit = p.get("epoch_unit", "epoch")
        say(f"  {r.name}: {len(eps)} {unit}s ({span}), {p.get('framework', '?')} from "
            f"{p.get('source', '?')}, provider {p.get('provider', '?')}, "
            f"NAS computed in {p.get('nas_on', 'graph')}")
        if "opset_original" in p:
            say(f"    ONNX opset {p['opset_original']} upgraded to {p.get('opset', '?')}")
        if "weights_dtype" in p:
            say(f"    weights stored in {p['weights_dtype']}, run in "
                f"{p.get('compute_dtype', 'float32')}")
        mixed = mixed_probe_sets(r.name, p.get("probe_sets", []))
        if mixed:
            say(f"    {mixed}")
        if p.get("no_preact"):
            say(f"    no preact tap (no nonlinearity follows): {', '.join(p['no_preact'])}")
        for f, why in p.get("skipped", {}).items():
            say(f"    skipped {f}: {why}")
        for f, names in p.get("nonfinite", {}).items():
            names = names if isinstance(names, list) else [names]
            say(f"    non-finite weights in {f} ({', '.join(map(str, names[:5]))}): NaN "
                "statistics")
    say(f"layers ({len(got.layers)}):")
    for name, kind, channels, locations in got.layers:
        act = got.nonlinearity.get(name)
        act = "" if act is None else f" nonlinearity={act or 'none'}"
        say(f"  {name:24s} {kind:14s} channels={channels} locations={locations}{act}")
    if got.metrics:
        say(f"metrics: {', '.join(got.metrics)}")
    if got.activity:
        say("unit activity: dead_fraction (run, epoch, layer), "
            "heatmaps/<layer>/unit_activity (run, epoch, channel)")
    else:
        say("unit activity: not recorded (written by a nasprobe before dead units "
            "were measured)")


def _legacy_summary(store):
    """:class:`~nasprobe.store.records.StoreSummary` of a nasprobe 0.1 store, from its xarray view."""
    from nasprobe.store.reader import open_store
    from nasprobe.store.records import RunSummary, StoreSummary
    from nasprobe.store.runs import metric_order

    ds = open_store(store).to_dataset()
    attrs = dict(ds.attrs)
    prov = json.loads(attrs.pop("runs", "{}"))
    attrs.pop("sources", None)
    runs = []
    for r in ds["run"].values:
        done = ds["probed"].sel(run=r).values.astype(bool)
        runs.append(RunSummary(str(r), [int(e) for e in ds["epoch"].values[done]],
                               prov.get(str(r), {})))
    layers = [(str(ds.layer.values[i]), str(ds.layer_kind.values[i]), int(ds.channels.values[i]),
               int(ds.locations.values[i])) for i in range(ds.sizes["layer"])]
    metrics = [v for v in ds.data_vars if "layer" not in ds[v].dims and v != "probed"]
    return StoreSummary(attrs, runs, layers, metric_order(metrics))


@click.command("migrate")
@click.argument("store", type=PathOrUrl(exists=True))
@click.option("--out", required=True, type=PathOrUrl(), help="The new store (path or URL).")
def migrate_cmd(store, out):
    """Copy a store written by nasprobe 0.1 into the current layout, so that new runs can be
    added to it (values are copied, not recomputed; the old store is left as it is)."""
    from nasprobe.errors import printable
    from nasprobe.store.migrate import migrate

    runs = migrate(store, out)
    click.echo(printable(f"migrated {len(runs)} runs ({', '.join(runs)}) into {out}"), err=True)


@click.command("demo")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(2))
def demo_cmd(out, epochs):
    """Train a small CNN on sklearn's digits, probe every epoch, and draw the figures."""
    from .demo import run_demo

    run_demo(Path(out), epochs=epochs)
