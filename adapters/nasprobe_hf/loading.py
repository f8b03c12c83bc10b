"""Loading a checkpoint folder the way transformers does: its auto classes, its own loading.

The architecture comes from ``config.json`` through ``AutoConfig`` and the model class the
configuration names (``architectures``, e.g. ``GPT2LMHeadModel``), when that class is part of
transformers itself; else the base model ``AutoModel`` maps the configuration to. The weights
are read by ``from_pretrained`` (so its renames of legacy tensor names and its tying of heads
apply), from safetensors only unless ``trust_pickle``; ``trust_remote_code`` is never set and
nothing is downloaded (``local_files_only``). A folder whose tensors leave part of the model
unset or do not fit it is refused, never filled with random values.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModel, PreTrainedModel

from nasprobe.errors import CheckpointError

from .folders import FolderConfig, read_config

__all__ = ["model_class", "load_model", "quiet"]


@contextlib.contextmanager
def quiet():
    """Silence transformers' progress bars, notices and warnings for the block."""
    level = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            logging.getLogger("transformers").setLevel(logging.ERROR)
            yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _config(info: FolderConfig):
    try:
        with quiet():
            return AutoConfig.from_pretrained(info.folder, local_files_only=True,
                                              trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - unknown model_type, damaged fields...
        raise CheckpointError(info.folder / "config.json", f"transformers "
                              f"{transformers.__version__} cannot read it "
                              f"({exc.__class__.__name__}: {str(exc)[:300]})") from exc


def model_class(config) -> type[PreTrainedModel]:
    """The class that builds ``config``'s model: the first of ``config.architectures`` that
    transformers defines, else the base model of its type (``AutoModel``).

    Raises:
        CheckpointError: transformers has no model class for the configuration.
    """
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(name), None)
        if (isinstance(cls, type) and issubclass(cls, PreTrainedModel)
                and cls.__module__.startswith("transformers.")):
            return cls
    try:
        return AutoModel._model_mapping[type(config)]
    except KeyError:
        raise CheckpointError(getattr(config, "_name_or_path", "?"), "transformers has no model "
                              f"class for model_type {config.model_type!r}") from None


def load_model(path: Path, trust_pickle: bool = False) -> PreTrainedModel:
    """The float32 model of one checkpoint folder, in eval mode, with its saved weights.

    Args:
        path: the checkpoint folder (or a weight file in it).
        trust_pickle: allow pickled ``pytorch_model.bin`` weights when no safetensors exist.

    Raises:
        CheckpointError: see :func:`nasprobe_hf.folders.read_config`; a model class
            transformers does not have; tensors missing, unexpected or of another shape.
    """
    info = read_config(path, trust_pickle)
    config = _config(info)
    cls = model_class(config)
    try:
        with quiet():
            model, report = cls.from_pretrained(
                info.folder, config=config, local_files_only=True, trust_remote_code=False,
                use_safetensors=True if info.safetensors else None, dtype=torch.float32,
                output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - safetensors, torch and transformers errors
        raise CheckpointError(info.folder, f"transformers cannot load it "
                              f"({exc.__class__.__name__}: {str(exc)[:300]})") from exc
    for kind in ("missing_keys", "mismatched_keys", "unexpected_keys"):
        keys = sorted(str(k) for k in report.get(kind) or ())
        if keys and kind != "unexpected_keys":
            what = "missing" if kind == "missing_keys" else "of another shape than the config's"
            raise CheckpointError(info.folder, f"{len(keys)} tensors of {cls.__name__} are "
                                  f"{what} ({', '.join(keys[:4])}); refused rather than "
                                  "probing random values")
    model.config.use_cache = False
    return model.eval()
