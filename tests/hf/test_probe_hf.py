"""Trainer folders probed through the CLI, checked against forward hooks on the saved models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main
from nasprobe.plots.select import heatmap_maps, select
from tests.hf.conftest import STEPS, hooked_nas


def probe(*args):
    return CliRunner().invoke(main, ["probe", *map(str, args)])


def check_against_hooks(store, models, x, tap="linear"):
    ds = nasprobe.open_store(store).to_dataset()
    assert ds.attrs["epoch_unit"] == "step"
    assert ds.epoch.values.tolist() == list(STEPS)
    run = str(ds.run.values[0])
    for step, model in models.items():
        ref = hooked_nas(model, x, tap)
        assert sorted(ds.layer.values.tolist()) == sorted(ref), (step, ref.keys())
        for layer, values in ref.items():
            got = ds.sel(run=run, epoch=step, layer=layer)
            assert abs(float(got.nas_mean) - values.mean()) <= 1e-5, (step, layer)
            assert abs(float(got.nas_median) - np.median(values)) <= 1e-5, (step, layer)
    return ds


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_token_models_match_hooks(hf_runs, tmp_path, kind):
    root, runs, arrays = hf_runs
    folder, models = runs[kind]
    out = tmp_path / "s.zarr"
    res = probe(folder, "--probe", root / "ids.npy", "--out", out, "--batch-size", "4")
    assert res.exit_code == 0, res.output
    ds = check_against_hooks(out, models, arrays["ids"])
    assert set(ds.locations.values.tolist()) == {arrays["ids"].shape[1]}  # every token
    tree = nasprobe.open_store(out)
    layer = str(ds.layer.values[0])
    assert tree[f"heatmaps/{layer}"].to_dataset()["nas_map"].shape[-1] == arrays["ids"].shape[1]
    sel = select(tree)  # a text model's heatmap: one column per token position
    (m,) = heatmap_maps(sel, layer, [str(ds.run.values[0])], [STEPS[0]])
    assert m.shape == (1, arrays["ids"].shape[1])
    if kind == "gpt2":  # Conv1D layers, weight (in, out); the head tied to the embedding
        assert "transformer.h.0.mlp.c_fc" in ds.layer.values and "lm_head" in ds.layer.values
        assert int(ds.channels.sel(layer="transformer.h.0.attn.c_attn")) == 96
    info = CliRunner().invoke(main, ["info", str(out)])
    assert f"{kind}: 2 steps (5..10), hf from" in info.output, info.output


def test_vit_matches_hooks_with_loss(hf_runs, tmp_path):
    root, runs, arrays = hf_runs
    folder, models = runs["vit"]
    out = tmp_path / "s.zarr"
    res = probe(folder, "--probe", root / "images.npz", "--out", out, "--framework", "hf")
    assert res.exit_code == 0, res.output
    ds = check_against_hooks(out, models, arrays["images"])
    assert int(ds.locations.sel(layer="vit.layers.0.mlp.fc1")) == 17  # CLS + 4 x 4 patches
    assert "vit.embeddings.patch_embeddings.projection" in ds.layer.values
    runs_attr = json.loads(ds.attrs["runs"])["vit"]
    assert runs_attr["patch_grid"] == [4, 4] and runs_attr["model_class"] == \
        "ViTForImageClassification"
    for step, model in models.items():
        with torch.no_grad():
            logits = model(pixel_values=torch.from_numpy(arrays["images"])).logits
        loss = torch.nn.functional.cross_entropy(logits.double(),
                                                 torch.from_numpy(arrays["labels"]))
        assert abs(float(ds.loss.sel(epoch=step).values[0]) - float(loss)) <= 1e-5


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_preact_finds_gelu_and_swiglu_gate(hf_runs, tmp_path, kind):
    root, runs, arrays = hf_runs
    folder, models = runs[kind]
    out = tmp_path / "s.zarr"
    res = probe(folder, "--probe", root / "ids.npy", "--out", out, "--tap", "preact")
    assert res.exit_code == 0, res.output
    check_against_hooks(out, models, arrays["ids"], tap="preact")
    assert "have no nonlinearity after them and are left out" in res.stderr
    missing = json.loads(nasprobe.open_store(out).attrs["runs"])[kind]["no_preact"]
    assert ("model.layers.0.mlp.up_proj" if kind == "llama"
            else "transformer.h.0.attn.c_attn") in missing


def test_weight_files_with_epoch_regex_on_the_path(hf_runs, tmp_path):
    root, runs, arrays = hf_runs
    folder, models = runs["gpt2"]
    files = [folder / f"checkpoint-{s}" / "model.safetensors" for s in STEPS]
    out = tmp_path / "s.zarr"
    res = probe(*files, "--epoch-regex", r"checkpoint-(?P<epoch>\d+)", "--run", "gpt2",
                "--probe", root / "ids.npy", "--out", out)
    assert res.exit_code == 0, res.output
    check_against_hooks(out, models, arrays["ids"])
