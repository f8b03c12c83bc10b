"""Reading PyTorch checkpoint files: state dicts in their usual wrappings, and self-contained
programs (TorchScript archives, ``torch.export`` ``.pt2`` files, pickled modules).

Security (see the README's *Security* section): pickles are always read with
``torch.load(..., weights_only=True)``; a file that needs more than plain tensors and containers
is refused with a :class:`CheckpointError` that names ``--trust-pickle``, and only then is it
read with ``weights_only=False``. TorchScript archives and ``torch.export`` ``.pt2`` files are
programs: loading them unpickles Python objects with ``weights_only=False`` inside torch itself
(``torch.export.load`` falls back to it; TorchScript runs its own code), so both are opened only
with ``--trust-pickle``. Which loader a file needs is decided from its contents, never from its
name: an ``epoch_003.pt`` that is really a ``.pt2`` archive is refused just the same.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from nasprobe.errors import CheckpointError, NasprobeError
from nasprobe.frameworks.model_spec import call_model_spec, parse_model_spec

__all__ = [
    "StateDict",
    "load_file",
    "state_dict_of",
    "fit_state_dict",
    "parse_model_spec",
    "build_model",
    "archive_kind",
    "check_trusted",
]

#: A flat mapping from parameter/buffer names (PyTorch module paths) to tensors.
StateDict = dict[str, torch.Tensor]

#: Keys under which training scripts nest the state dict, tried in order.
NESTING_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")

#: Prefixes that wrappers add to every key: DDP/DataParallel and ``torch.compile``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

TRUST_HINT = ("it holds Python objects besides plain tensors, and reading those can run code; "
              "pass --trust-pickle (trust_pickle=True) only if you trust this file")


PROGRAM_HINT = ("is a {what}: a program, not only weights, and loading it runs Python code "
                "stored in the file (torch unpickles it with weights_only=False); pass "
                "--trust-pickle (trust_pickle=True) only if you trust this file")

_PROGRAM_NAMES = {"torchscript": "TorchScript archive", "pt2": "torch.export program (.pt2)"}


def _zip_members(path: Path) -> list[str] | None:
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return None


def archive_kind(path: Path) -> str:
    """``"torchscript"``, ``"pt2"``, ``"safetensors"`` or ``"pickle"`` for a checkpoint file.

    Decided from the file's contents (zip members), never from its name, except that a file
    that is not a zip archive and is named ``.safetensors`` is a safetensors file. A ``.pt2``
    name on a file that is not a ``.pt2`` archive gives ``"pickle"`` (read safely, then refused
    if it is not a plain checkpoint).
    """
    names = _zip_members(path)
    if names is None:
        return "safetensors" if path.name.lower().endswith(".safetensors") else "pickle"
    # torch's own test (serialization._is_torchscript_zip): a record constants.pkl beside data.pkl
    records = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if ("archive_format" in records or any(r.endswith("models/model.json") for r in records)
            or any(n.endswith("/archive_format") for n in names)):
        return "pt2"
    if "constants.pkl" in records or any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "pickle"


def check_trusted(path: Path, kind: str, trust_pickle: bool) -> None:
    """Refuse a TorchScript archive or ``.pt2`` program unless ``trust_pickle``.

    Raises:
        CheckpointError: names the file, what it is and ``--trust-pickle``.
    """
    if kind in _PROGRAM_NAMES and not trust_pickle:
        raise CheckpointError(path, PROGRAM_HINT.format(what=_PROGRAM_NAMES[kind]))


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise CheckpointError(path, f"refused to unpickle: {TRUST_HINT} "
                                  f"({str(exc).splitlines()[-1].strip()[:200]})") from None
    except Exception as exc:
        raise CheckpointError(path, f"not a readable PyTorch checkpoint "
                              f"({exc.__class__.__name__}: {str(exc)[:300]})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(path, f"cannot be unpickled even with --trust-pickle "
                              f"({exc.__class__.__name__}: {str(exc)[:300]})") from exc


def load_file(path: str | Path, trust_pickle: bool = False) -> Any:
    """The object stored in one checkpoint file, on the CPU.

    Returns:
        A ``dict`` (state dict or a dict nesting one) for pickles and ``.safetensors``; a
        ``torch.jit.ScriptModule`` for TorchScript archives; a ``torch.export.ExportedProgram``
        for ``.pt2`` files; an ``nn.Module`` for a pickled module. All but the first need
        ``trust_pickle``.

    Raises:
        CheckpointError: unreadable file; a pickle with code objects, a TorchScript archive or a
            ``.pt2`` program without ``trust_pickle``.
    """
    path = Path(path)
    kind = archive_kind(path)
    check_trusted(path, kind, trust_pickle)
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file as load_safetensors
            return load_safetensors(str(path), device="cpu")
        if kind == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "switch to torch.export"
                return torch.jit.load(str(path), map_location="cpu")
        if kind == "pt2":
            return torch.export.load(str(path))
    except Exception as exc:
        raise CheckpointError(path, f"not a readable {kind} file "
                              f"({exc.__class__.__name__}: {str(exc)[:300]})") from exc
    return _torch_load(path, trust_pickle)


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) for k in obj)
            and any(isinstance(v, torch.Tensor) for v in obj.values())
            and all(isinstance(v, (torch.Tensor, int, float)) for v in obj.values()))


def state_dict_of(obj: Any, path: str | Path) -> StateDict:
    """The flat state dict inside a loaded checkpoint object (see :func:`load_file`).

    Unwraps dicts nesting it under ``state_dict``, ``model_state_dict``, ``model`` (also a
    pickled module there), Lightning checkpoints, TorchScript modules and exported programs.
    Non-tensor entries (e.g. ``_metadata``) are dropped. Keys are not yet fitted to a model
    (see :func:`fit_state_dict`).

    Raises:
        CheckpointError: no state dict could be found (names the file and the keys seen).
    """
    if isinstance(obj, torch.export.ExportedProgram):
        return {k: v for k, v in obj.state_dict.items() if isinstance(v, torch.Tensor)}
    if isinstance(obj, nn.Module):  # also torch.jit.ScriptModule
        return dict(obj.state_dict())
    if _is_state_dict(obj):
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if isinstance(obj, Mapping):
        for key in NESTING_KEYS:
            if key in obj:
                inner = obj[key]
                if isinstance(inner, nn.Module) or _is_state_dict(inner) or isinstance(inner, Mapping):
                    try:
                        return state_dict_of(inner, path)
                    except CheckpointError:
                        continue
        keys = ", ".join(map(repr, list(obj)[:12]))
        raise CheckpointError(path, f"no state dict found: a dict with keys {keys}; expected "
                              "tensors, or one nested under 'state_dict', 'model_state_dict' "
                              "or 'model'")
    raise CheckpointError(path, f"no state dict found in a {type(obj).__name__}")


def _strip(sd: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _best_prefix(keys: list[str], wanted: set[str]) -> str | None:
    """The key prefix (ending in ``.``) that maps most checkpoint keys onto ``wanted``."""
    votes: Counter[str] = Counter()
    for k in keys:
        parts = k.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in wanted:
                votes[".".join(parts[:i]) + "."] += 1
    return votes.most_common(1)[0][0] if votes else None


def fit_state_dict(sd: StateDict, expected: Mapping[str, torch.Size], path: str | Path
                   ) -> StateDict:
    """Rename a checkpoint's keys to the model's and check every tensor's shape.

    Strips wrapper prefixes (DDP ``module.``, ``torch.compile``'s ``_orig_mod.``) and, when keys
    still do not fit, the one common prefix (e.g. Lightning's ``model.``) that maps the most
    keys onto the model's; keys outside that prefix (a Lightning module's other attributes,
    e.g. a loss's buffers) are then ignored.

    Args:
        sd: the checkpoint's flat state dict.
        expected: the model's state-dict key → shape (PyTorch layout).
        path: the file, for messages.

    Returns:
        The state dict with exactly the model's keys (``num_batches_tracked`` may be missing).

    Raises:
        CheckpointError: a missing or unexpected tensor, or a wrong shape; names the tensor.
    """
    wanted = set(expected)
    for prefix in WRAPPER_PREFIXES:
        while sd and all(k.startswith(prefix) for k in sd):
            sd = _strip(sd, prefix)
    if not set(sd) >= {k for k in wanted if not k.endswith("num_batches_tracked")}:
        prefix = _best_prefix(list(sd), wanted)
        if prefix is not None and len(_strip(sd, prefix).keys() & wanted) > len(sd.keys() & wanted):
            sd = _strip(sd, prefix)
            for p in WRAPPER_PREFIXES:
                while sd and all(k.startswith(p) for k in sd):
                    sd = _strip(sd, p)
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(path, f"tensor {missing[0]!r} of the model is missing from the "
                              f"checkpoint ({len(missing)} missing in all; the checkpoint has "
                              f"e.g. {sorted(sd)[:4]}): another architecture?")
    unexpected = [k for k in sd if k not in wanted]
    if unexpected:
        raise CheckpointError(path, f"tensor {unexpected[0]!r} in the checkpoint is not in the "
                              f"model ({len(unexpected)} unexpected in all): another "
                              "architecture?")
    for k, shape in expected.items():
        if k in sd and tuple(sd[k].shape) != tuple(shape):
            raise CheckpointError(path, f"tensor {k!r} has shape {tuple(sd[k].shape)} in the "
                                  f"checkpoint but {tuple(shape)} in the model: another "
                                  "architecture?")
    return sd


def build_model(model: str | nn.Module | Callable[[], nn.Module]) -> nn.Module:
    """The model an option names: an ``nn.Module``, a callable returning one, or a spec string
    for :func:`parse_model_spec`.

    Raises:
        NasprobeError: the module or callable cannot be found, or does not give an nn.Module.
    """
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, str):
        built = call_model_spec(model)
    elif callable(model):
        built = model()
    else:
        raise NasprobeError(f"model must be MODULE:CALLABLE, a callable or an nn.Module, "
                            f"not {type(model).__name__}")
    if not isinstance(built, nn.Module):
        raise NasprobeError(f"--model {model!r} returned a {type(built).__name__}, "
                            "not a torch.nn.Module")
    return built
