"""``nasprobe export``: the tapped ONNX files themselves, for users who want them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import onnx
from onnx import helper, numpy_helper

from nasprobe.contract import Checkpoint, SourceOptions
from nasprobe.errors import NasprobeError
from nasprobe.frameworks.checkpoints import checkpoint_stem, find_checkpoints
from nasprobe.frameworks.registry import open_source
from nasprobe.onnxgraph.nas_graph import build_probe_graph
from nasprobe.onnxgraph.taps import find_taps

__all__ = ["export_tapped", "export_paths", "TAP_PREFIX"]

#: Output name prefix of the raw tap tensors (``tap::<layer>``); NAS maps are ``nasprobe_nas::<layer>``.
TAP_PREFIX = "tap::"


def export_paths(ckpts: Sequence[Checkpoint], out: str | os.PathLike) -> list[Path]:
    """``out/<checkpoint name without its extension>.onnx`` for each checkpoint.

    Raises:
        NasprobeError: ``out`` is the folder of a checkpoint (the export would mix with, or
            overwrite, the originals), or two checkpoints would get one file name.
    """
    folder = Path(out)
    inputs = {c.path.resolve().parent for c in ckpts}
    if folder.resolve() in inputs:
        raise NasprobeError(f"--out {folder}: is the checkpoints' own folder; the export would "
                            "overwrite or mix with them; choose another folder")
    paths: dict[str, Path] = {}
    for c in ckpts:
        name = f"{checkpoint_stem(c.path.name)}.onnx"
        if name.casefold() in paths:
            raise NasprobeError(f"{c.path}: would be exported to {folder / name}, as would "
                                f"{paths[name.casefold()]}; rename one")
        paths[name.casefold()] = c.path
    return [folder / f"{checkpoint_stem(c.path.name)}.onnx" for c in ckpts]


def export_tapped(checkpoints: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                  framework: str = "auto", model: str | None = None,
                  input_shape: Sequence[int] | None = None, tap: str = "linear",
                  exclude_bias: bool = False, layers: str | None = None,
                  epoch_regex: str | None = None, trust_pickle: bool = False) -> Iterator[Path]:
    """Write ``out/<checkpoint name without extension>.onnx`` per checkpoint (see
    :func:`export_paths`; checked before anything is written) and yield each path.

    Each file is the architecture (exported once) with that epoch's weights; its outputs are the
    model's own, then every tap tensor as ``tap::<layer>`` (shape of the layer's pre-activation,
    e.g. ``(N, D, H, W)``), then every NAS map as ``nasprobe_nas::<layer>`` (``(N, H, W)``).
    """
    ckpts = find_checkpoints(checkpoints, epoch_regex)
    targets = export_paths(ckpts, out)
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
    Path(out).mkdir(parents=True, exist_ok=True)
    for ck, path in zip(ckpts, targets):
        for name, arr in source.weights(ck).items():
            if name in index:
                tapped.graph.initializer[index[name]].CopyFrom(numpy_helper.from_array(arr, name))
        onnx.save(tapped, str(path))
        yield path
