"""An index of an ONNX graph: who produces and who consumes each tensor, constants, types.

Shared by the tap search (:mod:`nasprobe.onnxgraph.taps`) and the graph builders
(:mod:`nasprobe.onnxgraph.nas_graph`); it imports neither. See docs/measures.md for what a tap is.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, shape_inference

__all__ = ["GraphIndex", "SHAPE_VALUES", "shape_view", "attr", "opset_of", "CONTROL_FLOW"]

#: Operators whose subgraphs (attributes of type GRAPH) hold nodes of their own.
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name`` (ints, floats, lists as Python values), or
    ``default`` when the node has no such attribute."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def opset_of(model: onnx.ModelProto) -> int | None:
    """The model's default-domain (``ai.onnx``) opset version, or None when it imports none."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Every tensor name a control-flow node's subgraphs read (their own and outer-scope ones)."""
    names: set[str] = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for n in g.node:
                names.update(i for i in n.input if i)
                names.update(subgraph_names(n))
            names.update(o.name for o in g.output)
    return names


#: Initializers up to this many elements keep their values for shape inference (shapes, scales,
#: pads, axes: what an operator's output shape may depend on); larger ones only type and dims.
SHAPE_VALUES = 1024


def shape_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` for shape inference: initializers over :data:`SHAPE_VALUES` elements
    keep their name, type and dims but not their values.

    onnx's shape inference serialises the whole model, weights included, and returns a parsed
    copy; on this view it serialises only the graph, with the same inferred types (no
    operator's output shape depends on the values of a weight tensor). What it saves is in
    docs/speed.md.
    """
    view = onnx.ModelProto()
    _copy_fields(model, view, but="graph")  # not CopyFrom: it would copy every weight first
    _copy_fields(model.graph, view.graph, but="initializer")
    for t in model.graph.initializer:
        if math.prod(t.dims) <= SHAPE_VALUES:
            view.graph.initializer.append(t)
        else:
            view.graph.initializer.add(name=t.name, dims=t.dims, data_type=t.data_type)
    return view


def _copy_fields(src, dst, but: str) -> None:
    """Copy every field of the protobuf message ``src`` that is set into ``dst``, but ``but``."""
    for field, value in src.ListFields():
        if field.name == but:
            continue
        repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; before, its label
        if repeated if repeated is not None else field.label == field.LABEL_REPEATED:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


class GraphIndex:
    """Producers, consumers, constants and inferred types of a model's main graph.

    A tensor that a control-flow node's subgraph reads from the outer scope counts that node
    among its consumers, so that no walk mistakes it for a tensor with a single user.
    """

    #: (model, its inferred copy) of the last index built: find_taps and the graph builders
    #: index the same architecture, whose shape inference is then done once
    last: tuple[onnx.ModelProto, onnx.ModelProto] | None = None

    def __init__(self, model: onnx.ModelProto):
        if GraphIndex.last is not None and GraphIndex.last[0] is model:
            inferred = GraphIndex.last[1]
        else:
            try:
                inferred = shape_inference.infer_shapes(shape_view(model), strict_mode=False)
            except Exception:  # shape inference is best effort
                inferred = model
            GraphIndex.last = (model, inferred)
        g = inferred.graph
        self.model = model
        self.nodes = list(model.graph.node)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.consts = dict(self.inits)
        for n in self.nodes:
            if n.op_type == "Constant" and n.output:
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = a.t
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            used = [i for i in n.input if i]
            if n.op_type in CONTROL_FLOW:
                used += sorted(subgraph_names(n) - set(used))
            for i in used:
                self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in model.graph.output}
        self.types: dict[str, onnx.TypeProto] = {}
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            self.types[vi.name] = vi.type
        for t in model.graph.initializer:
            tt = onnx.TypeProto()
            tt.tensor_type.elem_type = t.data_type
            self.types.setdefault(t.name, tt)

    def rank(self, name: str) -> int | None:
        """Rank of tensor ``name`` when shape inference knows it."""
        t = self.types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return len(t.tensor_type.shape.dim)

    def elem_type(self, name: str) -> int:
        """ONNX element type of tensor ``name`` (``TensorProto.FLOAT`` when unknown)."""
        t = self.types.get(name)
        if t is None or not t.tensor_type.elem_type:
            return onnx.TensorProto.FLOAT
        return t.tensor_type.elem_type

    def const_size(self, name: str) -> int | None:
        """Number of elements of a constant (initializer or ``Constant`` output), else None;
        a constant behind a ``DequantizeLinear`` counts as that constant."""
        t = self.consts.get(name)
        if t is None:
            node = self.producer.get(name)
            if node is not None and node.op_type == "DequantizeLinear":
                t = self.consts.get(node.input[0])
        return int(np.prod(t.dims)) if t is not None else None

    def const_source(
        self, name: str
    ) -> tuple[str, tuple[int, ...] | None, onnx.NodeProto | None] | None:
        """Where a weight comes from: ``(initializer, perm, dequantize)`` when ``name`` is an
        initializer, possibly behind Identity/Cast, a Transpose (``perm``) or a
        ``DequantizeLinear`` (the node, whose scale and zero point give the float weight)."""
        perm: tuple[int, ...] | None = None
        deq: onnx.NodeProto | None = None
        for _ in range(4):
            if name in self.inits:
                return name, perm, deq
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type in ("Identity", "Cast"):
                name = node.input[0]
            elif node.op_type == "Transpose" and perm is None:
                src = node.input[0]
                p = attr(node, "perm")
                dims = len(self.inits[src].dims) if src in self.inits else None
                if p is None and dims is None:
                    return None
                perm = tuple(p) if p else tuple(reversed(range(dims)))
                name = src
            elif node.op_type == "DequantizeLinear" and deq is None:
                deq = node
                name = node.input[0]
            else:
                return None
        return None

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        """The only node reading ``name`` (None when several do or it is a graph output)."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None
