"""The runs of a probe job: their names and the checkpoint folder each comes from.

The CHECKPOINTS arguments become runs (:func:`run_folders`): several run folders are one run
each, named after the folder; anything else is one run, named ``--run`` or after its folder.
Since two experiments can have folders of one name (``exp1/ck``, ``exp2/ck``), each run's
*source* (:func:`run_source`, the resolved folder or its URL) is recorded in the store, and
:func:`check_sources` refuses, before anything is written, a default-named run whose stored
epochs came from another folder (docs/store-design.md, *One run, one source*).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from nasprobe.errors import CheckpointError, NasprobeError, printable
from nasprobe.frameworks.registry import is_checkpoint
from nasprobe.store.run_sources import check_run_source
from nasprobe.store.storage import Location, is_url

__all__ = ["run_folders", "run_source", "origin_of", "check_sources"]


def _folder_name(p: Path) -> str:
    """A run folder's name (that of the folder it resolves to for ``.``)."""
    return p.name or p.resolve().name


def run_folders(checkpoints: Sequence[str | os.PathLike], run: str | None = None
                ) -> list[tuple[str, list[Path]]]:
    """Split the CHECKPOINTS arguments into runs: ``[(run name, inputs)]``.

    Several arguments that are all folders (and not themselves checkpoints, as orbax folders
    are) are one run each, named after the folder (``nasprobe probe runs/*``); anything else —
    one folder, or checkpoints — is one run named ``run`` (default: the folder's name, or the
    folder of the first checkpoint).

    Raises:
        NasprobeError: ``run`` given with several run folders, or two run folders of one name.
    """
    items = [Path(c) for c in checkpoints]
    if not items:
        raise NasprobeError("no checkpoints given")
    runs = [p.is_dir() and not is_checkpoint(p) for p in items]
    if len(items) > 1 and all(runs):
        if run:
            raise NasprobeError(f"--run names one run, but {len(items)} run folders were given "
                                "(each folder is a run named after it); drop --run")
        seen: dict[str, Path] = {}
        for p in items:
            name = _folder_name(p)
            if name in seen:
                raise CheckpointError(p, f"run folder of the same name as {seen[name]}; runs "
                                      "are named after their folders, so names must differ")
            seen[name] = p
        return [(name, [p]) for name, p in seen.items()]
    first = items[0]
    return [(run or (_folder_name(first) if runs[0] else first.parent.name), items)]


def run_source(inputs: list[Path], origin: dict[str, str] | None) -> str:
    """What identifies a run's checkpoints in the store: the run folder (resolved path, or
    the URL it was downloaded from), or the folder of its first checkpoint."""
    first = inputs[0]
    if first.is_dir() and not is_checkpoint(first):
        return origin_of(first.resolve(), origin)
    where = origin_of(first.resolve(), origin)
    return where.rsplit("/", 1)[0] if is_url(where) else str(Path(where).parent)


def origin_of(path: Path, origin: dict[str, str] | None) -> str:
    """The URL a downloaded file or folder came from (tasks fetch it again where they run, see
    :func:`nasprobe.store.download_cache.local_copy`), else the local path."""
    text = str(Path(path).resolve())
    for local, url in (origin or {}).items():
        if text == local or text.startswith(local + os.sep):
            return url + text[len(local):].replace(os.sep, "/")
    return str(path)


def check_sources(loc: Location, runs: list[tuple[str, str]], force: bool, named: bool) -> None:
    """Check each ``(run, source)`` against the store ``loc``
    (:func:`nasprobe.store.run_sources.check_run_source`), saying on stderr what ``force``
    replaced and which folders a ``named`` run joins.

    Raises:
        StoreError: a default-named run whose stored epochs came from another folder.
    """
    for run, source in runs:
        old, gone = check_run_source(loc, run, source, force=force, named=named)
        if gone:
            print(f"nasprobe: run {printable(run)}: deleted its {gone} stored epochs of "
                  f"{printable(old)} (--force) to replace them with {printable(source)}",
                  file=sys.stderr)
        elif old is not None:
            print(f"nasprobe: run {printable(run)}: adding checkpoints of {printable(source)} "
                  f"to the run started from {printable(old)} (--run names it)", file=sys.stderr)
