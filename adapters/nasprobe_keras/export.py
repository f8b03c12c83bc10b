"""Keras layer graph → ONNX, keeping each layer's linear output apart from its activation.

Keras fuses the activation into ``Conv2D``/``Dense``; here every such layer becomes a linear
node (``Conv`` with its bias input, ``Gemm``, or ``MatMul`` + bias ``Add``) followed by a
separate nonlinearity node, so that both taps of docs/measures.md exist: ``linear`` is the linear
node's output, ``preact`` the nonlinearity's input (after ``BatchNormalization``).

Layout: Keras is channels-last. Spatial operators (convolution, pooling, batch norm on
rank > 2) run channels-first, as ONNX wants; a ``Transpose`` is inserted only where a tensor
changes layout (before the first convolution, before ``Flatten``/``Dense``/``Reshape``, and
before the graph outputs), so the graph inputs and outputs and the ``Flatten`` order are exactly
Keras's.

Every node carries metadata ``nasprobe.layer`` (the Keras layer name) and ``nasprobe.role``
(``linear``, ``bias``, ``batchnorm``, ``activation``, ``layout``, ``pool``, ``merge``...); the
linear node also carries ``nasprobe.channel_axis`` (axis of its output holding the channels).
Initializers that hold Keras variables are named ``<layer>/<variable>`` (``conv1/kernel``) and
described by :class:`WeightRef`, so a checkpoint's arrays can be put in ONNX layout per epoch
without re-exporting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from .builder import Builder, Tensor, UnsupportedLayerError, WeightRef
from .layers import convert_layer

__all__ = ["Converted", "convert", "export_onnx"]


@dataclass
class Converted:
    """Result of :func:`convert`: the ONNX model and where each weight initializer comes from."""

    model: onnx.ModelProto
    weights: dict[str, WeightRef] = field(default_factory=dict)


def _value_info(name: str, shape: tuple) -> onnx.ValueInfoProto:
    dims = ["N" if i == 0 else (None if d is None else int(d)) for i, d in enumerate(shape)]
    dims = [d if d is not None else f"{name}_d{i}" for i, d in enumerate(dims)]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _functional(model):
    graph = getattr(model, "_functional", None) or model
    if not hasattr(graph, "_nodes_by_depth"):
        raise UnsupportedLayerError(
            f"model {model.name!r} has no layer graph; build it with keras.Input(...) "
            "(or give --input-shape) before exporting")
    return graph


def convert(model) -> Converted:
    """Convert a built Keras model (Sequential or Functional) to ONNX.

    Args:
        model: a built ``keras.Model`` whose layers are supported (see ``layers.CONVERTERS``).

    Returns:
        :class:`Converted` with an ONNX model (inputs and outputs in Keras layout and names,
        float32, batch dimension ``N``) and the :class:`WeightRef` of each weight initializer.

    Raises:
        UnsupportedLayerError: naming the first layer or op that cannot be converted.
    """
    graph = _functional(model)
    b = Builder()
    values: dict[int, Tensor] = {}
    inputs = []
    for kt in graph.inputs:
        name = b.fresh(kt._keras_history.operation.name)
        values[id(kt)] = Tensor(name, tuple(kt.shape))
        inputs.append(_value_info(name, tuple(kt.shape)))
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            if any(id(x) not in values for x in node.input_tensors):
                continue
            args, _ = node.arguments.fill_in(values)
            outs = convert_layer(b, node.operation, args[0] if len(args) == 1 else list(args),
                                 [tuple(o.shape) for o in node.outputs])
            outs = outs if isinstance(outs, list) else [outs]
            for kt, t in zip(node.outputs, outs):
                values[id(kt)] = t
    outputs = []
    names = list(getattr(graph, "output_names", None) or [])
    for i, kt in enumerate(graph.outputs):
        t = values[id(kt)]
        layer = kt._keras_history.operation.name
        t = b.layout(t, False, layer)
        name = b.node("Identity", [t.name], layer, "output",
                      out=names[i] if i < len(names) else f"output_{i}")
        outputs.append(_value_info(name, tuple(kt.shape)))
    g = helper.make_graph(b.nodes, model.name, inputs, outputs, list(b.initializers.values()))
    onnx_model = helper.make_model(g, opset_imports=[helper.make_opsetid("", b.opset)],
                                   producer_name="nasprobe_keras")
    onnx_model.ir_version = 9 if b.opset < 21 else 10
    onnx.checker.check_model(onnx_model)
    return Converted(onnx_model, b.weights)


def export_onnx(model, path: str | Path | None = None) -> onnx.ModelProto:
    """The ONNX graph of a built Keras model with separate linear and activation nodes.

    Args:
        model: a built ``keras.Model`` (Sequential or Functional, channels-last).
        path: where to save the ``.onnx`` file, if given.

    Returns:
        The ``onnx.ModelProto`` (see :func:`convert`).
    """
    converted = convert(model)
    if path is not None:
        onnx.save(converted.model, str(path))
    return converted.model
