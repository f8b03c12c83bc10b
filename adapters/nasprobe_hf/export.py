"""A transformers model → one tapped ONNX graph, through nasprobe_torch's export.

What changes for the export only (the model object is restored afterwards):

* the model is called with one tensor: token ids as ``input_ids`` (and no key/value cache),
  or images as ``pixel_values``. Where ``forward`` takes an ``attention_mask``, the graph
  derives it from the ids: a negative id (``nasprobe.contract.PAD_ID``, what the core feeds at
  a text probe's padding) is padding, mask 0, and is embedded as id 0; every other id has
  mask 1 (so an array of ids gets the all-ones mask). It returns its first output (logits,
  or the last hidden state of a base model). The ids' sequence axis stays dynamic, up to
  ``max_position_embeddings``.
* transformers' ``Conv1D`` (GPT-2; weight stored ``(in, out)``) computes ``x @ W + b`` on the
  ``(N, T, in)`` input instead of flattening the tokens into the batch, so that the graph has a
  ``MatMul`` with a constant ``(in, out)`` weight and every token stays a location.
* GELU written out with ``tanh`` (``gelu_new``, ``gelu_fast``, ``gelu_python_tanh``) is exported
  as the ``Gelu`` operator with ``approximate="tanh"``: the same function, which lets
  ``--tap preact`` find its input. SiLU exports as ``x * Sigmoid(x)``, which the core knows.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedModel, activations
from transformers.pytorch_utils import Conv1D

from nasprobe_torch.export import Exported, export_model

__all__ = ["ModelInput", "model_input", "export_pretrained", "TANH_GELUS"]

#: GELU modules that compute the tanh approximation in Python operators.
TANH_GELUS = (activations.NewGELUActivation, activations.FastGELUActivation)
#: Tokens of the traced dummy input (the sequence axis stays dynamic).
EXAMPLE_TOKENS = 8


@dataclass(frozen=True)
class ModelInput:
    """The one input a checkpoint's graph takes.

    Attributes:
        name: ``input_ids`` or ``pixel_values`` (the model's ``main_input_name``).
        tokens: whether it takes integer token ids ``(N, T)``.
        masked: whether its ``forward`` takes an ``attention_mask`` (then a negative id in
            the exported graph is padding).
        shape: one sample's shape for the export: ``(T,)`` (T dynamic) or ``(C, H, W)``.
        max_tokens: the longest sequence the model takes (``max_position_embeddings``).
        patch_grid: for a vision transformer, its patches as ``(rows, columns)``.
    """

    name: str
    tokens: bool
    shape: tuple[int, ...]
    max_tokens: int | None = None
    masked: bool = False
    patch_grid: tuple[int, int] | None = field(default=None)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def model_input(model: PreTrainedModel) -> ModelInput:
    """What ``model`` takes (see :class:`ModelInput`), from its configuration.

    Raises:
        ValueError: an input other than token ids or images (audio models...).
    """
    cfg = model.config
    name = getattr(model, "main_input_name", "input_ids")
    if name == "input_ids":
        longest = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        masked = "attention_mask" in inspect.signature(model.forward).parameters
        return ModelInput(name, True, (EXAMPLE_TOKENS,), int(longest) if longest else None,
                          masked)
    if name == "pixel_values" and getattr(cfg, "image_size", None):
        h, w = _pair(cfg.image_size)
        grid = None
        if getattr(cfg, "patch_size", None):
            ph, pw = _pair(cfg.patch_size)
            grid = (h // ph, w // pw)
        return ModelInput(name, False, (int(getattr(cfg, "num_channels", 3)), h, w), None,
                          patch_grid=grid)
    raise ValueError(f"{type(model).__name__} takes {name!r}: nasprobe probes models of token "
                     "ids or images")


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.gelu(x, approximate="tanh")


def _conv1d_matmul(module: Conv1D):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, module.weight) + module.bias
    return forward


@contextlib.contextmanager
def export_view(model: PreTrainedModel, spec: ModelInput):
    """``model`` as the export sees it (the module docstring's changes), restored on exit."""
    original = model.forward
    params = inspect.signature(original).parameters
    extra = {"return_dict": True} if "return_dict" in params else {}
    if "use_cache" in params:
        extra["use_cache"] = False

    if spec.tokens:
        def forward(input_ids: torch.Tensor) -> torch.Tensor:
            mask = {"attention_mask": (input_ids >= 0).to(input_ids.dtype)} \
                if "attention_mask" in params else {}
            return original(input_ids=input_ids.clamp(min=0), **mask, **extra)[0]
    else:
        def forward(pixel_values: torch.Tensor) -> torch.Tensor:
            return original(pixel_values=pixel_values, **extra)[0]

    patched: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, Conv1D):
            m.forward = _conv1d_matmul(m)
            patched.append(m)
        elif isinstance(m, TANH_GELUS) or (isinstance(m, activations.GELUTanh)
                                           and getattr(m, "act", None) == m._gelu_tanh_python):
            m.forward = _gelu_tanh
            patched.append(m)
    model.forward = forward
    try:
        yield model
    finally:
        del model.forward
        for m in patched:
            del m.forward


def export_pretrained(model: PreTrainedModel, origin: str) -> tuple[Exported, ModelInput]:
    """Export a loaded transformers model once (verified and tagged by nasprobe_torch).

    Args:
        model: from :func:`nasprobe_hf.loading.load_model`.
        origin: the checkpoint folder, for messages.

    Returns:
        The export (initializers named by state-dict keys, layers by module path) and what
        its input is.
    """
    spec = model_input(model)
    extra_dims = None
    if spec.tokens:
        example = torch.randint(0, int(model.config.vocab_size), (2, *spec.shape))
        top = spec.max_tokens if spec.max_tokens and spec.max_tokens > EXAMPLE_TOKENS else None
        extra_dims = {1: torch.export.Dim("tokens", min=1, max=top) if top
                      else torch.export.Dim("tokens")}
    else:
        example = torch.randn(2, *spec.shape)
    with export_view(model, spec) as view:
        exported = export_model(view, spec.shape, origin=origin, example=example,
                                extra_dims=extra_dims)
    return exported, spec
