"""Tap outputs in onnxruntime's blocked channel layout, where its CPU provider computes them so.

On x86 CPUs onnxruntime runs convolutions in a blocked layout (NCHWc: channels in blocks of 8
or 16, each location's block of channels side by side) and converts a tensor back to NCHW
where it leaves the graph. A plain model has one such conversion, at its end; a tapped one has
one per tap, each a full extra pass over the tap tensor (ResNet-like models: about a tenth of
the forward pass). The host NAS kernel reads the blocked layout as it is
(:func:`nasprobe.measures.kernels.nas_map_blocked`), so these conversions are worth removing.

:func:`plan_blocked` does it once per architecture: it lets onnxruntime optimise the tapped
graph, takes the conversions of the tap outputs out of the optimised graph, and learns how the
optimiser rearranged the weights (reordered, padded: a fixed gather per tensor) by optimising
the graph once more with every weight element replaced by a code that names it. Each epoch's
weights are then gathered into the optimised graph (:meth:`BlockedGraph.arrays`) and run
without optimising again. The plan is used only when it reproduces the tapped graph's own
outputs on a probe image; any rearrangement that is not a gather (a BatchNorm after a linear
tap, which onnxruntime turns into products of its parameters) leaves the graph as it was.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from nasprobe.measures.nchwc import Block, unblock

from .weights import Placed, WeightPlacer

__all__ = ["BlockedGraph", "plan_blocked", "CODE_LIMIT"]

#: float32 counts integers exactly up to 2**24: the weight codes of one optimisation run stay below
CODE_LIMIT = 2 ** 24 - 2
_REORDER = "ReorderOutput"
_NCHWC = "com.microsoft.nchwc"


@dataclass
class _Gather:
    """One initializer of the optimised graph: ``shape`` and per element where it comes from
    in ``sources`` (flattened and concatenated after a leading 0.0 for padding)."""

    shape: tuple[int, ...]
    sources: list[str]
    index: np.ndarray | None  # None: the single source as it is


@dataclass
class BlockedGraph:
    """The optimised tapped graph with ``blocks`` (output name → :class:`Block`) left blocked,
    to be run with onnxruntime's graph optimisations off.

    ``gathers`` say how each of its weight initializers comes from the tapped graph's;
    ``fixed`` holds the tapped graph's initializers that were not coded (scalars, integers):
    an epoch whose values differ is run the ordinary way."""

    model: onnx.ModelProto
    blocks: dict[str, Block]
    gathers: dict[str, _Gather]
    fixed: dict[str, np.ndarray]
    placer: WeightPlacer = field(init=False)

    def __post_init__(self):
        self.placer = WeightPlacer(self.model)

    def place(self, arrays: dict[str, np.ndarray], defaults) -> Placed | None:
        """:meth:`arrays` placed into the optimised graph
        (:meth:`nasprobe.job.weights.WeightPlacer.place`); None where the plan does not apply."""
        mapped = self.arrays(arrays, defaults)
        return None if mapped is None else self.placer.place(mapped)

    def arrays(self, arrays: dict[str, np.ndarray], defaults) -> dict[str, np.ndarray] | None:
        """The optimised graph's weight initializers for a checkpoint's ``arrays`` (tapped-graph
        name → array of the graph's dtype and shape); ``defaults(name)`` gives a tapped-graph
        initializer the checkpoint does not hold. None when a fixed initializer has another
        value in this checkpoint (the plan does not apply)."""
        for name, value in self.fixed.items():
            if name in arrays and not np.array_equal(arrays[name], value, equal_nan=True):
                return None
        out = {}
        for name, g in self.gathers.items():
            srcs = [arrays[s] if s in arrays else defaults(s) for s in g.sources]
            if g.index is None:
                out[name] = np.ascontiguousarray(srcs[0], np.float32).reshape(g.shape)
                continue
            flat = np.concatenate([np.zeros(1, np.float32)]
                                  + [np.asarray(s, np.float32).ravel() for s in srcs])
            out[name] = flat[g.index].reshape(g.shape)
        return out


def plan_blocked(model: onnx.ModelProto, fetch: list[str], sample: np.ndarray, input_name: str,
                 reference: list[np.ndarray]) -> BlockedGraph | None:
    """The tapped graph ``model`` optimised by onnxruntime's CPU provider with the outputs
    ``fetch`` left in blocked layout, or None where there is nothing to gain or the plan does
    not reproduce ``reference`` (the tapped graph's ``fetch`` outputs for ``sample``).

    Costs one onnxruntime optimisation per :data:`CODE_LIMIT` weight elements and one session.
    """
    try:
        return _plan(model, fetch, sample, input_name, reference)
    except Exception:  # noqa: BLE001 - any surprise from the optimiser: keep the tapped graph
        return None


def _coded(model: onnx.ModelProto) -> tuple[list[list[str]], dict[str, np.ndarray]] | None:
    """Groups of the float32 initializers to code (each under :data:`CODE_LIMIT` elements) and
    the others' values; None when a tensor is too large or of another float type."""
    groups: list[list[str]] = [[]]
    room = CODE_LIMIT
    fixed = {}
    for t in model.graph.initializer:
        size = int(np.prod(t.dims, dtype=np.int64))
        if t.data_type == onnx.TensorProto.FLOAT and size >= 2:
            if size > CODE_LIMIT:
                return None
            if size > room:
                groups.append([])
                room = CODE_LIMIT
            groups[-1].append(t.name)
            room -= size
        elif t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                             onnx.TensorProto.DOUBLE) and size >= 2:
            return None
        else:
            fixed[t.name] = numpy_helper.to_array(t)
    return [g for g in groups if g], fixed


def _optimised(model: onnx.ModelProto, arrays: dict[str, np.ndarray], folder: str,
               name: str) -> onnx.ModelProto:
    """``model`` with ``arrays`` written in, as onnxruntime's CPU provider optimises it."""
    import onnxruntime as ort

    placer = WeightPlacer(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = os.path.join(folder, name)
    placed = placer.place(arrays)
    if placed.names:
        opts.add_external_initializers(placed.names, placed.values)
    ort.InferenceSession(placed.model, opts, providers=["CPUExecutionProvider"])
    return onnx.load(opts.optimized_model_filepath)


def _plan(model, fetch, sample, input_name, reference) -> BlockedGraph | None:
    import onnxruntime as ort

    coded = _coded(model)
    if coded is None:
        return None
    groups, fixed = coded
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    with tempfile.TemporaryDirectory(prefix="nasprobe-blocked-") as folder:
        runs, codes = [], []
        for g, names in enumerate(groups or [[]]):
            arrays, start = {}, 2  # codes 0 (padding) and 1 are never a weight's
            for n in names:
                size = int(np.prod(shapes[n]))
                arrays[n] = np.arange(start, start + size, dtype=np.float32).reshape(shapes[n])
                start += size
            runs.append(_optimised(model, arrays, folder, f"run{g}.onnx"))
            codes.append(arrays)
    first = runs[0]
    outputs = {o.name for o in first.graph.output}
    wanted = set(fetch) & outputs
    cut = [n for n in first.graph.node if n.op_type == _REORDER and n.domain == _NCHWC
           and n.output[0] in wanted
           and all(a.name != "channels_last" or a.i == 0 for a in n.attribute)]
    if not cut:
        return None
    nodes = [n.SerializeToString() for n in first.graph.node]
    for run in runs[1:]:  # the same graph whatever the codes: no decision depended on values
        if [n.SerializeToString() for n in run.graph.node] != nodes:
            return None
    gathers = _gathers(runs, codes, groups, shapes, fixed)
    if gathers is None:
        return None
    channels = _cut(first, cut)
    for t in first.graph.initializer:  # the codes: every epoch puts its own arrays there
        if t.name in gathers:
            t.ClearField("raw_data")
            t.ClearField("float_data")
    plan = BlockedGraph(first, {}, gathers, fixed)
    template = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
                if t.name not in fixed}
    placed = plan.place(template, template.__getitem__)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if placed.names:
        opts.add_external_initializers(placed.names, placed.values)
    sess = ort.InferenceSession(placed.model, opts, providers=["CPUExecutionProvider"])
    got = sess.run(list(fetch), {input_name: sample})
    for name, want, have in zip(fetch, reference, got):
        if name in channels:
            found = _block_size(have, want, channels[name])
            if found is None:
                return None
            plan.blocks[name] = found
        elif not _same(have, want):
            return None
    return plan


def _same(have: np.ndarray, want: np.ndarray) -> bool:
    return have.shape == want.shape and bool(np.allclose(have, want, rtol=1e-5, atol=1e-6,
                                                         equal_nan=True))


def _block_size(have: np.ndarray, want: np.ndarray, channels: int) -> Block | None:
    """The :class:`Block` under which the blocked output ``have`` is ``want``, if any
    (onnxruntime's block is 16 channels with AVX-512, 8 with AVX2)."""
    for size in (16, 8, 4, 32, 64):
        block = Block(channels, size)
        if have.ndim >= 3 and have.shape[1] == block.padded:
            if _same(unblock(have, block), want):
                return block
    return None


def _gathers(runs, codes, groups, shapes, fixed) -> dict[str, _Gather] | None:
    """How each float32 initializer of the optimised graphs ``runs`` (made with the coded
    tensors ``codes``, name → array, per run) comes from the coded tensors: per run, the
    elements that changed with the codes; None for anything but a gather of one run's codes
    (a product, a sum)."""
    inits = [{t.name: t for t in run.graph.initializer} for run in runs]
    if any(set(i) != set(inits[0]) for i in inits[1:]):
        return None
    starts = []
    for names in groups:
        offs, pos = [], 2
        for n in names:
            offs.append(pos)
            pos += int(np.prod(shapes[n]))
        starts.append((np.array(offs + [pos], np.int64), names))
    out = {}
    for name, t0 in inits[0].items():
        if t0.data_type != onnx.TensorProto.FLOAT or name in fixed:
            continue  # not coded: a constant of the graph
        if any(name in c and tuple(i[name].dims) == c[name].shape
               and i[name].raw_data == c[name].tobytes() for i, c in zip(inits, codes)):
            out[name] = _Gather(tuple(t0.dims), [name], None)  # kept as it was given
            continue
        values = [numpy_helper.to_array(i[name]).ravel() for i in inits]
        coded = None
        for g, v in enumerate(values):
            offs, names = starts[g]
            code = v.astype(np.int64)
            if not (len(names) and code.size and np.array_equal(code, v)
                    and ((code == 0) | ((code >= 2) & (code < offs[-1]))).all()):
                continue
            if len(values) == 1 or any(not np.array_equal(v, w) for w in values if w is not v):
                if coded is not None:
                    return None  # coded in two runs: mixed from two groups
                coded = (g, code)
        if coded is None:
            continue  # the same in every run: a constant of the graph
        g, code = coded
        gather = _gather(code, *starts[g], shapes, tuple(t0.dims))
        if gather is None:
            return None
        out[name] = gather
    return out


def _gather(code: np.ndarray, offs: np.ndarray, names: list[str], shapes,
            dims: tuple[int, ...]) -> _Gather | None:
    """The :class:`_Gather` of an initializer whose elements hold ``code`` (0: padding, else
    a weight element's code; ``offs``: the first code of each of ``names``, then the end)."""
    used = code[code > 0]
    if not used.size:
        return None
    lo, hi = np.searchsorted(offs, [used.min(), used.max()], side="right") - 1
    if lo == hi:  # one source, the usual case
        name, first = names[lo], offs[lo]
        size = int(offs[lo + 1] - first)
        if code.size == size == used.size and code[0] == first and (
                np.diff(code) == 1).all():
            return _Gather(dims, [name], None)  # the tensor as it is
        return _Gather(dims, [name], np.where(code > 0, code - first + 1, 0).astype(np.int32))
    which = np.searchsorted(offs, code, side="right") - 1
    ks = np.unique(which[code > 0])
    sources = [names[k] for k in ks]
    sizes = np.array([offs[k + 1] - offs[k] for k in ks], np.int64)
    base = np.concatenate([[1], 1 + np.cumsum(sizes)[:-1]])
    slot = np.searchsorted(ks, which)
    index = np.where(code > 0, base[np.minimum(slot, len(ks) - 1)] + code
                     - offs[np.minimum(which, len(offs) - 1)], 0)
    index = index.astype(np.int32)  # positions below 2**31: CODE_LIMIT per run
    return _Gather(dims, sources, index)


def _cut(model: onnx.ModelProto, cut: list[onnx.NodeProto]) -> dict[str, int]:
    """Removes the conversions ``cut`` from ``model`` (in place): the blocked tensor each
    converts takes the output's name. Returns output name → its real channels."""
    blocks, renamed = {}, set()
    for node in cut:
        src, dst = node.input[0], node.output[0]
        renamed |= {src, dst}
        channels = next(a.i for a in node.attribute if a.name == "channels")
        for n in model.graph.node:
            for i, name in enumerate(n.input):
                if name == src:
                    n.input[i] = dst
            for i, name in enumerate(n.output):
                if name == src:
                    n.output[i] = dst
        blocks[dst] = int(channels)
        model.graph.node.remove(node)
    stale = [v for v in model.graph.value_info if v.name in renamed]
    for v in stale:
        model.graph.value_info.remove(v)
    for o in model.graph.output:
        if o.name in blocks:
            o.type.tensor_type.ClearField("shape")
    return blocks
