"""The adapter registry: which framework reads which checkpoints.

ONNX is built in; every other framework is a plug-in found through the entry-point group
``nasprobe.adapters`` (as xarray finds its backends), so that adding one needs no edit of the
core. An entry point names an object that follows :class:`nasprobe.contract.Adapter`, e.g. in
the plug-in's ``pyproject.toml``::

    [project.entry-points."nasprobe.adapters"]
    myframework = "my_package.plugin:adapter"

Entry points are read once, on first use, and each plug-in object is imported then; the
framework itself is imported only when a source is built. docs/adapters.md explains the rest.
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterable

from nasprobe.contract import Adapter, BaseAdapter, Checkpoint, CheckpointSource, SourceOptions  # noqa: F401
from nasprobe.errors import NasprobeError

from .onnx_adapter import adapter as onnx_adapter

__all__ = ["GROUP", "registered", "names",
           "get", "extensions", "claimant", "is_checkpoint", "detect_framework", "open_source"]

#: The entry-point group adapters register under.
GROUP = "nasprobe.adapters"


@lru_cache(maxsize=1)
def _registry() -> dict[str, Adapter]:
    found: dict[str, Adapter] = {onnx_adapter.name: onnx_adapter}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name in found:
            continue  # the first registration of a name wins (two installs of one plug-in)
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plug-in must not break the others
            warnings.warn(f"nasprobe adapter {ep.name!r} ({ep.value}) cannot be loaded: "
                          f"{exc.__class__.__name__}: {exc}", RuntimeWarning, stacklevel=2)
            continue
        if not isinstance(obj, Adapter) or obj.name != ep.name:
            warnings.warn(f"nasprobe adapter {ep.name!r} ({ep.value}) does not follow the "
                          "adapter contract (nasprobe.contract.Adapter, same name as its entry "
                          "point); ignored", RuntimeWarning, stacklevel=2)
            continue
        found[ep.name] = obj
    return found


def registered() -> dict[str, Adapter]:
    """Every adapter, by name: ``onnx`` first, then the plug-ins in name order."""
    return dict(_registry())


def names() -> list[str]:
    """The adapters' names: the ``--framework`` choices besides ``auto``."""
    return list(_registry())


def get(name: str) -> Adapter:
    """The adapter called ``name``.

    Raises:
        NasprobeError: no adapter of that name is installed (the message lists those that are).
    """
    try:
        return _registry()[name]
    except KeyError:
        raise NasprobeError(f"unknown framework {name!r}; use auto or one of the installed "
                            f"adapters: {', '.join(names())}") from None


def extensions() -> tuple[str, ...]:
    """Every registered checkpoint suffix, longest first (``.weights.h5`` before ``.h5``)."""
    exts = {e for a in _registry().values() for e in a.extensions}
    return tuple(sorted(exts, key=lambda e: (-len(e), e)))


def claimant(path: Path) -> Adapter | None:
    """The first adapter (in :func:`registered` order) that claims ``path``, or ``None``."""
    for adapter in _registry().values():
        if adapter.claims(Path(path)):
            return adapter
    return None


def is_checkpoint(path: Path) -> bool:
    """Whether some adapter claims ``path`` (a file, or a checkpoint folder) as a checkpoint."""
    return claimant(path) is not None


def companions(files: list[Path]) -> set[Path]:
    """Files of a run that an adapter says belong with its checkpoints without being epochs."""
    out: set[Path] = set()
    for adapter in _registry().values():
        out |= adapter.companions(files)
    return out


def detect_framework(paths: Iterable[Path]) -> str:
    """The name of the one adapter that claims the checkpoints.

    Raises:
        NasprobeError: no adapter claims them, or they belong to several frameworks.
    """
    found: set[str] = set()
    for p in paths:
        adapter = claimant(Path(p))
        if adapter is not None:
            found.add(adapter.name)
    if len(found) == 1:
        return found.pop()
    if not found:
        raise NasprobeError(f"no checkpoint file with a known extension ({', '.join(extensions())})")
    raise NasprobeError(f"checkpoints of several frameworks in one run: {sorted(found)}; "
                        "pass --framework")


def open_source(checkpoints: list[Checkpoint], framework: str = "auto",
                options: SourceOptions = SourceOptions()) -> CheckpointSource:
    """The :class:`~nasprobe.contract.CheckpointSource` for a run's checkpoints.

    Args:
        checkpoints: from :func:`nasprobe.frameworks.checkpoints.find_checkpoints` (not empty).
        framework: ``auto`` (the adapter that claims the files) or an adapter's name.
        options: what the adapter may need (``--model``, ``--input-shape``, ``--trust-pickle``).

    Raises:
        NasprobeError: an unknown framework, or one whose dependencies are not installed (the
            message names the pip extra).
    """
    if framework == "auto":
        framework = detect_framework(c.path for c in checkpoints)
    adapter = get(framework)
    missing = [m for m in adapter.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise NasprobeError(f"{framework} checkpoints need {', '.join(missing)}: "
                            f"pip install 'nasprobe[{adapter.extra or framework}]'")
    return adapter.make_source(list(checkpoints), options)
