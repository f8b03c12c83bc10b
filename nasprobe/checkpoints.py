"""Checkpoint folders: finding the files, parsing epochs, and the per-framework sources.

A *source* turns a list of checkpoint files of one run into (a) one ONNX architecture, exported
once, and (b) per epoch, the values of that architecture's initializers. The core knows only
ONNX (:class:`OnnxSource`); framework sources live in the adapters (``nasprobe_torch``,
``nasprobe_keras``) and are imported by name, lazily, when a non-ONNX checkpoint is given.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import CheckpointError, NasprobeError

__all__ = [
    "Checkpoint",
    "CheckpointSource",
    "OnnxSource",
    "DEFAULT_EPOCH_PATTERNS",
    "parse_epoch",
    "find_checkpoints",
    "detect_framework",
    "open_source",
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

#: File extensions per framework; ``detect_framework`` uses them.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "onnx": (".onnx",),
    "torch": (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pt2", ".tar"),
    "keras": (".keras", ".h5", ".weights.h5"),
}

ADAPTERS = {"torch": "nasprobe_torch", "keras": "nasprobe_keras"}


@dataclass(frozen=True)
class Checkpoint:
    """One saved epoch: its file and the epoch number (-1 for the untrained model)."""

    path: Path
    epoch: int


def _strip_ext(name: str) -> str:
    for exts in EXTENSIONS.values():
        for ext in sorted(exts, key=len, reverse=True):
            if name.lower().endswith(ext):
                return name[: -len(ext)]
    return Path(name).stem


def parse_epoch(path: str | os.PathLike, epoch_regex: str | None = None) -> int | None:
    """Epoch number of a checkpoint file name, or ``None`` when no pattern matches.

    ``epoch_regex`` (a Python regex with a group named ``epoch``, or one unnamed group) replaces
    :data:`DEFAULT_EPOCH_PATTERNS`. Examples with the defaults: ``epoch_012.onnx`` → 12,
    ``epoch=12.onnx`` → 12, ``model-012.onnx`` → 12, ``weights.12-0.85.onnx`` → 12,
    ``init.onnx`` → -1.
    """
    name = Path(path).name
    stem = _strip_ext(name)
    patterns = (epoch_regex,) if epoch_regex else DEFAULT_EPOCH_PATTERNS
    for pattern in patterns:
        m = re.search(pattern, name if epoch_regex else stem, flags=0 if epoch_regex else re.I)
        if not m:
            continue
        groups = m.groupdict()
        if "epoch" in groups and groups["epoch"] is not None:
            return int(groups["epoch"])
        if m.groups() and m.group(1) is not None:
            return int(m.group(1))
        return -1  # a pattern with no number: the untrained model
    return None


def detect_framework(paths: Iterable[Path]) -> str:
    """``onnx``, ``torch`` or ``keras`` from the files' extensions; error when mixed or unknown."""
    found = set()
    for p in paths:
        name = p.name.lower()
        for fw in ("keras", "onnx", "torch"):
            if any(name.endswith(ext) for ext in EXTENSIONS[fw]):
                found.add(fw)
                break
    if len(found) == 1:
        return found.pop()
    if not found:
        raise NasprobeError("no checkpoint file with a known extension "
                            f"({', '.join(e for v in EXTENSIONS.values() for e in v)})")
    raise NasprobeError(f"checkpoints of several frameworks in one run: {sorted(found)}; "
                        "pass --framework")


def _is_checkpoint(p: Path) -> bool:
    name = p.name.lower()
    return p.is_file() and any(name.endswith(e) for v in EXTENSIONS.values() for e in v)


def find_checkpoints(inputs: Iterable[str | os.PathLike], epoch_regex: str | None = None,
                     ) -> list[Checkpoint]:
    """Checkpoints of one run, sorted by epoch.

    Args:
        inputs: a folder (every checkpoint file in it) and/or checkpoint files.
        epoch_regex: overrides the default epoch patterns (see :func:`parse_epoch`).

    Raises:
        CheckpointError: an empty folder, a file whose epoch cannot be parsed, or two files that
            claim the same epoch (all named in the message).
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if _is_checkpoint(q))
            if not found:
                raise CheckpointError(p, "folder holds no checkpoint file "
                                      "(.onnx, .pt, .pth, .bin, .ckpt, .safetensors, .pt2, "
                                      ".keras, .h5)")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise CheckpointError(p, "no such file or folder")
    by_epoch: dict[int, Path] = {}
    weights_only = any(f.name.lower().endswith(".weights.h5") for f in files)
    for f in files:
        epoch = parse_epoch(f, epoch_regex)
        if epoch is None and weights_only and f.suffix.lower() == ".keras":
            continue  # the architecture file beside Keras weights-only checkpoints
        if epoch is None:
            raise CheckpointError(f, "cannot parse an epoch from the file name; pass "
                                  "--epoch-regex with a group named 'epoch'")
        if epoch in by_epoch:
            raise CheckpointError(f, f"claims epoch {epoch}, as does {by_epoch[epoch]}")
        by_epoch[epoch] = f
    return [Checkpoint(by_epoch[e], e) for e in sorted(by_epoch)]


class CheckpointSource(Protocol):
    """What the probe needs from a run's checkpoints, whatever the framework.

    ``architecture()`` returns one ONNX model (with the weights of the first checkpoint) whose
    graph keeps every linear operator and BatchNorm as in the framework model, and whose layer
    names are the framework's own. ``weights(ckpt)`` returns the values of that model's
    initializers for one checkpoint, keyed by initializer name (only those that differ per
    epoch need to be given). ``framework`` names the framework for provenance.
    """

    framework: str

    def architecture(self) -> onnx.ModelProto: ...

    def weights(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]: ...


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file, refusing external data that points outside the file's folder."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several kinds
        raise CheckpointError(path, f"not a readable ONNX model ({exc.__class__.__name__}: "
                              f"{exc})") from exc
    folder = path.resolve().parent
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = dict((e.key, e.value) for e in init.external_data).get("location", "")
            target = (folder / loc).resolve()
            if folder not in target.parents:
                raise CheckpointError(path, f"initializer {init.name!r} points to external "
                                      f"data outside its folder ({loc!r}); refused")
    try:
        onnx.load_external_data_for_model(model, str(folder))
    except Exception as exc:
        raise CheckpointError(path, f"cannot read its external data: {exc}") from exc
    return model


class OnnxSource:
    """Checkpoints that are already ONNX files: the first one gives the architecture."""

    framework = "onnx"

    def __init__(self, checkpoints: list[Checkpoint]):
        self.checkpoints = checkpoints
        self._first = load_onnx(checkpoints[0].path)

    def architecture(self) -> onnx.ModelProto:
        """The first checkpoint's model."""
        return self._first

    def weights(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]:
        """All initializers of ``checkpoint``'s file, by name (arrays in the file's dtype)."""
        if checkpoint.path == self.checkpoints[0].path:
            model = self._first
        else:
            model = load_onnx(checkpoint.path)
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def open_source(checkpoints: list[Checkpoint], framework: str = "auto", **options
                ) -> CheckpointSource:
    """The :class:`CheckpointSource` for a run's checkpoints.

    Args:
        checkpoints: from :func:`find_checkpoints` (not empty).
        framework: ``auto`` (from the file extensions), ``onnx``, ``torch`` or ``keras``.
        **options: passed to the adapter's ``make_source`` (``model``, ``input_shape``,
            ``tap``, ``trust_pickle``...).
    """
    if framework == "auto":
        framework = detect_framework(c.path for c in checkpoints)
    if framework == "onnx":
        return OnnxSource(checkpoints)
    if framework not in ADAPTERS:
        raise NasprobeError(f"unknown framework {framework!r}; use auto, onnx, torch or keras")
    name = ADAPTERS[framework]
    try:
        adapter = importlib.import_module(name)
    except ImportError as exc:
        raise NasprobeError(f"{framework} checkpoints need the {name} adapter and {framework}: "
                            f"pip install 'nasprobe[{framework}]' ({exc})") from exc
    return adapter.make_source(checkpoints, **options)
