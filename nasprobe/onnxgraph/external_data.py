"""ONNX external data, read only from the model's own folder (docs: README, *Security*).

An ONNX tensor may keep its bytes in another file (``data_location = EXTERNAL`` and a
``location`` relative to the model). Tensors live in more places than ``graph.initializer``:
sparse initializers, ``Constant`` nodes and other tensor attributes (``t``, ``tensors``,
``sparse_tensor``, ``sparse_tensors``), and the same again inside subgraphs (``If``/``Loop``/
``Scan`` bodies) and model-local functions. :func:`load_external_data` visits every one of
them, refuses a location that leaves the folder (``..``, an absolute path, a symbolic link to
elsewhere), that is not a regular file, or whose offset/length lie outside the file, and only
then reads the bytes into the model, so nothing is left for onnxruntime to resolve on its own
(it would resolve a leftover location against the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import onnx
from onnx import external_data_helper

from nasprobe.errors import CheckpointError

__all__ = ["external_tensors", "check_location", "load_external_data"]


def _graph_tensors(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    for t in graph.initializer:
        yield f"initializer {t.name!r}{where}", t
    for s in graph.sparse_initializer:
        yield f"sparse initializer {s.values.name!r}{where}", s.values
        yield f"sparse initializer {s.values.name!r} (indices){where}", s.indices
    yield from _node_tensors(graph.node, where)


def _node_tensors(nodes, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    for node in nodes:
        label = f"node {node.name!r}" if node.name else f"a {node.op_type} node"
        for attr in node.attribute:
            at = f"in attribute {attr.name!r} of {label}{where}"
            dense = [attr.t] if attr.HasField("t") else []
            for t in [*dense, *attr.tensors]:
                yield f"tensor {t.name!r} {at}", t
            sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for s in [*sparse, *attr.sparse_tensors]:
                yield f"sparse tensor {s.values.name!r} {at}", s.values
                yield f"sparse tensor {s.values.name!r} (indices) {at}", s.indices
            sub = f" in the subgraph {attr.name!r} of {label}{where}"
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g, sub)
            for g in attr.graphs:
                yield from _graph_tensors(g, sub)


def external_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor of ``model`` that keeps its data in another file, with a description of
    where it sits (for messages): initializers, sparse tensors, tensor attributes, subgraphs
    and functions, recursively."""
    found = _graph_tensors(model.graph, "")
    funcs = (item for f in model.functions
             for item in _node_tensors(f.node, f" in the function {f.name!r}"))
    for where, t in (*found, *funcs):
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            yield where, t


def check_location(path: Path, where: str, tensor: onnx.TensorProto) -> Path:
    """The file a tensor's external data lies in, after checking it stays in ``path``'s folder.

    Args:
        path: the ONNX file (its folder is the only one external data may come from).
        where: the tensor's description, for messages.
        tensor: a tensor with external data.

    Returns:
        The resolved data file.

    Raises:
        CheckpointError: no location, a location outside the folder (also through a symbolic
            link), not a regular file, or an offset/length beyond the file's end.
    """
    info = {e.key: e.value for e in tensor.external_data}
    loc = info.get("location", "")
    folder = path.resolve().parent
    if not loc or "\x00" in loc:
        raise CheckpointError(path, f"{where} has external data without a valid location; "
                                    "refused")
    target = (folder / loc).resolve()
    if Path(loc).is_absolute() or folder not in target.parents:
        raise CheckpointError(path, f"{where} points to external data outside its folder "
                                    f"({loc!r}); refused")
    if not target.is_file():
        raise CheckpointError(path, f"{where}: its external data file {loc!r} is missing or "
                                    "not a regular file")
    size = target.stat().st_size
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else size - offset
    except ValueError:
        raise CheckpointError(path, f"{where}: external data offset/length are not whole "
                                    "numbers") from None
    if offset < 0 or length < 0 or offset + length > size:
        raise CheckpointError(path, f"{where}: external data ({offset=}, {length=}) lies "
                                    f"beyond the end of {loc!r} ({size} bytes)")
    return target


def load_external_data(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Check every external tensor of ``model`` (read from ``path``) with
    :func:`check_location`, then read their bytes in; returns ``model`` (changed in place).

    Raises:
        CheckpointError: a refused location, or data that cannot be read (names the tensor).
    """
    tensors = list(external_tensors(model))
    for where, tensor in tensors:
        check_location(path, where, tensor)
    folder = os.fspath(path.resolve().parent)
    for where, tensor in tensors:
        try:
            external_data_helper.load_external_data_for_tensor(tensor, folder)
        except Exception as exc:  # onnx raises ValueError, OSError, its own checker errors
            raise CheckpointError(path, f"{where}: cannot read its external data "
                                        f"({exc.__class__.__name__}: {exc})") from exc
    return model
