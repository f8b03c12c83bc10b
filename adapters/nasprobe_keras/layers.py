"""Per-layer conversion of Keras layers to ONNX nodes (see ``export`` for layout and naming).

Each converter takes the :class:`~nasprobe_keras.export.Builder`, the Keras layer, its input
:class:`~nasprobe_keras.export.Tensor` (a list for merge layers) and the Keras output shape,
and returns the output Tensor. Layers not in :data:`CONVERTERS` raise
:class:`~nasprobe_keras.export.UnsupportedLayerError` naming the layer and its class.
"""

from __future__ import annotations

import numpy as np

from .activations import activation
from .builder import Builder, Tensor, UnsupportedLayerError

__all__ = ["CONVERTERS", "convert_layer"]


def _same_pads(size, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow/Keras 'same' padding (extra pixel at the end) for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _padding_attrs(layer, x: Tensor, kernel, strides, dilations) -> dict:
    """ONNX ``pads``/``auto_pad`` for a Keras ``padding`` of valid, same or causal."""
    padding = layer.padding
    n = len(kernel)
    if padding == "valid":
        return {"pads": [0] * (2 * n)}
    if padding == "causal":
        return {"pads": [(kernel[0] - 1) * dilations[0], 0]}
    if padding != "same":
        raise UnsupportedLayerError(f"layer {layer.name!r}: padding {padding!r}")
    spatial = x.shape[1:-1]
    if any(s is None for s in spatial):
        return {"auto_pad": "SAME_UPPER"}
    pads = [_same_pads(int(s), k, st, d) for s, k, st, d in zip(spatial, kernel, strides,
                                                                 dilations)]
    return {"pads": [p[0] for p in pads] + [p[1] for p in pads]}


def _check_channels_last(layer):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise UnsupportedLayerError(f"layer {layer.name!r} ({type(layer).__name__}): only "
                                    "data_format='channels_last' is supported")


def _conv_node(b: Builder, layer, x: Tensor, kernel_name: str, bias: str | None, kernel,
               group: int, role: str, name: str) -> Tensor:
    strides = list(layer.strides)
    dil = list(layer.dilation_rate)
    attrs = _padding_attrs(layer, x, list(kernel), strides, dil)
    x = b.layout(x, True, name)
    inputs = [x.name, kernel_name] + ([bias] if bias else [])
    out = b.node("Conv", inputs, name, role, channel_axis=1, kernel_shape=list(kernel),
                 strides=strides, dilations=dil, group=group, **attrs)
    return out


def conv(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
    """Conv1D/2D/3D: ``Conv`` (bias as its third input), then the activation."""
    _check_channels_last(layer)
    k = b.weight(layer, "kernel", "conv_kernel")
    bias = b.weight(layer, "bias") if layer.use_bias else None
    out = _conv_node(b, layer, x, k, bias, layer.kernel_size, layer.groups, "linear",
                     layer.name)
    return activation(b, layer, Tensor(out, out_shape, True))


def depthwise(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
    """DepthwiseConv1D/2D: ``Conv`` with ``group`` = input channels, then the activation."""
    _check_channels_last(layer)
    k = b.weight(layer, "kernel", "depthwise_kernel")
    bias = b.weight(layer, "bias") if layer.use_bias else None
    out = _conv_node(b, layer, x, k, bias, layer.kernel_size, int(x.shape[-1]), "linear",
                     layer.name)
    return activation(b, layer, Tensor(out, out_shape, True))


def separable(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
    """SeparableConv1D/2D: depthwise ``Conv`` (its own layer ``<name>/depthwise``, no bias),
    pointwise 1x1 ``Conv`` with the bias (layer ``<name>``), then the activation."""
    _check_channels_last(layer)
    dk = b.weight(layer, "depthwise_kernel", "depthwise_kernel")
    dw = _conv_node(b, layer, x, dk, None, layer.kernel_size, int(x.shape[-1]), "linear",
                    f"{layer.name}/depthwise")
    mid = Tensor(dw, (*out_shape[:-1], None), True)
    pk = b.weight(layer, "pointwise_kernel", "conv_kernel")
    bias = b.weight(layer, "bias") if layer.use_bias else None
    n = len(layer.kernel_size)
    out = b.node("Conv", [mid.name, pk] + ([bias] if bias else []), layer.name, "linear",
                 channel_axis=1, kernel_shape=[1] * n)
    return activation(b, layer, Tensor(out, out_shape, True))


def dense(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
    """Dense: ``Gemm`` on (N, D); ``MatMul`` + bias ``Add`` on (N, ..., D); then activation."""
    x = b.layout(x, False, layer.name)
    k = b.weight(layer, "kernel")
    bias = b.weight(layer, "bias") if layer.use_bias else None
    if x.rank == 2:
        out = b.node("Gemm", [x.name, k] + ([bias] if bias else []), layer.name, "linear",
                     channel_axis=1)
    else:
        mm = b.node("MatMul", [x.name, k], layer.name, "linear" if not bias else "matmul",
                    channel_axis=x.rank - 1)
        out = mm if not bias else b.node("Add", [mm, bias], layer.name, "linear",
                                         channel_axis=x.rank - 1)
    return activation(b, layer, Tensor(out, out_shape, False))


def batchnorm(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
    """BatchNormalization (inference: moving statistics) on the last axis."""
    if layer.axis not in (-1, x.rank - 1) and list(np.atleast_1d(layer.axis)) != [x.rank - 1]:
        raise UnsupportedLayerError(f"layer {layer.name!r}: BatchNormalization on axis "
                                    f"{layer.axis} (only the last, channel axis)")
    x = b.layout(x, True, layer.name)
    d = int(x.shape[-1])
    gamma = (b.weight(layer, "gamma") if layer.scale
             else b.const(layer.name, "gamma", np.ones(d, np.float32)))
    beta = (b.weight(layer, "beta") if layer.center
            else b.const(layer.name, "beta", np.zeros(d, np.float32)))
    mean, var = b.weight(layer, "moving_mean"), b.weight(layer, "moving_variance")
    out = b.node("BatchNormalization", [x.name, gamma, beta, mean, var], layer.name,
                 "batchnorm", channel_axis=1 if x.cf or x.rank == 2 else None,
                 epsilon=float(layer.epsilon))
    return Tensor(out, out_shape, x.cf)


def activation_layer(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
    """Activation, ReLU, LeakyReLU, ELU, Softmax layers."""
    return activation(b, layer, x)


def _pool(op: str):
    def convert_pool(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
        """MaxPooling/AveragePooling 1D/2D/3D (padding 'same' excludes the pad, as Keras)."""
        _check_channels_last(layer)
        kernel, strides = list(layer.pool_size), list(layer.strides)
        attrs = _padding_attrs(layer, x, kernel, strides, [1] * len(kernel))
        x = b.layout(x, True, layer.name)
        out = b.node(op, [x.name], layer.name, "pool", kernel_shape=kernel, strides=strides,
                     **attrs)
        return Tensor(out, out_shape, True)
    return convert_pool


def _global_pool(op: str):
    def convert_global(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
        """GlobalAverage/GlobalMax pooling over the spatial axes (``keepdims`` honoured)."""
        _check_channels_last(layer)
        axes = list(range(2, x.rank)) if x.cf else list(range(1, x.rank - 1))
        ax = b.const(layer.name, "axes", np.array(axes, np.int64))
        out = b.node(op, [x.name, ax], layer.name, "pool", keepdims=int(bool(layer.keepdims)))
        return Tensor(out, out_shape, x.cf and len(out_shape) > 2)
    return convert_global


def flatten(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
    """Flatten in Keras (channels-last) order."""
    x = b.layout(x, False, layer.name)
    return Tensor(b.node("Flatten", [x.name], layer.name, "reshape", axis=1), out_shape)


def reshape(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
    """Reshape (Keras order)."""
    x = b.layout(x, False, layer.name)
    shape = b.const(layer.name, "shape", np.array([0, *layer.target_shape], np.int64))
    return Tensor(b.node("Reshape", [x.name, shape], layer.name, "reshape"), out_shape)


def identity(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
    """Dropout and noise layers: the identity at inference; no node."""
    return x


def zero_padding(b: Builder, layer, x: Tensor, out_shape) -> Tensor:
    """ZeroPadding1D/2D/3D."""
    _check_channels_last(layer)
    pad = [tuple(p) if isinstance(p, (tuple, list)) else (p, p) for p in
           (layer.padding if isinstance(layer.padding[0], (tuple, list)) or x.rank > 3
            else [layer.padding])]
    x = b.layout(x, True, layer.name)
    pads = [0, 0] + [p[0] for p in pad] + [0, 0] + [p[1] for p in pad]
    out = b.node("Pad", [x.name, b.const(layer.name, "pads", np.array(pads, np.int64))],
                 layer.name, "pad")
    return Tensor(out, out_shape, True)


def _merge(op: str, mean: bool = False):
    def convert_merge(b: Builder, layer, xs, out_shape) -> Tensor:
        """Add/Subtract/Multiply/Maximum/Minimum/Average of tensors of equal rank."""
        cf = all(t.cf for t in xs) or (xs[0].cf and len({t.rank for t in xs}) == 1)
        xs = [b.layout(t, cf, layer.name) for t in xs]
        if op in ("Sum", "Max", "Min") or mean:
            out = b.node("Mean" if mean else op, [t.name for t in xs], layer.name, "merge")
        else:
            out = xs[0].name
            for t in xs[1:]:
                out = b.node(op, [out, t.name], layer.name, "merge")
        return Tensor(out, out_shape, cf and len(out_shape) > 2)
    return convert_merge


def concatenate(b: Builder, layer, xs, out_shape) -> Tensor:
    """Concatenate along the Keras ``axis`` (mapped to the stored layout)."""
    r = len(out_shape)
    axis = layer.axis % r
    cf = all(t.cf for t in xs) and axis != 0
    xs = [b.layout(t, cf, layer.name) for t in xs]
    if cf:
        axis = 1 if axis == r - 1 else axis + 1
    out = b.node("Concat", [t.name for t in xs], layer.name, "merge", axis=axis)
    return Tensor(out, out_shape, cf)


CONVERTERS = {
    "Conv1D": conv, "Conv2D": conv, "Conv3D": conv,
    "DepthwiseConv1D": depthwise, "DepthwiseConv2D": depthwise,
    "SeparableConv1D": separable, "SeparableConv2D": separable,
    "Dense": dense,
    "BatchNormalization": batchnorm,
    "Activation": activation_layer, "ReLU": activation_layer,
    "LeakyReLU": activation_layer, "ELU": activation_layer, "Softmax": activation_layer,
    "MaxPooling1D": _pool("MaxPool"), "MaxPooling2D": _pool("MaxPool"),
    "MaxPooling3D": _pool("MaxPool"),
    "AveragePooling1D": _pool("AveragePool"), "AveragePooling2D": _pool("AveragePool"),
    "AveragePooling3D": _pool("AveragePool"),
    "GlobalAveragePooling1D": _global_pool("ReduceMean"),
    "GlobalAveragePooling2D": _global_pool("ReduceMean"),
    "GlobalAveragePooling3D": _global_pool("ReduceMean"),
    "GlobalMaxPooling1D": _global_pool("ReduceMax"),
    "GlobalMaxPooling2D": _global_pool("ReduceMax"),
    "GlobalMaxPooling3D": _global_pool("ReduceMax"),
    "Flatten": flatten, "Reshape": reshape,
    "Dropout": identity, "SpatialDropout1D": identity, "SpatialDropout2D": identity,
    "SpatialDropout3D": identity, "GaussianNoise": identity, "GaussianDropout": identity,
    "AlphaDropout": identity, "ActivityRegularization": identity,
    "ZeroPadding1D": zero_padding, "ZeroPadding2D": zero_padding,
    "ZeroPadding3D": zero_padding,
    "Add": _merge("Sum"), "Subtract": _merge("Sub"), "Multiply": _merge("Mul"),
    "Maximum": _merge("Max"), "Minimum": _merge("Min"), "Average": _merge("Sum", mean=True),
    "Concatenate": concatenate,
}


def convert_layer(b: Builder, layer, x, out_shapes: list[tuple]):
    """Convert one call of ``layer`` on ``x`` (Tensor or list); returns the output Tensor."""
    import keras  # deferred: the module is importable for its table without a backend

    kind = type(layer).__name__
    if not isinstance(layer, keras.layers.Layer):
        raise UnsupportedLayerError(f"op {layer.name!r} ({kind}) is a keras.ops call, not a "
                                    "layer; wrap it in a supported layer")
    if kind not in CONVERTERS:
        raise UnsupportedLayerError(
            f"layer {layer.name!r} of type {kind} is not supported by the Keras→ONNX "
            f"converter (supported: {', '.join(sorted(CONVERTERS))})")
    if len(out_shapes) != 1:
        raise UnsupportedLayerError(f"layer {layer.name!r} ({kind}) has several outputs")
    return CONVERTERS[kind](b, layer, x, out_shapes[0])
