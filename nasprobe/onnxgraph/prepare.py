"""Third-party ONNX files made probe-ready in memory (docs/onnx.md).

:func:`prepare_model` applies, in order: local functions inlined (``onnx.inliner``); opsets 7-12
upgraded to 13 with ``onnx.version_converter``; float16 / bfloat16 tensors widened to float32
(so NAS and the forward pass run in float32 on every execution provider); a graph input that is
not float32 fed through a ``Cast`` from a float32 input (probe sets are float32). What it did is
returned as provenance notes, which the store keeps per run. The file itself is never changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto, helper, numpy_helper

from nasprobe.errors import GraphError

from .index import opset_of
from .taps import untappable

__all__ = [
    "Prepared",
    "prepare_model",
    "MIN_OPSET",
    "upgrade_opset",
    "widen_half",
    "float_input",
    "constants_to_initializers",
]

#: The oldest default-domain opset the tapped graph is built at; older files are upgraded.
MIN_OPSET = 13
_HALF = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}


@dataclass
class Prepared:
    """A probe-ready model and what was done to it (``notes``: JSON-able provenance)."""

    model: onnx.ModelProto
    notes: dict = field(default_factory=dict)


def constants_to_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose main-graph ``Constant`` nodes holding a tensor (``value``)
    are initializers of the same name (some exporters, e.g. older paddle2onnx, store every
    weight so), and how many were moved; ``model`` itself, not copied, when there is none.
    Weights must be initializers to be found and swapped per epoch."""
    if not any(_movable(n) for n in model.graph.node):
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep, moved = [], 0
    for n in out.graph.node:
        value = _movable(n)
        if value is not None:
            t = onnx.TensorProto()
            t.CopyFrom(value)
            t.name = n.output[0]
            out.graph.initializer.append(t)
            if out.ir_version < 4:  # initializers were graph inputs before IR 4
                out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
            moved += 1
        else:
            keep.append(n)
    if moved:
        del out.graph.node[:]
        out.graph.node.extend(keep)
    return out, moved


def _movable(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor of a ``Constant`` node that :func:`constants_to_initializers` moves, or None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or not node.output:
        return None
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return a.t
    return None


def _old_op(model: onnx.ModelProto, message: str) -> str:
    """The operator an upgrade error is about: named in the message, else the graph's ops."""
    ops = sorted({n.op_type for n in model.graph.node})
    named = [op for op in ops if re.search(rf"(?<![A-Za-z]){re.escape(op)}(?![A-Za-z])", message)]
    return ", ".join(named or ops)


def upgrade_opset(model: onnx.ModelProto, source: str, target: int = MIN_OPSET) -> onnx.ModelProto:
    """``model`` converted to default-domain opset ``target`` by ``onnx.version_converter``.

    Raises:
        GraphError: the converter cannot upgrade an operator (the message names the file,
            the operator and the opset).
    """
    from onnx import version_converter

    old = opset_of(model)
    try:
        new = version_converter.convert_version(model, target)
        onnx.checker.check_model(new)
    except Exception as exc:  # the converter raises RuntimeError / IndexError / checker errors
        text = str(exc)
        if "no registered schema" in text:
            why = "was removed from ONNX and has no upgrade"
        else:
            why = (
                "cannot be upgraded ("
                + (text.strip().splitlines() or [type(exc).__name__])[0]
                + ")"
            )
        raise GraphError(
            source,
            f"cannot upgrade opset {old} to {target}: operator "
            f"{_old_op(model, text)} at opset {old} {why}; re-export the model "
            f"at opset >= {target}",
        ) from exc
    return new


def _widen_tensor(t: onnx.TensorProto) -> bool:
    if t.data_type not in _HALF:
        return False
    arr = numpy_helper.to_array(t).astype("float32")
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return True


def _widen_type(tp: onnx.TypeProto) -> None:
    if tp.HasField("tensor_type") and tp.tensor_type.elem_type in _HALF:
        tp.tensor_type.elem_type = TensorProto.FLOAT


def _widen_graph(g: onnx.GraphProto, found: set[str]) -> None:
    for t in g.initializer:
        dtype = _HALF.get(t.data_type)
        if _widen_tensor(t):
            found.add(dtype)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type in _HALF:
            found.add(_HALF[vi.type.tensor_type.elem_type])
        _widen_type(vi.type)
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                dtype = _HALF.get(a.t.data_type)
                if _widen_tensor(a.t):
                    found.add(dtype)
            elif a.type == onnx.AttributeProto.GRAPH:
                _widen_graph(a.g, found)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _widen_graph(sub, found)
            elif (
                a.name in ("to", "dtype", "output_dtype")
                and a.type == onnx.AttributeProto.INT
                and a.i in _HALF
            ):
                found.add(_HALF[a.i])
                a.i = TensorProto.FLOAT


def widen_half(model: onnx.ModelProto) -> list[str]:
    """Make ``model``'s float16 / bfloat16 initializers, constants, casts and value types
    float32, in place (exact: both widen to float32 without rounding); returns the half types
    found."""
    found: set[str] = set()
    _widen_graph(model.graph, found)
    return sorted(found)


def float_input(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """``model`` fed through a float32 input: when its first input has another element type
    (an integer or double), a ``Cast`` to that type is put after a new float32 input of the
    same name and shape. Returns the model and the original type name (None when unchanged)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        return model, None
    vi = inputs[0]
    elem = vi.type.tensor_type.elem_type
    if elem in (TensorProto.FLOAT, 0):
        return model, None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    name = vi.name
    inner = f"nasprobe/input_{helper.tensor_dtype_to_np_dtype(elem).name}"
    for n in out.graph.node:
        for i, x in enumerate(n.input):
            if x == name:
                n.input[i] = inner
    for g_in in out.graph.input:
        if g_in.name == name:
            g_in.type.tensor_type.elem_type = TensorProto.FLOAT
    out.graph.node.insert(
        0, helper.make_node("Cast", [name], [inner], to=elem, name="nasprobe/input_cast")
    )
    return out, helper.tensor_dtype_to_np_dtype(elem).name


def _negative_dims_symbolic(model: onnx.ModelProto) -> None:
    """Dimensions written as ``-1`` (some exporters' "dynamic") become symbolic, in place."""
    for vi in list(model.graph.input) + list(model.graph.output):
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value < 0:
                d.dim_param = f"{vi.name}_dim{i}"


def prepare_model(model: onnx.ModelProto, source: str) -> Prepared:
    """``model`` made probe-ready (see the module docstring); ``source`` names the file in
    errors. ``notes`` records: ``opset`` (after), ``opset_original`` (when upgraded),
    ``functions_inlined``, ``constants_as_initializers``, ``weights_dtype`` /
    ``compute_dtype`` (when half types were widened), ``input_dtype`` (when a Cast was put
    in front), ``not_probed`` (layers inside control flow or integer-quantised, with the
    reason)."""
    from .guard import check_inlining, rehearse

    notes: dict = {}
    given = model  # left as it is: the steps below edit a copy (one copy at most of the weights)
    if len(model.functions):
        check_inlining(model, source)
    before = opset_of(model)
    rehearse(model, source, inline=bool(len(model.functions)),
             upgrade_to=MIN_OPSET if before is not None and 7 <= before < MIN_OPSET else None)
    if len(model.functions):
        from onnx import inliner

        notes["functions_inlined"] = len(model.functions)
        model = inliner.inline_local_functions(model)
    model, moved = constants_to_initializers(model)
    if moved:
        notes["constants_as_initializers"] = moved
    opset = opset_of(model)
    if opset is None:
        raise GraphError(
            source, "imports no default-domain (ai.onnx) opset; not a model nasprobe can tap"
        )
    if opset < MIN_OPSET:
        if opset < 7:
            raise GraphError(
                source,
                f"opset {opset} is older than 7, which onnx's version "
                "converter cannot upgrade; re-export the model",
            )
        model = upgrade_opset(model, source)
        notes["opset_original"] = opset
    notes["opset"] = opset_of(model)
    if model is given:
        model = onnx.ModelProto()
        model.CopyFrom(given)
    halves = widen_half(model)  # in place, on this copy
    if halves:
        notes["weights_dtype"] = "+".join(halves)
        notes["compute_dtype"] = "float32"
    _negative_dims_symbolic(model)
    model, in_dtype = float_input(model)
    if in_dtype:
        notes["input_dtype"] = in_dtype
    inits = {t.name for t in model.graph.initializer}
    feeds = [i.name for i in model.graph.input if i.name not in inits]
    if len(feeds) > 1:
        raise GraphError(
            source,
            f"has {len(feeds)} inputs ({', '.join(feeds)}); nasprobe feeds "
            "the probe set to a model with one input",
        )
    refused = untappable(model)
    if refused:
        notes["not_probed"] = refused
    return Prepared(model, notes)
