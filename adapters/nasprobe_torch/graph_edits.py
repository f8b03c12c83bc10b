"""The exported graph made ready for nasprobe, in place: a weight ``Transpose`` feeding
``MatMul`` folded into a ``(D_in, D_out)`` initializer, bias ``Add``s of a computed zero dropped,
and every node tagged with its module (``nasprobe.module``) and, along each linear operator's
chain to its activation, its layer (``nasprobe.layer``). ``layout`` records, per initializer,
how a state-dict tensor maps onto it (see :mod:`nasprobe_torch.export`).
"""

from __future__ import annotations

import ast

import numpy as np
import onnx
from onnx import numpy_helper

from nasprobe.contract import LAYER_KEY, set_node_metadata, unique_layer_name

__all__ = ["LINEAR_OPS", "ACTIVATION_OPS", "PASS_THROUGH_OPS", "fold_weight_transposes",
           "drop_computed_zero_biases", "tag_layers"]

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ACTIVATION_OPS = ("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid",
                  "HardSwish", "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "Clip",
                  "ThresholdedRelu")
PASS_THROUGH_OPS = ("BatchNormalization", "Identity", "Dropout")


def _metadata(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def _scope_module(node: onnx.NodeProto) -> str | None:
    """The innermost module path the exporter recorded for a node, if any."""
    raw = _metadata(node).get("pkg.torch.onnx.name_scopes")
    if not raw:
        return None
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if len(scopes) >= 3 and scopes[0] == "":
        return scopes[-2]
    return None


def fold_weight_transposes(graph: onnx.GraphProto, layout: dict) -> None:
    """Replace ``Transpose(initializer) → MatMul`` by one transposed initializer (in place)."""
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    removed = []
    for node in graph.node:
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        users = consumers.get(node.output[0], [])
        if not users or any(u.op_type != "MatMul" or u.input[1] != node.output[0] for u in users):
            continue
        source = inits[node.input[0]]
        perm = next((tuple(a.ints) for a in node.attribute if a.name == "perm"), None)
        array = numpy_helper.to_array(source)
        perm = perm or tuple(reversed(range(array.ndim)))
        only_use = len(consumers[source.name]) == 1
        new_name = source.name if only_use else f"{source.name}.T"
        folded = numpy_helper.from_array(np.ascontiguousarray(array.transpose(perm)), new_name)
        if only_use:
            source.CopyFrom(folded)
        else:
            graph.initializer.append(folded)
        key, old_perm = layout.get(source.name, (None, None))
        if key is not None:
            combined = perm if old_perm is None else tuple(old_perm[p] for p in perm)
            layout[new_name] = (key, combined)
        for u in users:
            u.input[1] = new_name
        removed.append(node)
    for node in removed:
        graph.node.remove(node)


def drop_computed_zero_biases(graph: onnx.GraphProto, layout: dict) -> None:
    """Remove the zero bias the exporter computes (Shape → Expand) for ``bias=False`` convs.

    ONNX Conv without a bias input is the same operator; the core then sees no bias tensor
    instead of a computed one it cannot read. Nodes left without consumers are pruned.
    """
    inits = {t.name for t in graph.initializer}
    keys = {key for key, _ in layout.values()}
    changed = False
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 3:
            continue
        if node.input[2] in inits or node.input[1] not in layout:
            continue
        module = layout[node.input[1]][0].rpartition(".")[0]
        if (f"{module}.bias" if module else "bias") in keys:
            continue
        del node.input[2]
        changed = True
    while changed:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        for n in dead:
            graph.node.remove(n)
        changed = bool(dead)


def tag_layers(graph: onnx.GraphProto, layout: dict) -> list[str]:
    """Set ``nasprobe.module`` and ``nasprobe.layer`` metadata; return the layers in order."""
    inits = {t.name for t in graph.initializer}
    consts = inits | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        module = _scope_module(node)
        if module:
            set_node_metadata(node, "nasprobe.module", module)
    def module_of(node) -> str:
        key = layout.get(node.input[1], (None,))[0]
        return key.rpartition(".")[0] if key else (_scope_module(node) or "")

    linear = [n for n in graph.node
              if n.op_type in LINEAR_OPS and len(n.input) >= 2 and n.input[1] in inits]
    modules = {module_of(n) for n in linear}
    layers: list[str] = []
    for node in linear:
        layer = module_of(node)
        if not layer:
            continue
        layer = unique_layer_name(layer, set(layers), modules)
        layers.append(layer)
        chain, tensor = [node], node.output[0]
        while True:
            users = consumers.get(tensor, [])
            if len(users) != 1:
                break
            user = users[0]
            is_bias = user.op_type == "Add" and any(i in consts for i in user.input if i != tensor)
            if not (is_bias or user.op_type in PASS_THROUGH_OPS):
                break
            chain.append(user)
            tensor = user.output[0]
        users = consumers.get(tensor, [])
        acts = [u for u in users if u.op_type in ACTIVATION_OPS]
        if any(u.op_type == "Sigmoid" for u in acts):  # SiLU: x * sigmoid(x)
            acts += [u for u in users if u.op_type == "Mul"]
        for n in chain + acts:
            set_node_metadata(n, LAYER_KEY, layer)
    return layers
