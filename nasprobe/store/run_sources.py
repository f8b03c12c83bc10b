"""Which checkpoint folder a run of the store holds: two experiments never share a run name.

The default run name is the checkpoint folder's name, so ``exp1/ck`` and ``exp2/ck`` would
both be run ``ck``. When a run's group (``runs/<run>/zarr.json``) is first created it records
the run's *source* — the checkpoint folder, resolved, or the URL it was downloaded from — and
it is created exclusively, so of two jobs starting the run at once only the first one's source
is recorded. A later job of another source is refused (:func:`check_run_source`), unless the
run was named on purpose (``--run NAME`` joins folders) or ``--force`` replaces the run.
Runs written before sources were recorded are not checked.
"""

from __future__ import annotations

from nasprobe.errors import StoreError

from .layout import RUNS, group_json, run_key
from .limits import json_object
from .runs import committed_epochs
from .storage import Location

__all__ = ["run_source", "check_run_source", "claim_run"]


def run_source(loc: Location, run: str) -> str | None:
    """The source recorded when ``run``'s group was created in the store ``loc``; None for a
    new run, or one written before sources were recorded."""
    got = json_object(loc.read(RUNS, run_key(run), "zarr.json")).get("attributes", {})
    source = got.get("source") if isinstance(got, dict) else None
    return source if isinstance(source, str) else None


def check_run_source(loc: Location, run: str, source: str, force: bool = False,
                     named: bool = False) -> tuple[str | None, int]:
    """Check that checkpoints of ``source`` may go into ``run``: refused when the run was
    started from another folder, unless the run was ``named`` explicitly; with ``force`` that
    run is deleted first (all its jobs and commit markers).

    Returns:
        (the run's recorded source where it differs from ``source``, else None; how many
        committed epochs a ``force`` replacement deleted).

    Raises:
        StoreError: the recorded source differs, naming both and what to pass.
    """
    old = run_source(loc, run)
    if old is None or old == source or named:
        return (None if old == source else old), 0
    if not force:
        raise StoreError(loc.url, f"run {run!r} holds checkpoints of {old}, not of {source}: "
                         "two experiments under one run name; pass --run NAME to store these "
                         "as another run, or --force to delete the run's epochs and replace "
                         "them")
    gone = len(committed_epochs(loc, run_key(run)))
    loc.remove(RUNS, run_key(run))
    return old, gone


def claim_run(loc: Location, run: str, source: str | None, named: bool = False) -> None:
    """Create ``run``'s group recording its ``source`` (exclusively), or check the recorded
    one (any source joins a run ``named`` explicitly).

    Raises:
        StoreError: another job created the run from another source first.
    """
    attrs = {"run": run} if source is None else {"run": run, "source": source}
    if loc.create(group_json(attrs), RUNS, run_key(run), "zarr.json") or named or source is None:
        return
    old = run_source(loc, run)
    if old is not None and old != source:
        raise StoreError(loc.url, f"run {run!r} was just started from {old}, not from {source}: "
                         "two experiments under one run name; pass --run NAME to store these "
                         "as another run")
