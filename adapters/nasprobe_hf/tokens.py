"""The checkpoint's own tokenizer, for text probes (``nasprobe probe RUN --probe lines.txt``).

The tokenizer is what ``tokenizer.save_pretrained`` (or the ``Trainer``) wrote into the
checkpoint folder, read by transformers' ``AutoTokenizer`` from local files only, never with
``trust_remote_code``. Each line is tokenised alone (special tokens as the tokenizer adds them,
truncated to ``max_length``), then padded on the right here, so that neither the tokenizer's
pad token (GPT-2's has none) nor its padding side matters. The hash of the tokenizer files
identifies the tokenisation: a later checkpoint with other files is refused by the source.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from nasprobe.contract import TokenizedText

from .export import ModelInput
from .loading import quiet

__all__ = ["TOKENIZER_FILES", "tokenizer_files", "fingerprint", "load_tokenizer", "tokenize"]

#: The files a saved tokenizer consists of (any that exist in a checkpoint folder).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
#: Files whose presence alone makes a tokenizer (the others only accompany one).
_CORE_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
               "sentencepiece.bpe.model")


def tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files present in a checkpoint ``folder``, in :data:`TOKENIZER_FILES` order."""
    return [Path(folder) / f for f in TOKENIZER_FILES if (Path(folder) / f).is_file()]


def fingerprint(folder: Path) -> str:
    """``sha256:<hex>`` of the names and bytes of the tokenizer files in ``folder``; ``""``
    when it has none."""
    files = tokenizer_files(folder)
    if not files:
        return ""
    h = hashlib.sha256()
    for f in files:
        data = f.read_bytes()
        h.update(f"{f.name}:{len(data)}\n".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


def load_tokenizer(folder: Path):
    """The tokenizer saved in a checkpoint folder (transformers' ``AutoTokenizer``).

    Raises:
        ValueError: the folder holds no tokenizer files, or transformers cannot read them
            (the message names the folder).
    """
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not any((folder / f).is_file() for f in _CORE_FILES):
        raise ValueError(f"checkpoint {folder} has no tokenizer (none of "
                         f"{', '.join(_CORE_FILES[:3])}...; save it with "
                         "tokenizer.save_pretrained into each checkpoint folder), so the text "
                         "cannot be tokenised; give token ids as an integer .npy (N, T) instead")
    try:
        with quiet():
            return AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                                 trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - missing classes, remote code, damaged files
        raise ValueError(f"the tokenizer of checkpoint {folder} cannot be read "
                         f"({exc.__class__.__name__}: {str(exc)[:300]})") from exc


def tokenize(folder: Path, lines: Sequence[str], max_length: int | None,
             spec: ModelInput) -> TokenizedText:
    """Tokenise ``lines`` with the tokenizer of checkpoint ``folder`` for a model taking ``spec``.

    Args:
        folder: the checkpoint folder whose tokenizer is used.
        lines: the examples (non-empty strings).
        max_length: tokens per example (truncated, and every row padded to it); None: padded
            to the longest example.
        spec: what the model takes (:func:`nasprobe_hf.export.model_input`).

    Returns:
        ids ``(N, T)`` int64 (0 on padding), mask ``(N, T)`` int8 and the tokenizer's class
        and :func:`fingerprint`.

    Raises:
        ValueError: a model that takes no token ids or no attention mask; no tokenizer; a
            length beyond the model's positions (``max_position_embeddings``).
    """
    if not spec.tokens:
        raise ValueError(f"the model takes {spec.name} (images), not token ids: a text probe "
                         "needs a token model")
    if not spec.masked:
        raise ValueError("the model's forward takes no attention_mask, so padding could not be "
                         "masked; give token ids of equal length as an integer .npy instead")
    top = spec.max_tokens
    if max_length is not None and top and max_length > top:
        raise ValueError(f"--max-length {max_length} exceeds the {top} positions the model "
                         "takes (max_position_embeddings)")
    tok = load_tokenizer(folder)
    with quiet():
        rows = tok(list(lines), add_special_tokens=True, truncation=max_length is not None,
                   max_length=max_length, padding=False)["input_ids"]
    longest = max(len(r) for r in rows)
    width = max_length if max_length is not None else longest
    if top and width > top:
        k = max(range(len(rows)), key=lambda i: len(rows[i]))
        raise ValueError(f"example {k + 1} has {longest} tokens, more than the {top} positions "
                         f"the model takes: pass --max-length {top} or less")
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros((len(rows), width), np.int8)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return TokenizedText(ids, mask, f"{type(tok).__name__} {fingerprint(folder)}")
