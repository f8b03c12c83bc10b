"""Readable layer names for the nodes of any exporter's ONNX graph (docs/onnx.md).

In order: the ``nasprobe.layer`` metadata the adapters write; the PyTorch exporter's module
scope; the older PyTorch exporter's ``/scope/Conv`` node name (as a module path); a
TensorFlow exporter's ``model/dense_1/Tensordot/MatMul`` (→ ``dense_1``); then, when the node
name is generic (``node_Conv_1``, ``Conv_0``, ``p2o.Conv.3``, skl2onnx's ``MatMul1``, empty), the
weight initializer's name with the weight words removed (``conv2d_8/kernel:0`` → ``conv2d_8``,
``features.0.weight`` → ``features.0``); then the node name itself.
"""

from __future__ import annotations

import ast
import re

import onnx

from nasprobe.contract import LAYER_KEY

__all__ = ["layer_name", "is_generic", "weight_layer"]

#: Trailing path parts of an initializer name that say "weight", not which layer.
_WEIGHT_WORDS = frozenset(
    {
        "kernel",
        "weight",
        "weights",
        "w",
        "filter",
        "filters",
        "readvariableop",
        "depthwise_kernel",
        "pointwise_kernel",
        "kernel_oih",
        "quantized",
    }
)
#: Leading path parts of a TensorFlow export's node names: the function call that wraps them.
_CALLS = frozenset({"statefulpartitionedcall", "partitionedcall"})
#: Leading path parts that wrap every weight name of a TensorFlow export (the calls, and Keras
#: 3's default model name ``functional_1``).
_WRAPPERS = _CALLS | {"functional"}
_GENERIC_WORDS = frozenset(
    {
        "node",
        "p2o",
        "onnx",
        "const",
        "constant",
        "param",
        "initializer",
        "tensor",
        "w",
        "b",
        "weight",
        "kernel",
        "oih",
        "oihw",
        "hwio",
        "val",
    }
)


#: Trailing parts of TensorFlow node names that name the operation, not the layer.
_TF_OPS = frozenset(
    {
        "Conv2D",
        "Conv1D",
        "Conv3D",
        "MatMul",
        "BiasAdd",
        "Tensordot",
        "Add",
        "StatefulPartitionedCall",
        "PartitionedCall",
        "depthwise",
        "Einsum",
        "Conv2DBackpropInput",
        "Mul",
        "BatchMatMulV2",
        "Conv",
        "Gemm",
        "DequantizeLinear",
        "convolution",
    }
)


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[/_.:@\-]+", name.lower()) if t]


def is_generic(name: str, op_type: str = "") -> bool:
    """Whether ``name`` says nothing about the layer: empty, or only the operator's type,
    numbers and exporter words (``node_Conv_1``, ``Conv_0``, ``onnx::Conv_12``, ``const_3``)."""
    words = _GENERIC_WORDS | {op_type.lower()}
    return all(t.isdigit() or t in words for t in _tokens(name))


def weight_layer(init_name: str, op_type: str = "") -> str | None:
    """The layer named by a weight initializer (``conv2d_8/kernel:0`` → ``conv2d_8``,
    ``features.0.weight`` → ``features.0``), or None when that name is generic too."""
    name = re.sub(r":\d+$", "", init_name)
    if is_generic(name, op_type):
        return None
    if "/" in name:
        parts = [p for p in name.split("/") if p]
        while parts and (parts[-1].lower() in _WEIGHT_WORDS or parts[-1] in _TF_OPS):
            parts.pop()
        while len(parts) > 1 and parts[0].lower().split("_")[0] in _WRAPPERS:
            parts.pop(0)
        name = "/".join(parts)
    else:
        name = re.sub(r"(_deepcopy_\d+|_quantized|_DequantizeLinear)$", "", name)  # copies
        name = re.sub(r"([._](weight|weights|kernel|w|W|filter)|\.w_\d+)$", "", name)
    return None if not name or is_generic(name, op_type) else name


def _tf_layer(name: str) -> str | None:
    """Keras layer path of a TensorFlow-exporter node name (``model/dense_1/Tensordot/MatMul``
    → ``dense_1``; the first part after the call wrappers names the model, Keras 3's
    ``functional_1`` included)."""
    parts = [p for p in name.split("/") if p]
    while parts and parts[0].lower().split("_")[0] in _CALLS:
        parts.pop(0)
    parts = parts[1:]  # the model's name
    keep = []
    for p in parts:
        if p in _TF_OPS:
            break
        keep.append(p)
    return "/".join(keep) or None


def _scope_path(parts: list[str]) -> str:
    """Module path from the older PyTorch exporter's scopes: each part is either the full path
    (``features``, ``features.0``) or the child's own name (``model.0``, ``conv``)."""
    path = parts[0]
    for p in parts[1:]:
        path = p if p.startswith(path + ".") else f"{path}.{p}"
    return path


def _torch_scope(meta: dict[str, str]) -> str | None:
    try:
        scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
        classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))
    except (ValueError, SyntaxError):
        return None
    for i in range(len(scopes) - 1, -1, -1):
        cls = classes[i] if i < len(classes) else ""
        if cls.startswith(("aten.", "prims.", "<built-in")) or not scopes[i]:
            continue
        return scopes[i]
    return None


def layer_name(node: onnx.NodeProto, weight: str | None = None) -> str:
    """Layer name of a linear node (see the module docstring for the order of the rules);
    ``weight`` is the name of its weight initializer, when it has one."""
    meta = {p.key: p.value for p in node.metadata_props}
    if meta.get(LAYER_KEY):
        return meta[LAYER_KEY]
    if "pkg.torch.onnx.name_scopes" in meta:
        scope = _torch_scope(meta)
        if scope:
            return scope
    parts = [p for p in node.name.split("/") if p]
    if node.name.startswith("/") and len(parts) >= 2:
        return _scope_path(parts[:-1])
    if len(parts) >= 3:
        tf = _tf_layer(node.name)
        if tf:
            return tf
    # skl2onnx names a node after its operator type and a count, case kept (``MatMul1``); a
    # weight named ``conv1`` is a real module name, so this only applies to node names
    counted = re.fullmatch(re.escape(node.op_type) + r"\d+", node.name) is not None
    if counted or is_generic(node.name, node.op_type):
        from_weight = weight_layer(weight, node.op_type) if weight else None
        if from_weight:
            return from_weight
    return node.name or node.op_type
