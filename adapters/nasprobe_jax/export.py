"""Flax NNX module → ONNX through jax2onnx, once per run, with Flax module paths as layer names.

jax2onnx names every tensor generically (``kernel_oih_0``, ``const_3``) and may lay a weight out
differently (a ``(3, 3, C_in, C_out)`` Conv kernel becomes an ``(C_out, C_in, 3, 3)``
initializer). To know which initializer is which parameter, the module is exported once with
*tag values*: every float parameter and batch statistic is replaced by its own random numbers,
so each initializer's multiset of values names exactly one parameter, and the axes permutation
that maps the parameter onto the initializer is found by trying them. This layout is then used
for every epoch: a checkpoint's arrays are permuted into the graph's initializers, and the
graph is never re-exported. The tag values never reach the probe: :func:`export_module` fills
every matched initializer with the module's own weights.

The export is refused (``GraphError``) when it could mislabel a tap: a Conv/Linear kernel that
no Conv/Gemm/MatMul node reads as it is, or a BatchNorm whose statistics are not the inputs of
a ``BatchNormalization`` node (folded into the Conv, a linear tap would measure BatchNorm's
output). Node metadata ``nasprobe.layer`` on each linear operator holds the module path
(``conv1``, ``block2.conv``); ``nasprobe.onnxgraph.taps.find_taps`` reads it (docs/adapters.md).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from nasprobe.contract import LAYER_KEY, set_node_metadata
from nasprobe.errors import GraphError, NasprobeError

from .loading import ParamPath, flatten_tree

__all__ = ["Exported", "Placement", "module_arrays", "export_module", "export_onnx",
           "label_and_verify", "LINEAR_OPS"]

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Operators that may sit between an initializer and the linear node reading it.
_WEIGHT_VIEWS = ("Identity", "Cast", "Transpose", "Reshape")
METADATA_LAYOUT = "nasprobe.jax.weights"


@dataclass(frozen=True)
class Placement:
    """How one parameter becomes one initializer: ``param.transpose(perm).reshape(shape)``."""

    path: ParamPath
    perm: tuple[int, ...] | None
    shape: tuple[int, ...]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The initializer's float32 array from the parameter's array."""
        a = np.asarray(array, dtype=np.float32)
        if self.perm is not None:
            a = a.transpose(self.perm)
        return np.ascontiguousarray(a.reshape(self.shape))


@dataclass
class Exported:
    """An exported graph and how its initializers map to the module's parameters.

    Attributes:
        model: the ONNX model (float32, dynamic batch axis, the module's own weights).
        layout: initializer name → :class:`Placement`.
        shapes: every parameter path the graph uses → its shape in the module.
        layers: module paths of the linear operators, in graph order.
    """

    model: onnx.ModelProto
    layout: dict[str, Placement] = field(default_factory=dict)
    shapes: dict[ParamPath, tuple[int, ...]] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)

    def initializers(self, params: dict[ParamPath, np.ndarray]) -> dict[str, np.ndarray]:
        """Initializer name → float32 array, from one epoch's ``{path: array}``."""
        return {name: place.apply(params[place.path]) for name, place in self.layout.items()}


def module_arrays(module) -> dict[ParamPath, np.ndarray]:
    """The float parameters and statistics of an NNX module, ``{path: numpy array}``.

    Random-number state (``nnx.RngState``) and non-float variables are left out; the paths are
    those of ``nnx.state(module)`` and of the checkpoints written from it.
    """
    from flax import nnx

    pure = nnx.to_pure_dict(nnx.state(module, nnx.Not(nnx.RngState)))
    return {k: v for k, v in flatten_tree(pure).items() if np.issubdtype(v.dtype, np.floating)}


def _with_values(module, values: dict[ParamPath, np.ndarray]):
    """A copy of ``module`` in eval mode whose float variables hold ``values``."""
    from flax import nnx

    graphdef, state = nnx.split(module)
    pure = nnx.to_pure_dict(state)
    for path, value in values.items():
        node = pure
        for key in path[:-1]:
            node = node[key if key in node else int(key)]
        last = path[-1] if path[-1] in node else int(path[-1])
        node[last] = value
    nnx.replace_by_pure_dict(state, pure)
    copy = nnx.merge(graphdef, state)
    copy.eval()
    return copy


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's notices (warnings, onnx_ir's serialisation log, prints)."""
    log = logging.getLogger("onnx_ir")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


#: jax2onnx plugin folders a Flax model never needs: the Equinox plugins build and jit whole
#: example Equinox models when imported (about 6 s of CPU, half of a small model's export),
#: and the examples are the exporter's own test cases.
_SKIPPED_PLUGINS = ("equinox", "examples")


def _load_plugins() -> None:
    """Import jax2onnx's operator plugins for JAX and Flax only, once per process.

    jax2onnx imports every module under ``jax2onnx/plugins`` on its first export unless told
    it has; this imports all but :data:`_SKIPPED_PLUGINS` and says so. Should jax2onnx's
    discovery change (no ``_already_imported_plugins`` flag), nothing is done here and the
    exporter imports everything itself: slower, same graph.
    """
    import importlib

    from jax2onnx.plugins import plugin_system

    if getattr(plugin_system, "_already_imported_plugins", True):
        return
    root = Path(plugin_system.__file__).parent
    for py in sorted(root.rglob("*.py")):
        rel = py.relative_to(root).with_suffix("")
        if rel.parts[0] in _SKIPPED_PLUGINS or py.name in ("__init__.py", "plugin_system.py"):
            continue
        with _quiet():
            importlib.import_module(".".join(("jax2onnx", "plugins", *rel.parts)))
    plugin_system._already_imported_plugins = True


def _run_exporter(module, input_shape: Sequence[int], origin: str) -> onnx.ModelProto:
    from jax2onnx import to_onnx

    _load_plugins()
    try:
        with _quiet():
            return to_onnx(module, [("B", *[int(s) for s in input_shape])],
                           model_name=type(module).__name__)
    except Exception as exc:  # the exporter raises many kinds
        raise NasprobeError(f"{origin}: jax2onnx could not export the module "
                            f"({exc.__class__.__name__}: {str(exc).strip()[:600]})") from exc


def _placement(param: np.ndarray, init: np.ndarray, path: ParamPath) -> Placement | None:
    """The axes permutation (then reshape) that turns ``param`` into ``init``, if any."""
    if param.size != init.size or param.ndim > 6:
        return None
    for perm in itertools.permutations(range(param.ndim)):
        if np.array_equal(param.transpose(perm).reshape(init.shape), init):
            identity = perm == tuple(range(param.ndim))
            return Placement(path, None if identity else perm, tuple(init.shape))
    return None


def _tag_values(arrays: dict[ParamPath, np.ndarray], seed: int = 0
                ) -> tuple[dict[ParamPath, np.ndarray], dict[bytes, ParamPath]]:
    """Distinct random float32 values per parameter, and ``{sorted values' bytes: path}``."""
    rng = np.random.default_rng(seed)
    tags, index = {}, {}
    for path, array in arrays.items():
        tag = rng.standard_normal(array.shape).astype(np.float32)
        key = np.sort(tag.ravel()).tobytes()
        if key in index:  # pragma: no cover - probability ~0
            raise NasprobeError(f"tag values of {path} and {index[key]} coincide; retry")
        tags[path], index[key] = tag, path
    return tags, index


def _match(graph: onnx.GraphProto, tags: dict[ParamPath, np.ndarray],
           index: dict[bytes, ParamPath]) -> dict[str, Placement]:
    layout = {}
    for init in graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                  onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            continue
        array = numpy_helper.to_array(init).astype(np.float32)
        path = index.get(np.sort(array.ravel()).tobytes())
        if path is None:
            continue
        place = _placement(tags[path], array, path)
        if place is not None:
            layout[init.name] = place
    return layout


def _weight_source(producer: dict[str, onnx.NodeProto], name: str,
                   layout: dict[str, Placement]) -> Placement | None:
    """The parameter behind a node input: an initializer, possibly behind views of it."""
    for _ in range(8):
        if name in layout:
            return layout[name]
        node = producer.get(name)
        if node is None or node.op_type not in _WEIGHT_VIEWS:
            return None
        name = node.input[0]
    return None


def label_and_verify(module, graph: onnx.GraphProto, layout: dict[str, Placement],
                     origin: str) -> list[str]:
    """Set ``nasprobe.layer`` on each linear node whose weight is a module's kernel; refuse a
    graph that would mislabel taps (module docstring).

    Args:
        module: the NNX module that was exported.
        graph: the exported graph (its nodes' metadata is changed in place).
        layout: initializer name → :class:`Placement`, from the tag values.
        origin: the ``--model`` or file, for messages.

    Returns:
        The module paths of the linear nodes, in graph order.

    Raises:
        GraphError: a Conv/Linear module whose kernel no linear node reads, or a BatchNorm
            whose mean and var are not the inputs of a ``BatchNormalization`` node.
    """
    from flax import nnx

    linear_types = (nnx.Conv, nnx.ConvTranspose, nnx.Linear, nnx.LinearGeneral)
    modules = [(".".join(str(p) for p in path), m) for path, m in nnx.iter_modules(module)]
    producer = {o: n for n in graph.node for o in n.output}

    def param_of(name: str) -> str | None:
        place = _weight_source(producer, name, layout)
        return ".".join(place.path) if place else None

    layers, tagged = [], set()
    for node in graph.node:
        if node.op_type not in LINEAR_OPS or len(node.input) < 2:
            continue
        place = _weight_source(producer, node.input[1], layout)
        if place is None or place.path[-1] != "kernel":
            continue
        layer = ".".join(place.path[:-1])
        set_node_metadata(node, LAYER_KEY, layer)
        layers.append(layer)
        tagged.add(layer)
    for name, m in modules:
        if isinstance(m, linear_types) and name not in tagged:
            raise GraphError(origin, f"module {name!r} ({type(m).__name__}): no Conv/Gemm/"
                             "MatMul node of the exported graph reads its kernel as it is "
                             "(unused module, or the exporter changed it); refused")
    bn_inputs = {(param_of(n.input[3]), param_of(n.input[4])) for n in graph.node
                 if n.op_type == "BatchNormalization" and len(n.input) >= 5}
    for name, m in modules:
        if isinstance(m, nnx.BatchNorm):
            want = (f"{name}.mean", f"{name}.var") if name else ("mean", "var")
            if want not in bn_inputs:
                raise GraphError(origin, f"BatchNorm {name!r} is not a BatchNormalization "
                                 "node of the exported graph reading its mean and var (folded "
                                 "into the Conv?); refused, since linear taps would be "
                                 "mislabelled")
    return layers


def export_module(module, input_shape: Sequence[int], origin: str = "model") -> Exported:
    """Export an NNX module once, labelled and verified (see the module docstring).

    Args:
        module: a ``flax.nnx.Module`` taking one ``(N, *input_shape)`` array (exported in
            eval mode: BatchNorm uses its running statistics, Dropout is off).
        input_shape: one sample's shape without the batch axis, as the module takes it,
            e.g. ``(H, W, C)``.
        origin: the file or ``--model`` this came from, for messages.

    Returns:
        :class:`Exported` holding the module's own weights; the graph's input is
        ``(B, *input_shape)`` float32.

    Raises:
        NasprobeError: the exporter failed; GraphError: the graph cannot be labelled honestly.
    """
    arrays = module_arrays(module)
    tags, index = _tag_values(arrays)
    proto = _run_exporter(_with_values(module, tags), input_shape, origin)
    # jax2onnx may record an NHWC shape for a tensor its layout pass made NCHW; drop its
    # intermediate shapes (onnx shape inference recomputes them where needed).
    del proto.graph.value_info[:]
    layout = _match(proto.graph, tags, index)
    layers = label_and_verify(module, proto.graph, layout, origin)
    shapes = {p.path: tuple(arrays[p.path].shape) for p in layout.values()}
    exported = Exported(proto, layout, shapes, layers)
    fill = exported.initializers(arrays)
    for init in proto.graph.initializer:
        if init.name in fill:
            init.CopyFrom(numpy_helper.from_array(fill[init.name], init.name))
    proto.metadata_props.add(key=METADATA_LAYOUT, value=json.dumps(
        {name: [".".join(p.path), list(p.perm) if p.perm else None]
         for name, p in layout.items()}))
    return exported


def export_onnx(module, input_shape: Sequence[int],
                path: str | Path | None = None) -> onnx.ModelProto:
    """Export a Flax NNX module to ONNX as nasprobe probes it, optionally writing ``path``.

    Args:
        module: the ``flax.nnx.Module`` (its current weights are exported).
        input_shape: one sample's shape without the batch axis, e.g. ``(28, 28, 1)``.
        path: where to write the ``.onnx`` file (parent folders are created); ``None``: don't.

    Returns:
        The ONNX model: float32, BatchNorm kept, dynamic batch axis, node metadata
        ``nasprobe.layer`` holding each Conv/Linear module's path.
    """
    exported = export_module(module, input_shape, origin=str(path or type(module).__name__))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(exported.model, str(path))
    return exported.model
