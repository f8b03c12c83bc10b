"""PyTorch model → ONNX, once per run, keeping every linear operator and BatchNorm as they are.

The dynamo exporter is run with ``optimize=False``: its optimizer folds BatchNorm into the
preceding Conv while keeping the Conv weight's name, which would silently turn a ``linear`` tap
into a ``preact`` one. After export the graph is checked (see :func:`verify_export`): every
BatchNorm call is a ``BatchNormalization`` node, every Conv/Linear weight is an initializer under
its state-dict name and holds the module's values. A ``Transpose`` of a weight feeding ``MatMul``
(``nn.Linear`` on ``(N, T, D)`` inputs) is folded into a ``(D_in, D_out)`` initializer and that
transposition is recorded, so that per-epoch weights map onto the graph without re-exporting.

The graph rewrites after export are in :mod:`nasprobe_torch.graph_edits`. Node metadata:
``nasprobe.layer`` (the Conv/Linear module path, e.g. ``features.0``) on the
linear operator, its bias ``Add``, the following ``BatchNormalization`` and the activation;
``nasprobe.module`` (the module each node was traced in) on every node inside a module.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from nasprobe.errors import GraphError, NasprobeError

from .graph_edits import (
    LINEAR_OPS,
    drop_computed_zero_biases,
    fold_weight_transposes,
    tag_layers,
)

__all__ = ["Exported", "export_onnx", "export_model", "example_input"]

LINEAR_MODULES = (nn.modules.conv._ConvNd, nn.Linear)
BN_MODULES = (nn.modules.batchnorm._BatchNorm,)
METADATA_LAYOUT = "nasprobe.torch.weights"


@dataclass
class Exported:
    """An exported graph and how its initializers map to state-dict entries.

    Attributes:
        model: the ONNX model (float32, dynamic batch where the model allows it).
        layout: initializer name → ``(state-dict key, perm)``; ``perm`` is ``None`` when the
            initializer is the tensor as is, else the axes permutation applied to it.
        layers: the ``nasprobe.layer`` of each linear operator, in graph order.
    """

    model: onnx.ModelProto
    layout: dict[str, tuple[str, tuple[int, ...] | None]] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)


def _run_exporter(target: Any, example: torch.Tensor, dynamic: bool,
                  extra_dims: dict[int, Any] | None = None) -> onnx.ModelProto:
    kwargs: dict[str, Any] = dict(dynamo=True, optimize=False, verbose=False, report=False)
    if dynamic:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch"), **(extra_dims or {})},)
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)  # "torchvision is not installed" notices
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(target, (example,), **kwargs)
    finally:
        registry_log.setLevel(level)
    return program.model_proto


def _export_any(target: Any, example: torch.Tensor,
                extra_dims: dict[int, Any] | None = None) -> onnx.ModelProto:
    """Export with a dynamic batch axis (and ``extra_dims``, axis → ``torch.export.Dim``),
    else (a model that fixes its batch) with a batch of 1."""
    errors = []
    for dynamic in (True, False):
        try:
            return _run_exporter(target, example if dynamic else example[:1], dynamic,
                                 extra_dims)
        except Exception as exc:  # the exporter raises many kinds
            errors.append(f"{exc.__class__.__name__}: {str(exc).strip()[:600]}")
    raise NasprobeError("torch.onnx.export failed: " + " | ".join(errors))


def _called_modules(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Conv/Linear/BatchNorm modules in call order during one forward pass."""
    calls: list[tuple[str, nn.Module]] = []
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: calls.append((name, mod)))
               for name, m in model.named_modules() if isinstance(m, LINEAR_MODULES + BN_MODULES)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return calls


def verify_export(exported: Exported, state: dict[str, torch.Tensor],
                  calls: list[tuple[str, nn.Module]] | None, origin: str) -> None:
    """Refuse a graph whose taps could be mislabelled (a BatchNorm folded, a weight renamed).

    Args:
        exported: the graph and its layout.
        state: the model's state dict (PyTorch layout), the values exported.
        calls: Conv/Linear/BatchNorm modules called in one forward pass (``None`` when the model
            is not an ``nn.Module``, e.g. an exported program): BatchNorm modules are then those
            state-dict prefixes with ``running_mean`` and ``running_var``.
        origin: what was exported, for messages.

    Raises:
        GraphError: naming the module or tensor that does not fit.
    """
    graph = exported.model.graph
    inits = {t.name: t for t in graph.initializer}
    for name, (key, perm) in exported.layout.items():
        value = state[key].detach().to(torch.float32).numpy()
        value = value if perm is None else value.transpose(perm)
        if not np.array_equal(numpy_helper.to_array(inits[name]), value):
            raise GraphError(origin, f"initializer {name!r} does not hold the values of "
                             f"{key!r}: the exporter changed it (folded BatchNorm?); refused")
    key_of = {name: key for name, (key, _) in exported.layout.items()}
    bn_nodes = [n for n in graph.node if n.op_type == "BatchNormalization"]
    bn_used = {key_of.get(n.input[3], "").rpartition(".")[0] for n in bn_nodes}
    if calls is not None:
        bn_called = [name for name, m in calls if isinstance(m, BN_MODULES)]
        linear_called = [(name, m) for name, m in calls if isinstance(m, LINEAR_MODULES)]
    else:
        bn_called = [k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")
                     and k[: -len(".running_mean")] + ".running_var" in state
                     and k in key_of.values()]
        linear_called = []
    if len(bn_nodes) != len(bn_called) or not set(bn_called) <= bn_used:
        raise GraphError(origin, f"{len(bn_called)} BatchNorm calls in the model but "
                         f"{len(bn_nodes)} BatchNormalization nodes in the exported graph "
                         f"(missing: {sorted(set(bn_called) - bn_used)}): BatchNorm was folded "
                         "or renamed; refused, since linear taps would be mislabelled")
    linear_weights = {key_of.get(n.input[1]) for n in graph.node
                      if n.op_type in LINEAR_OPS and len(n.input) > 1}
    aliases = _aliases(state)
    for name, module in linear_called:
        for pname, _ in module.named_parameters(recurse=False):
            key = f"{name}.{pname}" if name else pname
            if not (aliases.get(key, {key}) & set(key_of.values())):
                raise GraphError(origin, f"parameter {key!r} is not an initializer of the "
                                 "exported graph under its own name; refused")
        wkey = f"{name}.weight" if name else "weight"
        if not aliases.get(wkey, {wkey}) & linear_weights:
            raise GraphError(origin, f"module {name!r} ({type(module).__name__}) has no "
                             "Conv/Gemm/MatMul node reading its weight; refused")


def _aliases(state: dict[str, torch.Tensor]) -> dict[str, set[str]]:
    """State-dict keys sharing storage (tied weights) → the set of all their keys."""
    groups: dict[tuple, set[str]] = {}
    for k, v in state.items():
        groups.setdefault((v.data_ptr(), tuple(v.shape), v.dtype), set()).add(k)
    return {k: g for g in groups.values() for k in g}


def example_input(model: Any, input_shape: Sequence[int], batch: int = 2) -> torch.Tensor:
    """The dummy input an export is traced with: ``(batch, *input_shape)``.

    Token ids (int64, values below the smallest embedding table's size) when ``model`` is an
    ``nn.Module`` whose input goes straight into an ``nn.Embedding`` (a language model), else
    standard normal float32. An embedding lookup refuses a float input, so this is decided by
    calling the model once on ids and watching which embedding receives the input itself.
    """
    shape = (batch, *[int(s) for s in input_shape])
    embeddings = ([m for m in model.modules() if isinstance(m, nn.Embedding)]
                  if isinstance(model, nn.Module) else [])
    if embeddings:
        ids = torch.randint(0, min(m.num_embeddings for m in embeddings), shape)
        direct: list[bool] = []
        handles = [m.register_forward_pre_hook(
            lambda mod, args: direct.append(bool(args) and args[0] is ids)) for m in embeddings]
        try:
            with torch.no_grad():
                model.eval()(ids)
        except Exception:  # noqa: BLE001 - not a token model: it takes floats
            direct = []
        finally:
            for h in handles:
                h.remove()
        if any(direct):
            return ids
    return torch.randn(*shape)


def export_model(model: nn.Module | torch.export.ExportedProgram | torch.jit.ScriptModule,
                 input_shape: Sequence[int], origin: str = "model", *,
                 example: torch.Tensor | None = None,
                 extra_dims: dict[int, Any] | None = None) -> Exported:
    """Export a model once, verified and tagged (see the module docstring).

    Args:
        model: an ``nn.Module`` (put in eval mode and float32 here), a ``torch.export``
            program, or a TorchScript module (converted with ``TS2EPConverter``).
        input_shape: one sample's shape without the batch axis, e.g. ``(C, H, W)``, or
            ``(T,)`` token ids for a language model.
        origin: the file or model this came from, for error messages.
        example: the traced input (batch of 2); default :func:`example_input` (integer token
            ids for a model that embeds its input, float32 otherwise).
        extra_dims: axes of the input besides the batch that stay dynamic, axis →
            ``torch.export.Dim`` (e.g. the sequence axis of a token model).

    Returns:
        :class:`Exported` with the ONNX model (opset of the exporter, input named as the
        model's forward argument, batch axis dynamic where possible).

    Raises:
        NasprobeError: the exporter failed; GraphError: the export cannot be labelled honestly.
    """
    if example is None:
        example = example_input(model, input_shape)
    calls = None
    if isinstance(model, torch.jit.ScriptModule):
        from torch._export.converter import TS2EPConverter
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Manually populate ... num_batches_tracked"
                model = TS2EPConverter(model, (example,)).convert().module()
        except Exception as exc:
            raise NasprobeError(f"{origin}: cannot convert the TorchScript module for export "
                                f"({exc.__class__.__name__}: {str(exc)[:300]}); pass --model "
                                "to rebuild it in Python") from exc
        state = dict(model.state_dict())
    elif isinstance(model, torch.export.ExportedProgram):
        state = {k: v for k, v in model.state_dict.items() if isinstance(v, torch.Tensor)}
    else:
        model = model.eval().float()
        calls = _called_modules(model, example)
        state = dict(model.state_dict())
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    proto = _export_any(model, example, extra_dims)
    layout = {t.name: (t.name, None) for t in proto.graph.initializer if t.name in state}
    exported = Exported(proto, layout)
    fold_weight_transposes(proto.graph, layout)
    drop_computed_zero_biases(proto.graph, layout)
    verify_export(exported, state, calls, origin)
    exported.layers = tag_layers(proto.graph, layout)
    proto.metadata_props.add(key=METADATA_LAYOUT, value=json.dumps(
        {name: [key, list(perm) if perm else None] for name, (key, perm) in layout.items()}))
    return exported


def export_onnx(model: nn.Module, input_shape: Sequence[int],
                path: str | Path | None = None) -> onnx.ModelProto:
    """Export a PyTorch model to ONNX as nasprobe probes it, optionally writing it to ``path``.

    Args:
        model: the model (``nn.Module``, ``torch.export`` program or TorchScript module).
        input_shape: one sample's shape without the batch axis, e.g. ``(3, 32, 32)``.
        path: where to write the ``.onnx`` file (parent folders are created); ``None``: don't.

    Returns:
        The ONNX model: float32, BatchNorm kept, dynamic batch axis, initializers named by
        state-dict keys, node metadata ``nasprobe.layer`` per Conv/Linear layer.
    """
    exported = export_model(model, input_shape, origin=str(path or type(model).__name__))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(exported.model, str(path))
    return exported.model
