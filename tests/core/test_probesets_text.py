"""Text probe sets: lines read and tokenised through the source's hook, padding fed as
``PAD_ID`` and kept in the mask, the hash covering text and tokenisation, clear refusals."""

import zlib

import numpy as np
import pytest

from nasprobe.contract import PAD_ID, TokenizedText, Tokenizing
from nasprobe.errors import ProbeSetError
from nasprobe.probesets import is_text_probe, load_text_probe


class WordTokenizer:
    """A stand-in source hook: each word becomes an id (crc32 mod 1000), rows right-padded."""

    def __init__(self, name="words", pad=0, left=False, drop_word=None):
        self.name, self.pad, self.left, self.drop_word = name, pad, left, drop_word
        self.seen = None

    def tokenize(self, lines, max_length):
        self.seen = list(lines)
        rows = [[zlib.crc32(w.encode()) % 1000 for w in line.split() if w != self.drop_word]
                for line in lines]
        rows = [r[:max_length] if max_length else r for r in rows]
        width = max_length or max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            sl = slice(width - len(r), width) if self.left else slice(0, len(r))
            ids[i, sl], mask[i, sl] = r, 1
        return TokenizedText(ids, mask, self.name)


def write(tmp_path, text, name="lines.txt"):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return p


def test_lines_are_tokenised_and_padding_is_masked(tmp_path):
    path = write(tmp_path, "a b c\r\n\n   \nd\ne f g h\n")
    hook = WordTokenizer()
    assert isinstance(hook, Tokenizing) and is_text_probe(path)
    ps = load_text_probe(path, hook.tokenize, None)
    assert hook.seen == ["a b c", "d", "e f g h"]  # blank lines skipped, \r dropped
    assert (ps.size, ps.shape, ps.layout, ps.labels) == (3, (4,), "tokens", None)
    want = hook.tokenize(hook.seen, None)
    np.testing.assert_array_equal(ps.mask, want.mask.astype(bool))
    x = ps.read(0, 3)
    assert x.dtype == np.int64
    np.testing.assert_array_equal(x, np.where(want.mask == 1, want.ids, PAD_ID))
    batches = list(ps.batches(2))
    assert [b[0] for b in batches] == [0, 2] and batches[1][1].shape == (1, 4)


def test_max_length_truncates_and_pads_to_it(tmp_path):
    path = write(tmp_path, "a b c\nd\n")
    ps = load_text_probe(path, WordTokenizer().tokenize, 6)
    assert ps.shape == (6,) and ps.mask.sum(axis=1).tolist() == [3, 1]
    ps = load_text_probe(path, WordTokenizer().tokenize, 2)
    assert ps.shape == (2,) and ps.mask.sum(axis=1).tolist() == [2, 1]


def test_hash_covers_text_tokenizer_and_length_not_pad_values(tmp_path):
    path = write(tmp_path, "a b c\nd\n")
    base = load_text_probe(path, WordTokenizer().tokenize, None).sha256
    assert load_text_probe(path, WordTokenizer(pad=7).tokenize, None).sha256 == base
    assert load_text_probe(path, WordTokenizer("other").tokenize, None).sha256 != base
    assert load_text_probe(path, WordTokenizer().tokenize, 5).sha256 != base
    other = write(tmp_path, "a b c\ne\n", "other.txt")
    assert load_text_probe(other, WordTokenizer().tokenize, None).sha256 != base


@pytest.mark.parametrize("text,hook,dtype,match", [
    ("a\n", None, np.int64, "offer no tokenizer"),
    ("a\n", None, np.float32, "offer no tokenizer"),  # a plain ONNX file: input fed as float
    ("a\n", WordTokenizer(), np.float32, "not token ids"),
    ("\n  \n", WordTokenizer(), np.int64, "holds no example"),
    ("a b\nc d e\n", WordTokenizer(left=True), np.int64, "right padding"),
    ("a b\nx\n", WordTokenizer(drop_word="x"), np.int64, "line 2 gives no tokens"),
    (b"a\xff\n", WordTokenizer(), np.int64, "not UTF-8"),
])
def test_refusals_name_the_file(tmp_path, text, hook, dtype, match):
    path = write(tmp_path, text)
    with pytest.raises(ProbeSetError, match=match) as err:
        load_text_probe(path, None if hook is None else hook.tokenize, None, dtype)
    assert str(path) in str(err.value)


def test_a_tokenizer_error_becomes_a_probe_set_error(tmp_path):
    path = write(tmp_path, "a\n")

    def refuse(lines, max_length):
        raise ValueError("checkpoint X has no tokenizer")

    with pytest.raises(ProbeSetError, match="has no tokenizer") as err:
        load_text_probe(path, refuse, None)
    assert str(path) in str(err.value)
    with pytest.raises(ProbeSetError, match="at least 1"):
        load_text_probe(path, WordTokenizer().tokenize, 0)
