"""``nasprobe report`` and ``nasprobe tensorboard``: a store as one HTML file, or as
TensorBoard event files (docs/cli.md). The group in :mod:`nasprobe.cli` adds both commands."""

from __future__ import annotations

import click

from nasprobe.plots.kinds import KINDS

from .paths import PathOrUrl

__all__ = ["report_command", "tensorboard_command"]


@click.command("report")
@click.argument("store", type=PathOrUrl(exists=True))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (self-contained: figures embedded, no network).")
@click.option("--title", default=None, help="Page title (default: the store's folder name).")
@click.option("--dpi", default=110, show_default=True, type=click.IntRange(30, 600),
              help="Resolution of the embedded figures, dots per inch.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(list(KINDS)),
              help="Only these figure kinds (repeatable; default: all).")
def report_command(store: str, out: str, title: str | None, dpi: int,
                   kinds: tuple[str, ...]) -> None:
    """Write one self-contained HTML report of STORE: every figure, the onset table,
    provenance and a summary of runs, epochs and layers."""
    from nasprobe.report.html import write_report

    path = write_report(store, out, title=title, dpi=dpi, kinds=kinds or None)
    click.echo(f"report: {path}")


@click.command("tensorboard")
@click.argument("store", type=PathOrUrl(exists=True))
@click.argument("logdir", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True,
              help="Replace the event files an earlier export left in LOGDIR/<run> (other "
                   "event files, e.g. training logs, are never touched).")
@click.option("--run", "runs", multiple=True, help="Only this run (repeatable; default: all).")
def tensorboard_command(store: str, logdir: str, overwrite: bool, runs: tuple[str, ...]) -> None:
    """Write STORE as TensorBoard event files: LOGDIR/<run> per run, scalars
    nas_median/<layer>, nas_mean/<layer>, loss, accuracy and images nas_heatmap/<layer>,
    step = epoch. View with `tensorboard --logdir LOGDIR`. Needs the `tensorboard` extra."""
    from nasprobe.errors import printable
    from nasprobe.report.tensorboard import write_tensorboard

    folders = write_tensorboard(store, logdir, overwrite=overwrite, runs=list(runs) or None)
    for run, folder in folders.items():
        click.echo(printable(f"tensorboard: {run} -> {folder}"))
