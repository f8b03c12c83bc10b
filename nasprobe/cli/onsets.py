"""``nasprobe onsets``: the moments of overfitting of a store's runs, or where a label-free
stopping rule (:mod:`nasprobe.measures.stopping`) would have stopped them. The group in
:mod:`nasprobe.cli` adds the command."""

from __future__ import annotations

import ast
from pathlib import Path

import click

from nasprobe.errors import NasprobeError, printable

from .paths import PathOrUrl

__all__ = ["onsets_command", "parse_params", "RuleChoice"]


class RuleChoice(click.Choice):
    """The names of :data:`nasprobe.measures.stopping.RULES`, read from there when the option
    is shown or parsed (so that importing the command line does not import numpy and xarray)."""

    def __init__(self):
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        """The rule names, in :data:`~nasprobe.measures.stopping.RULES` order."""
        from nasprobe.measures.stopping import RULES

        return tuple(RULES)

    @choices.setter
    def choices(self, value) -> None:
        """Ignored: the rules come from :mod:`nasprobe.measures.stopping`."""


def parse_params(items: tuple[str, ...]) -> dict:
    """``("delta=0.02", "deep=['conv4', 'fc1']")`` → ``{"delta": 0.02, "deep": [...]}``
    (values as Python literals; anything else is kept as a string)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NasprobeError(f"--param {item!r}: expected NAME=VALUE")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


@click.command("onsets")
@click.argument("store", type=PathOrUrl(exists=True))
@click.option("--rule", default=None, type=RuleChoice(),
              help="A label-free stopping rule: print the epoch it stops each run at "
                   "(docs/label-free-stopping.md). Without it: loss and NAS onsets.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A parameter of the rule (repeatable), e.g. --param delta=0.02; "
                   "defaults: the values the study chose.")
@click.option("--run", "runs", multiple=True, help="Only this run (repeatable; default: all).")
@click.option("--sigma", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Smoothing of the onsets, in epochs (not used with --rule).")
def onsets_command(store: Path, rule: str | None, params: tuple[str, ...],
                   runs: tuple[str, ...], sigma: float) -> None:
    """Print, per run of STORE, the loss onset and each layer's NAS onset (epochs), or with
    --rule the epoch at which that label-free rule stops the run ("never" if it does not
    fire). The rules are causal: the epoch equals the decision of a NASEarlyStopping
    callback that saw the same NAS values while training."""
    from nasprobe.measures import onsets, stopping
    from nasprobe.store.reader import open_store

    ds = open_store(store).to_dataset()
    if runs:
        missing = sorted(set(runs) - {str(r) for r in ds["run"].values})
        if missing:
            raise NasprobeError(f"{store}: no run {missing}; runs: "
                                f"{', '.join(str(r) for r in ds['run'].values)}")
        ds = ds.sel(run=list(runs))
    if rule is None:
        if params:
            raise NasprobeError("--param needs --rule")
        table = onsets.onsets(ds, sigma=sigma)
        layers = [str(v) for v in table["layer"].values]
        click.echo(printable("run\tloss_onset\t" + "\t".join(f"nas_onset:{name}" for name in layers)))
        for r in table["run"].values:
            row = [_epoch(table["loss_onset"].sel(run=r).item())]
            row += [_epoch(v) for v in table["nas_onset"].sel(run=r).values]
            click.echo(printable(f"{r}\t" + "\t".join(row)))
        return
    kwargs = parse_params(params)
    stopping.check_params(rule, kwargs)
    used = {**stopping.DEFAULTS[rule], **kwargs}
    click.echo(f"# rule {rule}: " + ", ".join(f"{k}={v}" for k, v in used.items()))
    click.echo("run\tstop_epoch")
    for r in ds["run"].values:
        e = stopping.stop_epoch(ds.sel(run=[r]), rule, **kwargs)
        click.echo(printable(f"{r}\t{'never' if e is None else e}"))


def _epoch(value: float) -> str:
    return "none" if value != value else str(int(value))
