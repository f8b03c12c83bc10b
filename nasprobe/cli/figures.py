"""``nasprobe plot``: draw one paper figure of a store into a PDF, SVG or PNG file."""

from __future__ import annotations

from pathlib import Path

import click

from nasprobe.errors import NasprobeError
from nasprobe.plots.kinds import KINDS

from .paths import PathOrUrl

__all__ = ["plot"]


@click.command("plot")
@click.argument("store", type=PathOrUrl(exists=True))
@click.option("--kind", required=True, type=click.Choice(list(KINDS)),
              help="; ".join(f"{k.name}: {k.about}" for k in KINDS.values()) + ".")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output file; the format comes from the suffix: .pdf, .svg or .png.")
@click.option("--width", type=click.Choice(["single", "double"]), default="double",
              show_default=True, help="Journal column width: 3.5 in or 7.16 in.")
@click.option("--runs", default=None, help="Comma-separated run names (default: all runs).")
@click.option("--layers", default=None,
              help="Regular expression selecting layers (re.search; default: all).")
@click.option("--epochs", default=None,
              help="hist: comma-separated epochs to draw (default: the last; a ridgeline of "
                   "one run: up to 10 spread over training).")
def plot(store: Path, kind: str, out: Path, width: str, runs: str | None,
         layers: str | None, epochs: str | None) -> None:
    """Draw the KIND figure of STORE into OUT (deterministic bytes for the same store)."""
    from nasprobe import plots
    from nasprobe.store.reader import open_store

    if out.suffix.lower() not in (".pdf", ".svg", ".png"):
        raise click.BadParameter(f"{out}: use a .pdf, .svg or .png file name",
                                 param_hint="--out")
    tree = open_store(store)
    try:
        extra = {}
        if epochs is not None:
            if kind != "hist":
                raise click.BadParameter("only --kind hist takes epochs", param_hint="--epochs")
            try:
                extra["epochs"] = [int(e) for e in epochs.split(",") if e.strip()]
            except ValueError:
                raise click.BadParameter(f"{epochs!r}: give whole epochs, e.g. 10,20",
                                         param_hint="--epochs") from None
        fig = plots.draw(tree, kind, width=width, runs=runs, layers=layers, **extra)
    except ValueError as exc:
        raise NasprobeError(f"{store}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    plots.save(fig, out)
    click.echo(str(out))
