"""Tiny random transformers models saved as a Hugging Face ``Trainer`` would, and a reference
NAS computed with forward hooks on the very models that were saved (no ONNX, no loading)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import transformers  # the hf extra, in requirements-dev.lock: missing is a failure, not a skip
from torch import nn
from transformers.pytorch_utils import Conv1D

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEPS = (5, 10)
TOKENS = (6, 12)  # probe sequences, tokens each
VOCAB = 97


def _configs():
    t = transformers
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64)
    return {
        "vit": (t.ViTForImageClassification,
                t.ViTConfig(**small, image_size=16, patch_size=4, num_channels=3, num_labels=5)),
        "bert": (t.BertForMaskedLM,
                 t.BertConfig(**small, vocab_size=VOCAB, max_position_embeddings=32)),
        "gpt2": (t.GPT2LMHeadModel,
                 t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                              bos_token_id=0, eos_token_id=0)),
        "llama": (t.LlamaForCausalLM,
                  t.LlamaConfig(**small, vocab_size=VOCAB, num_key_value_heads=2,
                                max_position_embeddings=32)),
    }


def save_trainer_run(folder, kind: str, steps=STEPS, shard: bool = False) -> dict:
    """``folder/checkpoint-N/`` for each step N, as ``Trainer`` writes them (config.json,
    safetensors, generation config, a trainer_state.json, optimizer state nasprobe ignores).
    Returns ``{step: model}``: the models whose weights were saved, in eval mode."""
    cls, config = _configs()[kind]
    models = {}
    for i, step in enumerate(steps):
        torch.manual_seed(100 * i + len(kind))
        model = cls(config).eval()
        with torch.no_grad():  # trained-looking weights: not all at their init scale
            for p in model.parameters():
                p.mul_(1.0 + 3.0 * i)
        out = folder / f"checkpoint-{step}"
        kw = {"max_shard_size": "40KB"} if shard else {}
        model.save_pretrained(out, **kw)
        (out / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        torch.save({"state": {}}, out / "optimizer.pt")
        models[step] = model
    return models


def probe_arrays(folder) -> dict:
    """Probe files: token ids (N, T) int64 and images (N, 3, 16, 16) float32 with labels."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, TOKENS).astype(np.int64)
    images = rng.normal(size=(6, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 5, 6).astype(np.int64)
    np.save(folder / "ids.npy", ids)
    np.savez(folder / "images.npz", x=images, y=labels)
    return {"ids": ids, "images": images, "labels": labels}


def _nas(a: np.ndarray, axis: int) -> np.ndarray:
    """NAS of every location of ``a`` along the channel ``axis``, float64 (docs/measures.md)."""
    a = np.moveaxis(a.astype(np.float64), axis, -1)
    z = a - a.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    p = np.exp(z - lse[..., None])
    h = lse - (p * z).sum(axis=-1)
    return 1.0 - np.exp(h) / a.shape[-1]


TAPPED = (nn.Linear, nn.Conv2d, Conv1D)
#: The activation modules of the four models → the linear layer whose output they take
#: (GPT-2 MLP, Llama SwiGLU gate, ViT MLP, BERT intermediate and its prediction transform).
ACTIVATION_OF = {"act": "c_fc", "act_fn": "gate_proj", "activation_fn": "fc1",
                 "intermediate_act_fn": "dense", "transform_act_fn": "dense"}


def hooked_nas(model, x: np.ndarray, tap: str = "linear") -> dict[str, np.ndarray]:
    """Layer → every NAS value (flat) of one forward pass of the transformers model itself.

    ``linear``: the output of every nn.Linear, Conv1D and Conv2d (channels on axis 1 for the
    convolution, last otherwise). ``preact``: the input of the activation module inside each
    MLP (GELU / SiLU), i.e. the first projection's output, and for SwiGLU the gate's.
    """
    values: dict[str, np.ndarray] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, TAPPED) and tap == "linear":
            axis = 1 if isinstance(m, nn.Conv2d) else -1
            handles.append(m.register_forward_hook(
                lambda mod, i, o, name=name, axis=axis: values.__setitem__(
                    name, _nas(o.detach().numpy(), axis).ravel())))
        act = name.rpartition(".")
        if tap == "preact" and act[2] in ACTIVATION_OF:
            layer = f"{act[0]}.{ACTIVATION_OF[act[2]]}"
            handles.append(m.register_forward_pre_hook(
                lambda mod, i, layer=layer: values.__setitem__(
                    layer, _nas(i[0].detach().numpy(), -1).ravel())))
    try:
        with torch.no_grad():
            if x.dtype.kind == "f":
                model(pixel_values=torch.from_numpy(x))
            else:
                t = torch.from_numpy(x)
                model(input_ids=t, attention_mask=torch.ones_like(t))
    finally:
        for h in handles:
            h.remove()
    return values


@pytest.fixture(scope="session")
def hf_runs(tmp_path_factory):
    """The four tiny runs (llama sharded) and the probe files, built once per session."""
    root = tmp_path_factory.mktemp("hf")
    arrays = probe_arrays(root)
    runs = {}
    for kind in ("vit", "bert", "gpt2", "llama"):
        folder = root / kind
        runs[kind] = (folder, save_trainer_run(folder, kind, shard=kind == "llama"))
    return root, runs, arrays
