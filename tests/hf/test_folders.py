"""Which folders are Hugging Face checkpoints, and which are refused (and why)."""

from __future__ import annotations

import json
import shutil

import torch
from click.testing import CliRunner

from nasprobe.cli import main
from nasprobe.frameworks import registry as adapters
from nasprobe.frameworks.checkpoints import find_checkpoints
from tests.hf.conftest import STEPS


def probe(tmp_path, *args, probe_file):
    return CliRunner().invoke(main, ["probe", *map(str, args), "--probe", str(probe_file),
                                     "--out", str(tmp_path / "s.zarr")])


def assert_bad(res, *fragments):
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    for f in fragments:
        assert f in res.stderr, (f, res.stderr)


def test_trainer_folder_is_one_run_of_steps(hf_runs, tmp_path):
    _, runs, _ = hf_runs
    folder = tmp_path / "run"
    shutil.copytree(runs["gpt2"][0], folder)
    # trainer.save_model() also writes the final model at the top: still a run, not a checkpoint
    for f in (folder / "checkpoint-10").iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, folder / f.name)
    assert not adapters.is_checkpoint(folder)
    assert adapters.claimant(folder / "checkpoint-5").name == "hf"
    found = find_checkpoints([folder])
    assert [(c.path.name, c.epoch) for c in found] == [(f"checkpoint-{s}", s) for s in STEPS]
    sharded = runs["llama"][0] / "checkpoint-5"
    assert (sharded / "model.safetensors.index.json").exists()  # the llama run is sharded
    assert adapters.claimant(sharded).name == "hf"


def test_remote_code_is_refused(hf_runs, tmp_path):
    root, runs, _ = hf_runs
    folder = tmp_path / "run"
    shutil.copytree(runs["gpt2"][0], folder)
    cfg = folder / "checkpoint-5" / "config.json"
    data = json.loads(cfg.read_text())
    data["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    cfg.write_text(json.dumps(data))
    assert_bad(probe(tmp_path, folder, probe_file=root / "ids.npy"), str(cfg),
               "needs code shipped with the checkpoint", "never runs it")


def test_pickled_weights_need_trust_pickle(hf_runs, tmp_path):
    root, runs, _ = hf_runs
    folder = tmp_path / "run"
    shutil.copytree(runs["gpt2"][0], folder)
    for step in STEPS:
        ck = folder / f"checkpoint-{step}"
        (ck / "model.safetensors").unlink()
        torch.save(runs["gpt2"][1][step].state_dict(), ck / "pytorch_model.bin")
    assert_bad(probe(tmp_path, folder, probe_file=root / "ids.npy"), "checkpoint-5",
               "holds only pickled weights (pytorch_model.bin)", "--trust-pickle")


def test_folder_without_weights_and_model_option(hf_runs, tmp_path):
    root, runs, _ = hf_runs
    folder = tmp_path / "run"
    shutil.copytree(runs["gpt2"][0], folder)
    res = probe(tmp_path, folder, "--model", "x:y", probe_file=root / "ids.npy")
    assert_bad(res, "--model does not apply to Hugging Face folders")
    (folder / "checkpoint-5" / "model.safetensors").unlink()
    (folder / "checkpoint-10" / "model.safetensors").unlink()
    assert_bad(probe(tmp_path, folder, probe_file=root / "ids.npy"), "checkpoint-5",
               "holds no weights (model.safetensors")
    shutil.rmtree(folder / "checkpoint-5")
    shutil.rmtree(folder / "checkpoint-10")
    assert_bad(probe(tmp_path, folder, probe_file=root / "ids.npy"),
               "holds no checkpoint file", "no checkpoint folder")


def test_float_probe_for_a_token_model_is_refused(hf_runs, tmp_path):
    root, runs, _ = hf_runs
    assert_bad(probe(tmp_path, runs["bert"][0], probe_file=root / "images.npz"),
               "takes integer token ids", "float32")
