"""Checkpoint folders: finding a run's checkpoints and parsing epochs from their names.

Which files (or folders) are checkpoints, and how they become a source, is up to the adapters
(:mod:`nasprobe.adapters`); this module only finds them and orders them by epoch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from nasprobe.contract import Checkpoint
from nasprobe.errors import CheckpointError, EpochError, NoCheckpointError

from . import registry as adapters

__all__ = [
    "checkpoint_stem",
    "DEFAULT_EPOCH_PATTERNS",
    "parse_epoch",
    "find_checkpoints",
    "checkpoints_in",
]

#: File name patterns tried in order; the first that matches gives the epoch (group ``epoch``).
#: ``init``/``initial``/``untrained`` name the untrained model, epoch -1.
DEFAULT_EPOCH_PATTERNS: tuple[str, ...] = (
    r"^(?:init|initial|untrained)(?:[._-]|$)",
    r"epoch[_=\-]?(?P<epoch>\d+)",
    r"^weights\.(?P<epoch>\d+)-",
    r"(?:^|[_\-.])(?:ep|e)(?P<epoch>\d+)(?:[_\-.]|$)",
    r"(?P<epoch>\d+)(?=\D*$)",
)


def checkpoint_stem(name: str) -> str:
    """A checkpoint file name without its checkpoint extension (the longest an adapter
    claims, e.g. ``.weights.h5``): ``ckpt.12.pth`` → ``ckpt.12``."""
    for ext in adapters.extensions():
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def parse_epoch(path: str | os.PathLike, epoch_regex: str | None = None,
                relative: str | None = None) -> int | None:
    r"""Epoch number of a checkpoint file name, or ``None`` when no pattern matches.

    ``epoch_regex`` (a Python regex with a group named ``epoch``, or one unnamed group) replaces
    :data:`DEFAULT_EPOCH_PATTERNS`; it is searched in the file name, and where that does not
    match, in ``relative``: the checkpoint's path relative to its run folder, or the path as
    given for checkpoints named one by one (default), with ``/`` between folders — so that
    ``run/step-100/model/`` can be named by ``--epoch-regex 'step-(\d+)/'``. Examples with the
    defaults: ``epoch_012.onnx`` → 12, ``epoch=12.onnx`` → 12, ``model-012.onnx`` → 12,
    ``weights.12-0.85.onnx`` → 12, ``checkpoint-500`` (a Hugging Face Trainer folder) → 500,
    ``init.onnx`` → -1.
    """
    name = Path(path).name
    stem = checkpoint_stem(name)
    patterns = (epoch_regex,) if epoch_regex else DEFAULT_EPOCH_PATTERNS
    texts = [name]
    if epoch_regex:
        texts.append(Path(relative if relative is not None else path).as_posix())
    for pattern in patterns:
        try:
            m = None
            for text in texts if epoch_regex else [stem]:
                m = re.search(pattern, text, flags=0 if epoch_regex else re.I)
                if m:
                    break
        except re.error as exc:
            raise EpochError(path, f"--epoch-regex {pattern!r}: not a valid regular expression "
                                   f"({exc})") from None
        if not m:
            continue
        groups = m.groupdict()
        value = groups["epoch"] if groups.get("epoch") is not None else (
            m.group(1) if m.groups() and m.group(1) is not None else None)
        if value is None:
            return -1  # a pattern with no number: the untrained model
        if not re.fullmatch(r"-?[0-9]+", value):
            raise EpochError(path, f"--epoch-regex {pattern!r} gives the epoch {value!r}, not a "
                                   "whole number")
        return int(value)
    return None


def checkpoints_in(folder: Path) -> list[Path]:
    """The entries of ``folder`` that an adapter claims as checkpoints, sorted by name."""
    return sorted(q for q in Path(folder).iterdir() if adapters.is_checkpoint(q))


def find_checkpoints(inputs: Iterable[str | os.PathLike], epoch_regex: str | None = None,
                     ) -> list[Checkpoint]:
    """Checkpoints of one run, sorted by epoch.

    Args:
        inputs: a folder (every checkpoint in it) and/or checkpoints (files, or folders that
            an adapter claims, such as orbax checkpoints).
        epoch_regex: overrides the default epoch patterns (see :func:`parse_epoch`).

    Raises:
        NoCheckpointError: a folder without checkpoints.
        EpochError: a file whose epoch cannot be parsed, or two files that claim the same
            epoch (both named in the message).
        CheckpointError: a path that does not exist.
    """
    files: list[Path] = []
    relative: dict[Path, str] = {}  # a run folder's checkpoint → its path in the folder
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise CheckpointError(p, "no such file or folder")
        if p.is_dir() and not adapters.is_checkpoint(p):
            found = checkpoints_in(p)
            if not found:
                raise NoCheckpointError(p, "folder holds no checkpoint file "
                                        f"({', '.join(adapters.extensions()) or 'none'}) "
                                        "and no checkpoint folder")
            files.extend(found)
            relative.update((f, f.relative_to(p).as_posix()) for f in found)
        else:
            files.append(p)
    by_epoch: dict[int, Path] = {}
    extra = adapters.companions(files)
    for f in files:
        epoch = parse_epoch(f, epoch_regex, relative.get(f))
        if epoch is None and f in extra:
            continue  # e.g. the architecture file beside weight-only checkpoints
        if epoch is None:
            raise EpochError(f, "cannot parse an epoch from the file name; pass "
                             "--epoch-regex with a group named 'epoch'")
        if epoch in by_epoch:
            raise EpochError(f, f"claims epoch {epoch}, as does {by_epoch[epoch]}")
        by_epoch[epoch] = f
    return [Checkpoint(by_epoch[e], e) for e in sorted(by_epoch)]
