"""Reading JAX checkpoints safely, and building the Flax module that ``--model`` names.

Two formats, both holding one epoch's model state as a tree of arrays:

* ``flax.serialization`` msgpack files (``serialization.to_bytes(nnx.to_pure_dict(state))``),
  read with ``flax.serialization.msgpack_restore``: msgpack with Flax's array extension only, so
  no pickle and no code runs;
* Orbax checkpoint folders (``ocp.StandardCheckpointer().save(folder, nnx.state(model))``,
  or a ``CheckpointManager`` step's item folder), read without a target tree into numpy.

The tree is flattened to ``{("block2", "conv", "kernel"): array}``; a trailing ``"value"`` key
(the Variable layout Orbax restores without a target) is dropped, so both formats give the
paths of ``nnx.state(model)``. A wrapper around the state (``{"model": state, "step": 3}``) is
found by matching the module's own paths as a suffix.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from nasprobe.errors import CheckpointError, NasprobeError
from nasprobe.frameworks.model_spec import call_model_spec, parse_model_spec

from .formats import orbax_item

__all__ = ["ParamPath", "parse_model_spec", "build_module", "flatten_tree", "read_checkpoint",
           "fit_state"]

#: A parameter's path in the model state, e.g. ``("block2", "conv", "kernel")``.
ParamPath = tuple[str, ...]


def build_module(model: Any):
    """The Flax NNX module ``--model`` names: a module, a callable returning one, or a spec
    string for :func:`parse_model_spec`.

    Raises:
        NasprobeError: the module or callable cannot be found, or gives no ``nnx.Module``
            (a Linen module is refused with the reason).
    """
    from flax import linen, nnx

    label = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        built = call_model_spec(model)
    elif isinstance(model, nnx.Module):
        built = model
    elif callable(model):
        built = model()
    else:
        raise NasprobeError(f"--model must be MODULE:CALLABLE, a callable or an nnx.Module, "
                            f"not {type(model).__name__}")
    if isinstance(built, linen.Module):
        raise NasprobeError(f"--model {label!r} gave a Flax Linen module; nasprobe_jax reads "
                            "Flax NNX modules only (an nnx.bridge.ToNNX wrapper does not export "
                            "through jax2onnx either)")
    if not isinstance(built, nnx.Module):
        raise NasprobeError(f"--model {label!r} returned a {type(built).__name__}, not a "
                            "flax.nnx.Module")
    return built


def flatten_tree(tree: Any, prefix: ParamPath = ()) -> dict[ParamPath, np.ndarray]:
    """``{path: array}`` of the array leaves of a nested mapping (list items by index).

    A trailing ``"value"`` key is dropped (Orbax's Variable layout). Non-array leaves (a step
    count, a string) are skipped.
    """
    out: dict[ParamPath, np.ndarray] = {}
    if isinstance(tree, Mapping):
        items = [(str(k), v) for k, v in tree.items()]
    elif isinstance(tree, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(tree)]
    else:
        if hasattr(tree, "shape") and hasattr(tree, "dtype"):
            key = prefix[:-1] if prefix and prefix[-1] == "value" else prefix
            out[key] = np.asarray(tree)
        return out
    for key, value in items:
        out.update(flatten_tree(value, prefix + (key,)))
    return out


def _read_msgpack(path: Path) -> Any:
    from flax import serialization

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the file ({exc})") from exc
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as exc:  # msgpack raises several kinds on bad bytes
        raise CheckpointError(path, "not a flax.serialization msgpack file "
                              f"({exc.__class__.__name__}: {str(exc)[:200]})") from exc
    if not isinstance(tree, Mapping):
        raise CheckpointError(path, f"holds a msgpack {type(tree).__name__}, not a state "
                              "dict (flax.serialization.to_bytes of the model state)")
    return tree


def _check_links(folder: Path) -> None:
    """Refuse a symbolic link inside ``folder`` (an array folder, a chunk, an item folder)
    whose target lies outside it: the checkpoint's data must come from the checkpoint."""
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):  # does not descend into links
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            if entry.is_symlink():
                target = entry.resolve()
                if target != root and root not in target.parents:
                    raise CheckpointError(folder, f"{entry.relative_to(folder)} is a symbolic "
                                          f"link to {target}, outside the checkpoint folder; "
                                          "refused")


def _declared(tree: Any, prefix: ParamPath = ()) -> dict[ParamPath, tuple[ParamPath, Any]]:
    """``{path: (full path, array metadata)}`` of the metadata tree's array leaves (``path``
    without Orbax's trailing ``"value"``, as :func:`flatten_tree` gives it)."""
    out: dict[ParamPath, tuple[ParamPath, Any]] = {}
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            out.update(_declared(value, prefix + (str(key),)))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            out.update(_declared(value, prefix + (str(i),)))
    elif getattr(tree, "shape", None) is not None:
        key = prefix[:-1] if prefix and prefix[-1] == "value" else prefix
        out[key] = (prefix, tree)
    return out


def _wanted(path: Path, declared: Mapping[ParamPath, tuple[ParamPath, Any]],
            expected: Mapping[ParamPath, tuple[int, ...]]) -> set[ParamPath]:
    """The full metadata paths of the arrays ``expected`` names, each checked for its declared
    shape and chunk shape before anything is restored (a few bytes of metadata can declare
    gigabytes; tensorstore allocates a whole chunk, so a chunk larger than its array is
    refused too)."""
    shapes = {k: tuple(v[1].shape) for k, v in declared.items()}
    fit_state(_Shaped.of(shapes), expected, path, declared=True)
    prefix = _prefix(shapes, expected, path)
    for key, shape in expected.items():
        storage = getattr(declared[prefix + key][1], "storage", None)
        chunks = getattr(storage, "chunk_shape", None)
        if chunks is not None and (len(chunks) != len(shape) or any(
                int(c) > max(int(s), 1) for c, s in zip(chunks, shape))):
            raise CheckpointError(path, f"tensor {'.'.join(key)!r} is declared with chunks of "
                                  f"{tuple(int(c) for c in chunks)} for its shape "
                                  f"{tuple(shape)} in the Orbax metadata (nothing was "
                                  "restored); refused")
    return {declared[prefix + key][0] for key in expected}


class _Shaped:
    """A stand-in array holding only a shape (the declared one), for :func:`fit_state`."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    @staticmethod
    def of(shapes: Mapping[ParamPath, tuple[int, ...]]) -> dict[ParamPath, Any]:
        return {k: _Shaped(v) for k, v in shapes.items()}


def _subset(tree: Any, wanted: set[ParamPath], prefix: ParamPath = ()) -> Any:
    """The metadata tree with only the leaves at ``wanted`` paths (mappings kept as dicts)."""
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            sub = _subset(value, wanted, prefix + (str(key),))
            if sub is not None:
                out[key] = sub
        return out or None
    if isinstance(tree, (list, tuple)):
        if any(w[: len(prefix)] == prefix for w in wanted):
            return tree  # kept whole: partial restore works on mappings
        return None
    return tree if prefix in wanted else None


def _read_orbax(path: Path, expected: Mapping[ParamPath, tuple[int, ...]] | None = None) -> Any:
    import orbax.checkpoint as ocp

    item = orbax_item(path)
    if item is None:
        raise CheckpointError(path, "not an Orbax checkpoint folder (no _METADATA, "
                              "_CHECKPOINT_METADATA or manifest.ocdbt)")
    _check_links(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sharding info not provided"
        try:
            meta = ocp.PyTreeCheckpointer().metadata(item.resolve())
        except Exception as exc:  # orbax/tensorstore raise many kinds on damaged folders
            raise CheckpointError(path, "cannot read the Orbax checkpoint's metadata "
                                  f"({exc.__class__.__name__}: {str(exc)[:300]})") from exc
        tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
        tree = getattr(tree, "tree", tree)
        if not _declared(tree):
            raise CheckpointError(path, "cannot restore the Orbax checkpoint: its metadata "
                                  "declares no array (damaged _METADATA or array metadata)")
        if expected is not None:
            tree = _subset(tree, _wanted(path, _declared(tree), expected)) or {}
        try:
            args = _numpy_restore_args(tree)
            if expected is None:
                return ocp.PyTreeCheckpointer().restore(item.resolve(), restore_args=args)
            return ocp.PyTreeCheckpointer().restore(item.resolve(), args=ocp.args.PyTreeRestore(
                item=tree, restore_args=args, partial_restore=True))
        except Exception as exc:  # orbax/tensorstore raise many kinds on damaged folders
            raise CheckpointError(path, "cannot restore the Orbax checkpoint "
                                  f"({exc.__class__.__name__}: {str(exc)[:300]})") from exc


def _numpy_restore_args(tree: Any) -> Any:
    """Restore arguments asking Orbax for numpy arrays (no device placement)."""
    import jax
    import orbax.checkpoint as ocp

    return jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)


def read_checkpoint(path: str | Path, expected: Mapping[ParamPath, tuple[int, ...]] | None = None
                    ) -> dict[ParamPath, np.ndarray]:
    """One checkpoint's arrays by path (see the module docstring).

    Args:
        path: a ``.msgpack`` file or an Orbax checkpoint folder.
        expected: the model's arrays (path → shape), as :func:`fit_state` takes them. For an
            Orbax folder the shapes its metadata declares are checked against them first, and
            only those arrays are restored: the metadata is a few editable bytes that can
            declare any size, and Orbax allocates what it declares. None restores every array.

    Raises:
        CheckpointError: the file or folder is unreadable, damaged, holds no array, declares
            an expected array missing or of another shape, or holds a symbolic link leaving
            the folder.
    """
    path = Path(path)
    if path.is_dir():
        tree = _read_orbax(path, expected)
    elif path.is_file():
        tree = _read_msgpack(path)
    else:
        raise CheckpointError(path, "no such file or folder")
    flat = flatten_tree(tree)
    if not flat:
        raise CheckpointError(path, "holds no array")
    return flat


def _prefix(flat: Mapping[ParamPath, Any], expected: Mapping[ParamPath, Any], path) -> ParamPath:
    """The common prefix of ``flat``'s paths before the model's (``("model",)`` for a wrapped
    state), found from the first expected path."""
    first = next(iter(expected))
    prefixes = [k[: len(k) - len(first)] for k in flat
                if len(k) >= len(first) and k[len(k) - len(first):] == first]
    if not prefixes:
        raise CheckpointError(path, f"tensor {'.'.join(first)!r} is missing (the checkpoint "
                              f"holds {', '.join('.'.join(k) for k in list(flat)[:8])}...)")
    return min(prefixes, key=len)


def fit_state(flat: Mapping[ParamPath, np.ndarray], expected: Mapping[ParamPath, tuple[int, ...]],
              path: str | Path, declared: bool = False) -> dict[ParamPath, np.ndarray]:
    """The arrays of ``flat`` for each path of ``expected``, checked for shape.

    ``flat``'s paths may carry a common prefix (``("model",) + path``); it is found from the
    first expected path. ``declared``: ``flat`` holds the shapes a checkpoint's metadata
    declares, not arrays (said so in the message).

    Returns:
        ``{expected path: array}``.

    Raises:
        CheckpointError: naming ``path`` and the tensor that is missing or of the wrong shape.
    """
    if not expected:
        return {}
    prefix = _prefix(flat, expected, path)
    out = {}
    for key, shape in expected.items():
        array = flat.get(prefix + key)
        if array is None:
            raise CheckpointError(path, f"tensor {'.'.join(key)!r} is missing (another "
                                  "architecture than --model?)")
        if tuple(array.shape) != tuple(shape):
            has = "is declared with shape" if declared else "has shape"
            where = " in the Orbax metadata (nothing was restored)" if declared else ""
            raise CheckpointError(path, f"tensor {'.'.join(key)!r} {has} "
                                  f"{tuple(array.shape)}{where}; the model expects "
                                  f"{tuple(shape)}")
        out[key] = array
    return out
