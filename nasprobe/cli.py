"""The ``nasprobe`` command line (DESIGN.md §3). Errors go to stderr; exit codes:
0 success, 1 unexpected failure, 2 bad input (a :class:`~nasprobe.errors.NasprobeError`),
130 interrupted (the store keeps every epoch finished before the interruption)."""

from __future__ import annotations

import sys

import click

from .errors import NasprobeError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NasprobeError as exc:
            click.echo(f"nasprobe: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("nasprobe: interrupted; finished epochs are kept, run the same "
                       "command again to continue", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="nasprobe")
def main() -> None:
    """Neural Activation Sparsity of saved checkpoints: probe, store, plot."""


# Commands live in modules named after what they do; importing them registers them on `main`.
from . import cli_probe  # noqa: E402,F401
from . import cli_report  # noqa: E402,F401
from . import cli_figures  # noqa: E402,F401
