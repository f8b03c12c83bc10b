"""``save_pretrained`` folders, read without importing transformers (cheap enough for ``claims``).

A Hugging Face checkpoint is a folder holding ``config.json`` and the weights: one
``model.safetensors``, or shards listed by ``model.safetensors.index.json`` (pickled
``pytorch_model.bin`` files in older folders). The ``Trainer`` writes one such folder per saved
step, ``checkpoint-N/``, inside its output folder: that output folder is one run and N the step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nasprobe.errors import CheckpointError

__all__ = ["SAFE_FILES", "PICKLE_FILES", "is_pretrained_folder", "checkpoint_folder",
           "is_weight_file", "is_final_model",
           "FolderConfig", "read_config"]

#: Weight files of a folder that load without running code.
SAFE_FILES = ("model.safetensors", "model.safetensors.index.json")
#: Pickled weight files (``torch.load``): read only with ``--trust-pickle``.
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
#: What the Trainer writes into every ``checkpoint-N/`` besides the model.
TRAINER_FILES = ("trainer_state.json",)


def _holds_model(folder: Path) -> bool:
    """``config.json`` with weights, or with a Trainer's ``trainer_state.json`` (a checkpoint
    whose weights are missing is claimed, so that reading it says so)."""
    if not (folder / "config.json").is_file():
        return False
    return any((folder / f).is_file() for f in SAFE_FILES + PICKLE_FILES + TRAINER_FILES)


def is_pretrained_folder(path: Path) -> bool:
    """Whether ``path`` is one checkpoint: a folder with ``config.json`` and weight files (or
    the ``trainer_state.json`` of a Trainer checkpoint).

    A folder that also has such checkpoints as sub-folders (a ``Trainer`` output folder after
    ``trainer.save_model()``) is a run, not a checkpoint: its own top-level copy has no step.
    """
    path = Path(path)
    if not path.is_dir() or not _holds_model(path):
        return False
    return not any(q.is_dir() and _holds_model(q) for q in path.iterdir())


def checkpoint_folder(path: Path) -> Path:
    """The checkpoint folder of ``path``: itself, or the folder of a weight file given."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def _top_weights(path: Path) -> bool:
    path = Path(path)
    return (path.name in SAFE_FILES + PICKLE_FILES and path.is_file()
            and (path.parent / "config.json").is_file())


def is_weight_file(path: Path) -> bool:
    """A ``model.safetensors`` (or its shard index, or a pickled ``pytorch_model.bin``) with
    ``config.json`` beside it, in a checkpoint folder: the checkpoint is that folder."""
    return _top_weights(path) and is_pretrained_folder(Path(path).parent)


def is_final_model(path: Path) -> bool:
    """The weights a ``Trainer`` saves at the top of its output folder, beside the
    ``checkpoint-N/`` folders (``trainer.save_model()``): they have no step of their own."""
    return _top_weights(path) and not is_pretrained_folder(Path(path).parent)


@dataclass(frozen=True)
class FolderConfig:
    """What ``config.json`` and the file list of a checkpoint folder say.

    Attributes:
        folder: the checkpoint folder.
        config: ``config.json`` as parsed JSON.
        safetensors: whether safetensors weights are there (else only pickled ``.bin``).
    """

    folder: Path
    config: dict
    safetensors: bool

    @property
    def model_type(self) -> str:
        """``config.json``'s ``model_type`` (``"vit"``, ``"gpt2"``...)."""
        return str(self.config.get("model_type", ""))


def read_config(path: Path, trust_pickle: bool = False) -> FolderConfig:
    """Read and check a checkpoint folder's ``config.json`` and weight files.

    Args:
        path: the folder, or a weight file in it.
        trust_pickle: allow a folder whose weights are only pickled ``pytorch_model.bin``.

    Raises:
        CheckpointError: no or unreadable ``config.json``; a configuration that needs code
            shipped with the checkpoint (``auto_map``: nasprobe never runs it); no weights; or
            pickled weights only, without ``trust_pickle``.
    """
    folder = checkpoint_folder(path)
    cfg_path = folder / "config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(folder, "no config.json: not a save_pretrained folder") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(cfg_path, f"cannot be read as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(cfg_path, "is not a JSON object")
    if config.get("auto_map"):
        names = ", ".join(sorted(config["auto_map"]))
        raise CheckpointError(cfg_path, f"needs code shipped with the checkpoint (auto_map: "
                              f"{names}); nasprobe never runs it (trust_remote_code stays off)")
    if not config.get("model_type"):
        raise CheckpointError(cfg_path, "has no model_type: transformers cannot tell the "
                              "architecture")
    safe = any((folder / f).is_file() for f in SAFE_FILES)
    if not safe:
        if not any((folder / f).is_file() for f in PICKLE_FILES):
            raise CheckpointError(folder, "holds no weights (model.safetensors or its "
                                  "model.safetensors.index.json shards)")
        if not trust_pickle:
            raise CheckpointError(folder, "holds only pickled weights (pytorch_model.bin), "
                                  "which can run code when loaded; convert them to safetensors "
                                  "or pass --trust-pickle")
    return FolderConfig(folder, config, safe)
