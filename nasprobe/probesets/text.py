"""Text probe sets: a ``.txt`` file, one example per line, tokenised by the checkpoints' own
tokenizer (docs/cli.md, "Text probes").

The file is read as UTF-8; a trailing carriage return is dropped from each line, and lines that are
empty or only whitespace are skipped (they are not examples). The remaining lines go, in
order, to the run's source (:class:`nasprobe.contract.Tokenizing`), which tokenises them with
the tokenizer of the run's first checkpoint: each line truncated to ``max_length`` tokens and
padded on the right to ``max_length``, or without ``max_length`` to the longest line. The ids
are fed with :data:`nasprobe.contract.PAD_ID` at padding positions (the source's graph takes
that as attention mask 0), and the probe set's :attr:`~nasprobe.probesets.ProbeSet.mask` keeps
the padding out of every statistic. ``sha256`` covers the kept lines, the tokenizer's
description, ``max_length`` and the ids and mask that result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nasprobe.contract import PAD_ID, TokenizedText
from nasprobe.errors import NasprobeError, ProbeSetError

from .probeset import ProbeSet

__all__ = ["TEXT_SUFFIXES", "is_text_probe", "read_lines", "TextSource", "load_text_probe"]

#: File name endings (lower case) of text probe sets.
TEXT_SUFFIXES: tuple[str, ...] = (".txt",)
_HASH_TAG = b"nasprobe-probeset-text-v1\n"


def is_text_probe(path) -> bool:
    """Whether ``path`` names a text probe set (a file ending in ``.txt``)."""
    return str(path).lower().endswith(TEXT_SUFFIXES) and not Path(path).is_dir()


def read_lines(path: Path) -> tuple[list[str], list[int]]:
    """The examples of a text file and their line numbers (1-based), blank lines skipped.

    Raises:
        ProbeSetError: the file cannot be read or is not UTF-8.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ProbeSetError(path, "no such probe file") from None
    except UnicodeDecodeError as exc:
        raise ProbeSetError(path, f"is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ProbeSetError(path, f"cannot be read ({exc.strerror or exc})") from None
    lines, numbers = [], []
    for i, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if line.strip():
            lines.append(line)
            numbers.append(i)
    return lines, numbers


@dataclass
class TextSource:
    """The token ids of a tokenised text, ``(N, T)`` in the model's integer type, with
    :data:`~nasprobe.contract.PAD_ID` at padding positions."""

    ids: np.ndarray

    @property
    def count(self) -> int:
        """Number of examples (lines)."""
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape: ``(T,)``."""
        return tuple(int(s) for s in self.ids.shape[1:])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Examples ``start:stop`` as a new ``(n, T)`` array."""
        return np.array(self.ids[start:stop])


def _checked(path: Path, tok: TokenizedText, numbers: list[int], max_length: int | None,
             dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The ids and bool mask of ``tok``, checked against the contract (see the module)."""
    ids, mask = np.asarray(tok.ids), np.asarray(tok.mask)
    n = len(numbers)
    if ids.ndim != 2 or ids.shape != mask.shape or len(ids) != n or ids.dtype.kind not in "iu":
        raise ProbeSetError(path, f"the tokenizer returned ids {ids.dtype} {ids.shape} and a "
                            f"mask {mask.shape}: expected integer ids ({n}, T) and a mask alike")
    if not np.isin(mask, (0, 1)).all():
        raise ProbeSetError(path, "the tokenizer's attention mask holds values other than 0/1")
    mask = mask.astype(bool)
    if (mask[:, 1:] > mask[:, :-1]).any():
        raise ProbeSetError(path, "the tokenizer padded on the left; nasprobe needs right "
                            "padding (each row: its tokens, then padding)")
    empty = np.flatnonzero(~mask.any(axis=1)) if mask.shape[1] else np.arange(n)
    if len(empty):
        raise ProbeSetError(path, f"line {numbers[empty[0]]} gives no tokens")
    if max_length is not None and ids.shape[1] != max_length:
        raise ProbeSetError(path, f"the tokenizer padded to {ids.shape[1]} tokens, not to "
                            f"--max-length {max_length}")
    real = ids[mask]
    if real.min() < 0 or real.max() > np.iinfo(dtype).max:
        raise ProbeSetError(path, f"token ids {int(real.min())}..{int(real.max())} do not fit "
                            f"the model's {dtype}")
    return np.where(mask, ids, PAD_ID).astype(dtype), mask


def load_text_probe(path, tokenize, max_length: int | None = None, input_dtype=np.int64,
                    what: str = "the checkpoints") -> ProbeSet:
    """Open a text probe set and tokenise it (see the module docstring).

    Args:
        path: the ``.txt`` file.
        tokenize: the source's :meth:`~nasprobe.contract.Tokenizing.tokenize`, or None when the
            source offers none.
        max_length: ``--max-length``: tokens per example (truncated and padded to it); None:
            pad to the longest line.
        input_dtype: the model input's numpy dtype; it must be an integer type (token ids).
        what: what was probed (the framework), for the message of a source without tokenizer.

    Returns:
        A :class:`ProbeSet` with ``layout="tokens"``, ``shape=(T,)`` and ``mask`` (N, T).

    Raises:
        ProbeSetError: naming the file: a source without a tokenizer; a model that does not
            take token ids; no example; a line without tokens; a tokenizer that fails (its
            message), or returns something outside the contract.
    """
    path = Path(path)
    dtype = np.dtype(np.float32 if input_dtype is None else input_dtype)
    if tokenize is None:  # first: a plain ONNX file's integer input is fed as float32
        raise ProbeSetError(path, f"is a text probe (one example per line), but {what} offer no "
                            "tokenizer (Hugging Face folders with tokenizer files do); give "
                            "the token ids as an (N, T) array instead")
    if dtype.kind not in "iu":
        raise ProbeSetError(path, f"is a text probe (one example per line), but the model takes "
                            f"{dtype} input (images?), not token ids")
    if max_length is not None and int(max_length) < 1:
        raise ProbeSetError(path, f"--max-length must be at least 1, not {max_length}")
    lines, numbers = read_lines(path)
    if not lines:
        raise ProbeSetError(path, "holds no example: every line is empty")
    try:
        tok = tokenize(lines, max_length)
    except NasprobeError:
        raise
    except ValueError as exc:
        raise ProbeSetError(path, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - whatever the tokenizer library raises
        raise ProbeSetError(path, f"cannot be tokenised ({exc.__class__.__name__}: "
                            f"{str(exc)[:300]})") from exc
    ids, mask = _checked(path, tok, numbers, max_length, dtype)
    h = hashlib.sha256(_HASH_TAG)
    for line in lines:
        h.update(line.encode("utf-8") + b"\n")
    h.update(json.dumps({"tokenizer": str(tok.tokenizer), "max_length": max_length,
                         "shape": list(ids.shape), "dtype": dtype.str}).encode())
    h.update(np.ascontiguousarray(ids).tobytes())
    source = TextSource(ids)
    return ProbeSet(path=path, size=source.count, digest=h.hexdigest(), labels=None,
                    shape=source.shape, layout="tokens", mask=mask, source=source)
