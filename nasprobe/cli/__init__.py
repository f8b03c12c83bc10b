"""The ``nasprobe`` command line (docs/cli.md). Errors go to stderr; exit codes:
0 success, 1 unexpected failure, 2 bad input (a :class:`~nasprobe.errors.NasprobeError`),
130 interrupted (the store keeps every epoch finished before the interruption).

Owns the commands (one module per group of commands: :mod:`.probe` for probe, export, info,
migrate and demo; :mod:`.figures`; :mod:`.onsets`; :mod:`.report`; :mod:`.doctor`; the demo job in
:mod:`.demo`) and the path-or-URL parameter type (:mod:`.paths`). The top layer: it may import
every package; nothing in nasprobe imports it but ``python -m nasprobe``.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading

import click

from nasprobe._version import __version__
from nasprobe.errors import JobFailedError, MissingExtraError, NasprobeError, printable

from .doctor import doctor
from .figures import plot
from .onsets import onsets_command
from .probe import demo_cmd, export_cmd, info_cmd, migrate_cmd, probe_cmd
from .report import report_command, tensorboard_command


class _Group(click.Group):
    def __call__(self, *args, **kwargs):
        """``main()``: runs the command, then freezes the garbage collector, so that a process
        that ends now skips the interpreter's last garbage-collection passes over every object
        still alive (about 40 ms after a probe job: sessions, graphs, arrays); the console
        script ends it at once (:func:`run`). A test's ``CliRunner`` calls :meth:`main`
        instead, and collects as usual.

        numpy's OpenBLAS is started with one thread unless ``OPENBLAS_NUM_THREADS`` is set: the
        commands' only matrix products are a probe job's weight correlations, which run on one
        thread anyway (:func:`nasprobe.job.pipeline.one_blas_thread`), and OpenBLAS's idle threads
        spin for a while after numpy loads it and again when that limit is set, on the cores
        the probe streams need (100 checkpoints of a 4-layer CNN on 2 cores: 0.2 of 2.1 CPU
        seconds)."""
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        try:
            return self.main(*args, **kwargs)
        finally:
            gc.freeze()

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NasprobeError as exc:
            click.echo(f"nasprobe: error: {printable(exc)}", err=True)
            sys.exit(2)
        except JobFailedError as exc:
            click.echo(f"nasprobe: failed (not a problem with the input): {printable(exc)}",
                       err=True)
            sys.exit(1)
        except ImportError as exc:  # an optional dependency (an extra) not installed
            missing = MissingExtraError.from_import(exc)
            if missing is None:
                raise
            click.echo(f"nasprobe: error: {missing}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("nasprobe: interrupted; finished epochs are kept, run the same "
                       "command again to continue", err=True)
            sys.exit(130)


def run() -> None:
    """The ``nasprobe`` console script and ``python -m nasprobe``: :data:`main`, then the process
    ends at once (:func:`end_process`). A script that goes on after a command calls
    :data:`main` (its ``SystemExit`` can be caught) or ``main(args, standalone_mode=False)``."""
    try:
        main()
    except SystemExit as exc:  # click's standalone mode always ends with one
        end_process(exc.code)
    end_process(0)


def end_process(code=0) -> None:
    """End this process with exit status ``code`` (``sys.exit``'s argument: None, a number or
    a message), without the interpreter's teardown.

    Once a command has returned, every result is written and closed, so the teardown (freeing
    every module and object one by one: onnxruntime's sessions and thread pools, arrays, zarr;
    15-35 ms after a probe job) buys nothing. This does what a normal exit does that anyone
    could rely on: it waits for non-daemon threads, runs the ``atexit`` handlers (coverage
    data, temporary folders, logging) and flushes stdout and stderr, then calls ``os._exit``.
    Under a tracer or profiler (``python -m cProfile -m nasprobe``, a debugger), or for a
    message, it raises ``SystemExit(code)`` instead: the normal exit.
    """
    if code is None:
        code = 0
    if not isinstance(code, int) or sys.gettrace() is not None or sys.getprofile() is not None:
        sys.exit(code)
    threading._shutdown()  # what the interpreter does first at exit: wait for worker threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (nasprobe info | head): nothing to keep
            pass
    os._exit(code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="nasprobe")
def main() -> None:
    """Neural Activation Sparsity of saved checkpoints: probe, store, plot."""


# Commands live in modules named after what they do, as plain click commands; the group adds them.
for command in (probe_cmd, export_cmd, info_cmd, migrate_cmd, demo_cmd, report_command,
                tensorboard_command, plot, doctor, onsets_command):
    main.add_command(command)
