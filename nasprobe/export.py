"""``nasprobe export``: the tapped ONNX files themselves, for users who want them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import onnx
from onnx import helper, numpy_helper

from .adapters import open_source
from .checkpoints import find_checkpoints
from .contract import SourceOptions
from .graph import build_probe_graph, find_taps

__all__ = ["export_tapped", "TAP_PREFIX"]

#: Output name prefix of the raw tap tensors (``tap::<layer>``); NAS maps are ``nasprobe_nas::<layer>``.
TAP_PREFIX = "tap::"


def export_tapped(checkpoints: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                  framework: str = "auto", model: str | None = None,
                  input_shape: Sequence[int] | None = None, tap: str = "linear",
                  exclude_bias: bool = False, layers: str | None = None,
                  epoch_regex: str | None = None, trust_pickle: bool = False) -> Iterator[Path]:
    """Write ``out/<checkpoint stem>.onnx`` per checkpoint and yield each path.

    Each file is the architecture (exported once) with that epoch's weights; its outputs are the
    model's own, then every tap tensor as ``tap::<layer>`` (shape of the layer's pre-activation,
    e.g. ``(N, D, H, W)``), then every NAS map as ``nasprobe_nas::<layer>`` (``(N, H, W)``).
    """
    ckpts = find_checkpoints(checkpoints, epoch_regex)
    source = open_source(ckpts, framework, SourceOptions(model=model, input_shape=input_shape,
                                                         trust_pickle=trust_pickle))
    arch = source.architecture()
    taps = find_taps(arch, tap=tap, layers=layers, source=str(ckpts[0].path))
    tapped = build_probe_graph(arch, taps, exclude_bias=exclude_bias, source=str(ckpts[0].path))
    n_own = len(arch.graph.output)
    for t in taps:
        ident = helper.make_node("Identity", [t.tensor], [TAP_PREFIX + t.layer])
        tapped.graph.node.append(ident)
        tapped.graph.output.insert(n_own, helper.make_tensor_value_info(
            TAP_PREFIX + t.layer, onnx.TensorProto.FLOAT, None))
        n_own += 1
    index = {t.name: i for i, t in enumerate(tapped.graph.initializer)}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for ck in ckpts:
        for name, arr in source.weights(ck).items():
            if name in index:
                tapped.graph.initializer[index[name]].CopyFrom(numpy_helper.from_array(arr, name))
        stem = ck.path.name.split(".")[0] if not ck.path.name.startswith("weights.") else ck.path.stem
        path = folder / f"{stem}.onnx"
        onnx.save(tapped, str(path))
        yield path
