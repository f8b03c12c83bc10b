"""Training logs → per-epoch metrics in nasprobe's names.

:func:`read_training_log` reads the logs that training frameworks already write and returns
``{metric name: {epoch: value}}`` (plain Python ``int`` epochs and ``float`` values), ready for
``nasprobe.store.writer.write_metrics``. Recognised formats:

=====================  ==================================================================
Keras ``CSVLogger``    ``epoch,loss,accuracy,val_loss,val_accuracy`` (any separator)
Lightning ``metrics``  ``metrics.csv`` of ``CSVLogger``: sparse rows with ``epoch``, ``step``
                       and ``train_loss_step``/``train_loss_epoch``/``val_loss``/... cells;
                       rows of one epoch are merged
nasprobe ``metrics``   ``epoch,train_loss,train_accuracy,test_loss,test_accuracy``
Keras history JSON     ``{"loss": [...], "val_loss": [...]}``, one list entry per epoch
                       (an ``"epoch"`` list, if present, gives the epochs), or a list of
                       per-epoch objects each with an ``"epoch"`` key
TensorBoard events     an event file or a log folder (searched recursively; a sub-folder
                       such as Keras' ``train/`` and ``validation/`` prefixes the tag);
                       ``simple_value`` scalars and TF2 tensor scalars; step = epoch,
                       unless an ``epoch`` tag maps global steps to epochs (Lightning).
                       Needs the ``tensorboard`` extra.
=====================  ==================================================================

**Names** (:func:`canonical_metric_name`). A column or tag is split into words at ``/ _ - .``;
the words ``epoch`` (Keras' ``epoch_loss``, Lightning's ``_epoch`` suffix) are dropped; what is
left must be one split word (or none) and one metric:

* split: ``test``, ``val``, ``valid``, ``validation``, ``eval`` → held-out; ``train``,
  ``training`` or *no split word* (Keras' ``loss``) → training;
* metric: ``loss``; ``acc``/``accuracy`` (also ``sparse_categorical_``, ``categorical_``,
  ``binary_`` accuracy) → accuracy.

Held-out loss/accuracy become ``loss``/``accuracy`` (nasprobe's test values), training ones
``train_loss``/``train_accuracy``. Anything else (``train_loss_step``, ``lr-Adam``,
``batch_loss``, ``validation/evaluation_loss_vs_iterations``) is kept under its own name.
When two columns map to one name, ``test`` beats ``val``/``validation``/``eval``, and an
explicit ``train`` beats no split word; the loser keeps its own name (``<name>_raw`` when
its own name is a winner's nasprobe name, e.g. a bare ``loss`` beaten by ``train_loss``).
When one column has several values in one epoch (Lightning's per-step rows), the last one in
the file (for TensorBoard: the last by step order, then wall time) is kept.

**In the store** (:func:`store_metric_names`) a name becomes a zarr array name, so it is made
safe first: a character other than a letter, digit, ``_ . + -`` (e.g. ``/`` of a TensorBoard
tag) becomes ``_``; a name that is one of the store's own variables, coordinates or groups
(:data:`STORE_NAMES`, e.g. ``nas_median``, ``probed``, ``channels``) or that starts with a
character other than a letter, digit or ``_`` (``.``, ``..``) gets the prefix ``log_``. Two
columns that end up with one name are refused, naming both.

**Epochs.** nasprobe epoch ``e`` is the model after ``e + 1`` passes over the training data
(``-1`` is the untrained model). Keras ``CSVLogger``/history, Lightning (``metrics.csv`` and
its ``epoch=0-step=...ckpt`` files) and the Keras TensorBoard callback count the same way
(0-based), so their epochs are taken as written. Keras ``ModelCheckpoint`` file names
(``weights.{epoch:02d}.keras``) are 1-based: for checkpoints named that way pass
``epoch_offset=1`` so that log epoch ``e`` lands on checkpoint ``e + 1``.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import os
import re
from pathlib import Path

from nasprobe.errors import NasprobeError, install_hint

__all__ = ["TrainingLogError", "read_training_log", "canonical_metric_name", "merge_columns",
           "store_metric_names", "STORE_NAMES", "METRIC_NAMES"]

Metrics = dict[str, dict[int, float]]

TB_PREFIX = "events.out.tfevents"

_HELDOUT = {"test": 0, "val": 1, "valid": 1, "validation": 1, "eval": 1}
_TRAIN = {"train": 0, "training": 0}
_ACCURACY = {
    ("acc",), ("accuracy",), ("sparse", "categorical", "accuracy"),
    ("categorical", "accuracy"), ("binary", "accuracy"),
}
#: The metrics nasprobe itself knows (see the module docstring): stored under these names.
METRIC_NAMES = ("loss", "accuracy", "train_loss", "train_accuracy")

#: Names the store uses for itself (variables, coordinates, groups, metadata); an imported
#: metric of that name (compared case-insensitively) is stored as ``log_<name>``.
STORE_NAMES = frozenset({
    "nas_median", "nas_mean", "nas_min", "nas_max", "entropy_mean", "nas_quantile", "nas_hist",
    "corr_hist", "probed", "run", "epoch", "layer", "layer_kind", "channels", "locations",
    "depth", "quantile", "nas_bin", "corr_bin", "heatmaps", "runs", "image", "zarr.json",
})

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.+\-]")

#: Columns that index rows rather than hold metrics.
_INDEX_COLUMNS = {"epoch", "step", "global_step", "iteration", "wall_time", "time", ""}


class TrainingLogError(NasprobeError):
    """A training log that cannot be read; the message names the file."""

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {message}")


def _classify(name: str) -> tuple[str, int] | None:
    """(nasprobe name, priority; lower wins) for a recognised loss/accuracy name, else None."""
    words = [w for w in re.split(r"[/_\-.\s]+", name.strip().lower()) if w and w != "epoch"]
    split = [w for w in words if w in _HELDOUT or w in _TRAIN]
    rest = tuple(w for w in words if w not in _HELDOUT and w not in _TRAIN)
    if len(split) > 1:
        return None
    if rest == ("loss",):
        metric = "loss"
    elif rest in _ACCURACY:
        metric = "accuracy"
    else:
        return None
    if split and split[0] in _HELDOUT:
        return metric, _HELDOUT[split[0]]
    return f"train_{metric}", (_TRAIN[split[0]] if split else 1)


def canonical_metric_name(name: str) -> str:
    """Nasprobe's name for a log column or tag: ``val_loss`` → ``loss``, ``acc`` →
    ``train_accuracy``, ``validation/epoch_accuracy`` → ``accuracy``; unknown names unchanged."""
    found = _classify(name)
    return found[0] if found else name


def merge_columns(columns: dict[str, dict[int, float]], epoch_offset: int = 0) -> Metrics:
    """Rename raw columns (in file order) to nasprobe's names, resolving clashes as described
    in the module docstring, and shift every epoch by ``epoch_offset``."""
    chosen: dict[str, tuple[int, str]] = {}
    for raw in columns:
        found = _classify(raw)
        if found and (found[0] not in chosen or found[1] < chosen[found[0]][0]):
            chosen[found[0]] = (found[1], raw)
    rename = {raw: name for name, (_, raw) in chosen.items()}
    out: Metrics = {}
    for raw, values in columns.items():
        name = rename.get(raw, raw)
        if raw not in rename and raw in chosen:
            name = f"{raw}_raw"  # a loser whose own name is a winner's nasprobe name
        if values:
            out[name] = {int(e) + epoch_offset: float(v) for e, v in sorted(values.items())}
    return out


def _number(text: str, path: Path, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TrainingLogError(path, f"{where}: {text!r} is not a number") from None


#: Epochs (and steps) are stored as 64-bit integers; a log's must be whole numbers below this
#: in magnitude (2**53: every such number is exact as a float too).
MAX_EPOCH = 2 ** 53


def _epoch(value, path: Path, where: str) -> int:
    """A whole, finite epoch number of bounded size from a log cell (text or JSON value)."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or not math.isfinite(number) or number != int(number):
        raise TrainingLogError(path, f"{where}: epoch {value!r} is not a whole number")
    if abs(number) >= MAX_EPOCH:
        raise TrainingLogError(path, f"{where}: epoch {value!r} is out of range (an epoch or "
                                     "step must be below 2**53 in magnitude)")
    return int(number)


def _text(path: Path, encoding: str) -> str:
    """The log's text; a file that is not UTF-8 is a :class:`TrainingLogError`."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise TrainingLogError(path, f"is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _read_csv(path: Path) -> dict[str, dict[int, float]]:
    """Columns of a CSV log. Each row costs the cells it has (a row shorter than a wide
    header is not padded to it), so the time grows with the file's size, not header × rows."""
    text = _text(path, "utf-8-sig")
    lines = text.splitlines()
    try:  # the first line's first 4 kB tell the separator
        dialect = csv.Sniffer().sniff(lines[0][:4096] if lines else "", delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(lines, delimiter=delimiter)
    fields = [f.strip() for f in next(reader, [])]
    if "epoch" not in fields:
        raise TrainingLogError(path, f"no 'epoch' column (columns: {', '.join(fields) or 'none'})")
    at = fields.index("epoch")
    columns: dict[str, dict[int, float]] = {f: {} for f in fields if f not in _INDEX_COLUMNS}
    for line, row in enumerate(reader, start=2):
        if len(row) <= at or not row[at].strip():
            continue  # Lightning rows logged outside an epoch, blank lines
        epoch = _epoch(row[at].strip(), path, f"line {line}")
        for name, cell in zip(fields, row):  # the cells the row has; later duplicates win
            cell = cell.strip()
            if cell != "" and name in columns:
                columns[name][epoch] = _number(cell, path, f"line {line}, column {name}")
    return columns


def _read_json(path: Path) -> dict[str, dict[int, float]]:
    try:
        data = json.loads(_text(path, "utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainingLogError(path, f"not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("history"), dict):
        data = data["history"]
    columns: dict[str, dict[int, float]] = {}
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            raise TrainingLogError(path, "history lists have different lengths")
        n = lengths.pop() if lengths else 0
        epochs = ([_epoch(e, path, "epoch list") for e in data["epoch"]] if "epoch" in data
                  else list(range(n)))
        for name, values in data.items():
            if name not in _INDEX_COLUMNS:
                columns[name] = {e: _num_json(v, path, name) for e, v in zip(epochs, values)
                                 if v is not None}
        return columns
    if isinstance(data, list) and all(isinstance(r, dict) and "epoch" in r for r in data):
        for row in data:
            for name, value in row.items():
                if name not in _INDEX_COLUMNS and value is not None:
                    epoch = _epoch(row["epoch"], path, "epoch")
                    columns.setdefault(name, {})[epoch] = _num_json(value, path, name)
        return columns
    raise TrainingLogError(path, "JSON is neither a Keras history ({name: [value per epoch]}) "
                                 "nor a list of per-epoch objects with an 'epoch' key")


def _num_json(value, path: Path, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrainingLogError(path, f"{name}: {value!r} is not a number")
    return float(value)


def _read_tensorboard(path: Path) -> dict[str, dict[int, float]]:
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
        from tensorboard.util import tensor_util
    except ImportError:
        raise TrainingLogError(path, "reading TensorBoard event files needs the 'tensorboard' "
                                     f"package: {install_hint('tensorboard')}") from None
    root = path if path.is_dir() else path.parent
    if path.is_dir():
        folders = sorted({f.parent for f in path.rglob(f"{TB_PREFIX}*") if f.is_file()})
    else:
        folders = [path]
    columns: dict[str, dict[int, float]] = {}
    for folder in folders:
        acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
        acc.Reload()
        rel = "" if folder == root or not path.is_dir() else folder.relative_to(root).as_posix()
        tags = acc.Tags()
        events: dict[str, list[tuple[int, float, float]]] = {}
        for tag in tags.get("scalars", []):
            events[tag] = [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)]
        for tag in tags.get("tensors", []):
            if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
                continue
            events[tag] = [(e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto)))
                           for e in acc.Tensors(tag)]
        to_epoch = _step_to_epoch(events.pop("epoch", None), folder)
        for tag, rows in events.items():
            name = f"{rel}/{tag}" if rel else tag
            columns[name] = {to_epoch(step): value for step, _, value in sorted(rows)
                             if to_epoch(step) is not None}
    if not folders:
        raise TrainingLogError(path, "no TensorBoard event files found")
    return columns


def _step_to_epoch(epoch_rows, path: Path):
    """Step → epoch. Without an ``epoch`` tag the step is the epoch (Keras); with one
    (Lightning logs ``epoch`` at each global step) a step belongs to the epoch last logged at
    or before it (steps before the first ``epoch`` entry: ``None``, dropped)."""
    if not epoch_rows:
        return lambda step: step
    rows = sorted(epoch_rows)
    steps = [step for step, _, _ in rows]
    epochs = [_epoch(round(value) if math.isfinite(value) else value, path, f"step {step}")
              for step, _, value in rows]

    def to_epoch(step):
        i = bisect.bisect_right(steps, step) - 1
        return epochs[i] if i >= 0 else None
    return to_epoch


def _find_log(path: Path) -> tuple[str, Path]:
    if path.is_dir():
        if any(f.is_file() for f in path.rglob(f"{TB_PREFIX}*")):
            return "tensorboard", path
        csvs = sorted(path.rglob("metrics.csv"))
        if len(csvs) == 1:
            return "csv", csvs[0]
        raise TrainingLogError(path, "folder holds no TensorBoard event files and no single "
                                     f"metrics.csv ({len(csvs)} found); give the file itself")
    if path.name.startswith(TB_PREFIX):
        return "tensorboard", path
    if path.suffix.lower() == ".json":
        return "json", path
    return "csv", path


def store_metric_names(metrics: Metrics, path: str | os.PathLike) -> Metrics:
    """``metrics`` renamed for the store by the rules of the module docstring (*In the store*).

    Args:
        metrics: from :func:`read_training_log`.
        path: the log, for messages.

    Raises:
        TrainingLogError: two names that become one (both named).
    """
    out: Metrics = {}
    origin: dict[str, str] = {}
    for name, values in metrics.items():
        safe = name
        if name not in METRIC_NAMES:
            safe = _UNSAFE_CHARS.sub("_", name)
            if not safe or not (safe[0].isalnum() or safe[0] == "_") or \
                    safe.casefold() in STORE_NAMES:
                safe = f"log_{safe}"
        key = safe.casefold()  # one array per name on case-insensitive file systems too
        if key in origin:
            raise TrainingLogError(path, f"columns {origin[key]!r} and {name!r} would both be "
                                         f"stored as {safe!r}; rename one")
        origin[key] = name
        out[safe] = values
    return out


def read_training_log(path: str | os.PathLike, *, epoch_offset: int = 0) -> Metrics:
    """Per-epoch metrics of one training log (format detected from the path).

    Args:
        path: a CSV log (Keras ``CSVLogger``, Lightning or nasprobe ``metrics.csv``), a
            Keras history ``.json``, a TensorBoard event file, or a folder holding event files
            or exactly one ``metrics.csv``.
        epoch_offset: added to every epoch (``1`` for Keras ``ModelCheckpoint`` names).

    Returns:
        ``{name: {epoch: value}}`` in nasprobe's names (module docstring); NaN values
            are kept (a diverged epoch is information), empty cells are not.

    Raises:
        TrainingLogError: missing file, unknown layout, or a cell that is not a number.
    """
    path = Path(path)
    if not path.exists():
        raise TrainingLogError(path, "no such file or folder")
    kind, found = _find_log(path)
    columns = {"tensorboard": _read_tensorboard, "json": _read_json, "csv": _read_csv}[kind](found)
    metrics = merge_columns(columns, epoch_offset)
    if not metrics:
        raise TrainingLogError(path, "no metric values found")
    return metrics
