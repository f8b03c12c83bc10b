"""Text probes (one example per line) tokenised by the checkpoint's own tokenizer, through the
CLI: the stored statistics equal forward hooks run on each line alone (no padding at all), and
whatever padding the file needs counts nowhere."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

import nasprobe
from nasprobe.cli import main
from nasprobe.job.runtime import forget_notices
from nasprobe.store.layout import group_name
from tests.hf.conftest import STEPS, hooked_nas

WORDS = 60
#: Lines of different lengths (a blank line, skipped, in between); the longest has 9 words.
LINES = ["w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10 w11 w12", "", "w13", "w14 w15 w16 w17 w18",
         "w0 w59 w33 w2 w41 w7"]


def make_tokenizer(pad: str = "[PAD]") -> PreTrainedTokenizerFast:
    """A word-level tokenizer built offline: ``[PAD]`` 0, ``[UNK]`` 1, ``w0``... from 2."""
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(WORDS)}}
    tk = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token=pad)


@pytest.fixture(scope="module")
def text_runs(hf_runs, tmp_path_factory):
    """The bert, gpt2 and llama runs again, each checkpoint with the tokenizer saved into it,
    and the text file."""
    root, runs, _ = hf_runs
    base = tmp_path_factory.mktemp("text")
    out = {}
    for kind in ("bert", "gpt2", "llama", "vit"):
        folder = base / kind
        shutil.copytree(runs[kind][0], folder)
        for step in STEPS:
            make_tokenizer().save_pretrained(folder / f"checkpoint-{step}")
        out[kind] = (folder, runs[kind][1])
    (base / "lines.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return base, out


def probe(*args):
    return CliRunner().invoke(main, ["probe", *map(str, args)])


def reference(model, max_length=None):
    """Per layer: every NAS value of every line, each line run alone (no padding), and the
    per-line maps; per layer with an activation the per-channel counts above zero."""
    tok = make_tokenizer()
    values, maps = {}, {}
    for line in (line for line in LINES if line.strip()):
        ids = tok(line, truncation=max_length is not None, max_length=max_length)["input_ids"]
        for layer, v in hooked_nas(model, np.array([ids], np.int64)).items():
            values.setdefault(layer, []).append(v)
            maps.setdefault(layer, []).append(v)
    return {k: np.concatenate(v) for k, v in values.items()}, maps


def mean_by_position(lines: list[np.ndarray], width: int) -> np.ndarray:
    total, count = np.zeros(width), np.zeros(width)
    for v in lines:
        total[:len(v)] += v
        count[:len(v)] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def check(store, models, width, max_length=None):
    tree = nasprobe.open_store(store)
    ds = tree.to_dataset()
    run = str(ds.run.values[0])
    for step, model in models.items():
        ref, per_line = reference(model, max_length)
        assert sorted(ds.layer.values.tolist()) == sorted(ref)
        for layer, v in ref.items():
            got = ds.sel(run=run, epoch=step, layer=layer)
            assert abs(float(got.nas_mean) - v.mean()) <= 1e-5, (step, layer)
            assert abs(float(got.nas_median) - np.median(v)) <= 1e-5, (step, layer)
            assert abs(float(got.nas_min) - v.min()) <= 1e-5
            assert abs(float(got.nas_max) - v.max()) <= 1e-5
            heat = tree[f"heatmaps/{group_name(layer)}"].to_dataset()
            m = heat["nas_map"].sel(run=run, epoch=step).values
            assert m.shape == (width,)
            np.testing.assert_allclose(m, mean_by_position(per_line[layer], width), atol=1e-5)
            img = heat["nas_image_map"].sel(run=run, epoch=step).values
            for k, line in enumerate(per_line[layer][:len(img)]):
                np.testing.assert_allclose(img[k, :len(line)], line, atol=1e-5)
                assert np.isnan(img[k, len(line):]).all()
    return ds, tree


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_text_probe_matches_hooks_on_real_tokens(text_runs, tmp_path, kind):
    base, runs = text_runs
    folder, models = runs[kind]
    out = tmp_path / "s.zarr"
    res = probe(folder, "--probe", base / "lines.txt", "--out", out, "--batch-size", "2")
    assert res.exit_code == 0, res.output
    ds, _ = check(out, models, width=9)
    assert int(ds.attrs["probe_size"]) == 5  # the blank line is not an example
    prov = json.loads(ds.attrs["runs"])[kind]
    assert " sha256:" in prov["tokenizer"]  # the class transformers loads, and the files


def _activity_reference(model, layer):
    """Per channel, the share of real tokens where ``layer``'s output is above zero."""
    module = dict(model.named_modules())[layer]
    tok, seen = make_tokenizer(), []
    h = module.register_forward_hook(lambda m, i, o: seen.append(o.detach().numpy()[0]))
    try:
        with torch.no_grad():
            for line in (line for line in LINES if line.strip()):
                model(input_ids=torch.tensor([tok(line)["input_ids"]]))
    finally:
        h.remove()
    rows = np.concatenate(seen)
    return (rows > 0).mean(axis=0)


def test_padding_counts_nowhere_bidirectional(text_runs, tmp_path):
    """BERT attends both ways: without the real mask, padding would change the real tokens.
    A longer --max-length (more padding) gives the same statistics and unit activity; the
    positions no line reaches are NaN in the mean map."""
    base, runs = text_runs
    folder, models = runs["bert"]
    stores = {}
    for width in (9, 20):
        stores[width] = tmp_path / f"s{width}.zarr"
        res = probe(folder, "--probe", base / "lines.txt", "--out", stores[width],
                    "--max-length", width, "--batch-size", "4")
        assert res.exit_code == 0, res.output
    ds, tree = check(stores[20], models, width=20)
    other = nasprobe.open_store(stores[9]).to_dataset()
    for var in ("nas_median", "nas_mean", "nas_min", "nas_max", "nas_quantile", "nas_hist",
                "dead_fraction"):
        np.testing.assert_allclose(ds[var].values, other[var].values, atol=1e-6, err_msg=var)
    assert ds.attrs["probe_sha256"] != other.attrs["probe_sha256"]
    layer = "bert.encoder.layer.0.intermediate.dense"
    act = tree[f"heatmaps/{group_name(layer)}"]["unit_activity"]
    for step, model in models.items():
        np.testing.assert_allclose(act.sel(epoch=step).values[0],
                                   _activity_reference(model, layer), atol=1e-12)


def test_truncation_matches_hooks_on_truncated_lines(text_runs, tmp_path):
    """--max-length 4 cuts the longer lines; --nas-on graph is overridden (the graph's unit
    activity sums over padding), a notice on stderr says why, and the store says so."""
    base, runs = text_runs
    folder, models = runs["gpt2"]
    out = tmp_path / "s.zarr"
    forget_notices()  # a notice is printed once per process
    res = probe(folder, "--probe", base / "lines.txt", "--out", out, "--max-length", "4",
                "--nas-on", "graph")
    assert res.exit_code == 0, res.output
    notice = [line for line in res.stderr.splitlines() if "--nas-on graph" in line]
    assert len(notice) == 1, res.stderr
    assert "host NAS" in notice[0] and "lines.txt" in notice[0] and "padding" in notice[0]
    ds, _ = check(out, models, width=4, max_length=4)
    assert json.loads(ds.attrs["runs"])["gpt2"]["nas_on"] == "host"


def test_changed_text_is_a_changed_probe_set(text_runs, tmp_path):
    base, runs = text_runs
    out = tmp_path / "s.zarr"
    assert probe(runs["gpt2"][0], "--probe", base / "lines.txt", "--out", out).exit_code == 0
    edited = tmp_path / "lines.txt"
    edited.write_text("\n".join(LINES[:-1] + ["w0 w59 w33 w2 w41 w8"]), encoding="utf-8")
    res = probe(runs["gpt2"][0], "--probe", edited, "--out", out)
    assert res.exit_code == 2 and "another probe set" in res.output, res.output


def test_no_tokenizer_and_image_model_are_refused(text_runs, hf_runs, tmp_path):
    base, runs = text_runs
    plain = hf_runs[1]["gpt2"][0]  # saved without a tokenizer
    res = probe(plain, "--probe", base / "lines.txt", "--out", tmp_path / "a.zarr")
    assert res.exit_code == 2, res.output
    assert "lines.txt" in res.output and "has no tokenizer" in res.output
    res = probe(runs["vit"][0], "--probe", base / "lines.txt", "--out", tmp_path / "b.zarr")
    assert res.exit_code == 2, res.output
    assert "lines.txt" in res.output and "not token ids" in res.output
    res = probe(runs["gpt2"][0], "--probe", base / "lines.txt", "--out", tmp_path / "c.zarr",
                "--max-length", "33")
    assert res.exit_code == 2 and "exceeds the 32 positions" in res.output, res.output
    res = probe(runs["gpt2"][0], "--probe", hf_runs[0] / "ids.npy", "--out",
                tmp_path / "d.zarr", "--max-length", "4")
    assert res.exit_code == 2 and "text probes (.txt) only" in res.output, res.output


def test_a_later_checkpoint_with_another_tokenizer_is_refused(text_runs, tmp_path):
    base, runs = text_runs
    folder = tmp_path / "run"
    shutil.copytree(runs["gpt2"][0], folder)
    make_tokenizer(pad="[UNK]").save_pretrained(folder / f"checkpoint-{STEPS[1]}")
    out = tmp_path / "s.zarr"
    res = probe(folder, "--probe", base / "lines.txt", "--out", out)
    assert res.exit_code != 0
    assert f"checkpoint-{STEPS[1]}" in res.output and "tokenizer files differ" in res.output
    res = probe(folder, "--probe", base / "lines.txt", "--out", out, "--on-error", "skip")
    assert res.exit_code == 0, res.output
    assert nasprobe.open_store(out).to_dataset().epoch.values.tolist() == [STEPS[0]]
