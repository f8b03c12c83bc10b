"""The adapter registry: which framework reads which checkpoints.

ONNX is built in; every other framework is a plug-in found through the entry-point group
``nasprobe.adapters`` (as xarray finds its backends), so that adding one needs no edit of the
core. An entry point names an object that follows :class:`nasprobe.contract.Adapter`, e.g. in
the plug-in's ``pyproject.toml``::

    [project.entry-points."nasprobe.adapters"]
    myframework = "my_package.plugin:adapter"

Plug-ins are third-party code, so the registry keeps them at arm's length:

* their *names* come from the installed packages' metadata, without importing anything
  (``--framework``'s choices, ``--help`` and ``nasprobe info`` import no plug-in);
* a plug-in object is imported on first use (a checkpoint no earlier adapter claims, a file
  name's extension...); the framework itself only when a source is built;
* every call into a plug-in (import, ``claims``, ``companions``, its ``extensions``) is
  guarded: one that raises, or calls ``sys.exit``, is disabled for the rest of the process
  with a warning naming it, and the others go on;
* ``NASPROBE_DISABLE_PLUGINS=name,...`` (or ``all``) turns plug-ins off without uninstalling
  them.

docs/adapters.md explains the rest.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterable

from nasprobe.contract import Adapter, BaseAdapter, Checkpoint, CheckpointSource, SourceOptions  # noqa: F401
from nasprobe.errors import MissingExtraError, NasprobeError

from .onnx_adapter import adapter as onnx_adapter

__all__ = ["GROUP", "DISABLE_ENV", "registered", "names", "get", "extensions", "claimant",
           "is_checkpoint", "companions", "detect_framework", "open_source", "disabled", "reset"]

#: The entry-point group adapters register under.
GROUP = "nasprobe.adapters"
#: The environment variable listing plug-ins to leave off (comma-separated names, or ``all``).
DISABLE_ENV = "NASPROBE_DISABLE_PLUGINS"


class _Plugins:
    """This process's view of the plug-ins: their entry points (metadata only), the objects
    imported so far, and the names disabled (by the user, or after a failure)."""

    def __init__(self):
        self.eps: dict[str, Any] | None = None
        self.loaded: dict[str, Adapter] = {}
        self.failed: dict[str, str] = {}
        self.exts: dict[str, tuple[str, ...]] = {}

    def entry_points(self) -> dict[str, Any]:
        if self.eps is None:
            off = disabled()
            found: dict[str, Any] = {}
            for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
                # the first registration of a name wins (two installs of one plug-in); the
                # built-in onnx cannot be replaced
                if ep.name not in found and ep.name != onnx_adapter.name and not (
                        "all" in off or ep.name in off):
                    found[ep.name] = ep
            self.eps = found
        return self.eps

    def fail(self, name: str, what: str, exc: BaseException) -> None:
        self.loaded.pop(name, None)
        if name in self.failed:
            return
        ep = self.entry_points().get(name)
        self.failed[name] = f"{what}: {exc.__class__.__name__}: {str(exc)[:200]}"
        warnings.warn(f"nasprobe plug-in {name!r} ({getattr(ep, 'value', '?')}) failed in "
                      f"{self.failed[name]}; it is disabled for this run (set {DISABLE_ENV}="
                      f"{name} to leave it off)", RuntimeWarning, stacklevel=4)

    def load(self, name: str) -> Adapter | None:
        if name in self.loaded or name in self.failed:
            return self.loaded.get(name)
        ep = self.entry_points()[name]
        try:
            obj = ep.load()
            ok = isinstance(obj, Adapter) and obj.name == ep.name
            exts = tuple(str(e) for e in obj.extensions) if ok else ()
        except (Exception, SystemExit) as exc:  # a broken plug-in must not break the others
            self.fail(name, "import", exc)
            return None
        if not ok:
            self.failed[name] = "not an adapter"
            warnings.warn(f"nasprobe plug-in {name!r} ({ep.value}) does not follow the adapter "
                          "contract (nasprobe.contract.Adapter, same name as its entry point); "
                          "ignored", RuntimeWarning, stacklevel=3)
            return None
        self.exts[name] = exts
        self.loaded[name] = obj
        return obj

    def call(self, adapter: Adapter, what: str, func: Callable, *args, default=None):
        """``func(*args)`` for a plug-in's method; a failure disables the plug-in."""
        if adapter is onnx_adapter:
            return func(*args)
        try:
            return func(*args)
        except (Exception, SystemExit) as exc:
            self.fail(adapter.name, what, exc)
            return default


_PLUGINS = _Plugins()


def disabled() -> set[str]:
    """The plug-in names :data:`DISABLE_ENV` turns off (``{"all"}`` for every plug-in)."""
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def reset() -> None:
    """Forget the plug-ins found, imported and disabled so far (they are looked up again on
    next use, e.g. after :data:`DISABLE_ENV` changed or a package was installed)."""
    global _PLUGINS
    _PLUGINS = _Plugins()


def _adapters() -> Iterable[Adapter]:
    """``onnx``, then each plug-in that loads, in name order, imported one at a time."""
    yield onnx_adapter
    for name in list(_PLUGINS.entry_points()):
        adapter = _PLUGINS.load(name)
        if adapter is not None:
            yield adapter


def registered() -> dict[str, Adapter]:
    """Every adapter that loads, by name: ``onnx`` first, then the plug-ins in name order
    (imports every plug-in; those that fail are left out with a warning)."""
    return {a.name: a for a in _adapters()}


def names() -> list[str]:
    """The adapters' names (the ``--framework`` choices besides ``auto``), from the installed
    packages' metadata: no plug-in is imported. Plug-ins that failed are left out."""
    return [onnx_adapter.name] + [n for n in _PLUGINS.entry_points() if n not in _PLUGINS.failed]


def get(name: str) -> Adapter:
    """The adapter called ``name`` (imported now if it is a plug-in).

    Raises:
        NasprobeError: no adapter of that name is installed, it is disabled, or it fails to
            load (the message lists those that are installed, or says why).
    """
    if name == onnx_adapter.name:
        return onnx_adapter
    if name in _PLUGINS.entry_points():
        adapter = _PLUGINS.load(name)
        if adapter is not None:
            return adapter
        raise NasprobeError(f"framework {name!r}: its plug-in failed ({_PLUGINS.failed[name]})")
    off = disabled()
    why = f" ({DISABLE_ENV} turns it off)" if name in off or "all" in off else ""
    raise NasprobeError(f"unknown framework {name!r}{why}; use auto or one of the installed "
                        f"adapters: {', '.join(names())}")


def extensions() -> tuple[str, ...]:
    """Every registered checkpoint suffix, longest first (``.weights.h5`` before ``.h5``)."""
    exts = set(onnx_adapter.extensions)
    for adapter in _adapters():
        exts |= set(_PLUGINS.exts.get(adapter.name, ()))
    return tuple(sorted(exts, key=lambda e: (-len(e), e)))


def claimant(path: Path) -> Adapter | None:
    """The first adapter (in :func:`registered` order) that claims ``path``, or ``None``
    (plug-ins are imported only when ``onnx`` does not claim it)."""
    for adapter in _adapters():
        if _PLUGINS.call(adapter, "claims()", adapter.claims, Path(path), default=False):
            return adapter
    return None


def is_checkpoint(path: Path) -> bool:
    """Whether some adapter claims ``path`` (a file, or a checkpoint folder) as a checkpoint."""
    return claimant(path) is not None


def companions(files: list[Path]) -> set[Path]:
    """Files of a run that an adapter says belong with its checkpoints without being epochs."""
    out: set[Path] = set()
    for adapter in _adapters():
        got = _PLUGINS.call(adapter, "companions()", adapter.companions, files, default=set())
        out |= {Path(p) for p in got or ()}
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
    missing = [m for m in adapter.requires if not _importable(m)]
    if missing:
        raise MissingExtraError(missing[0], (adapter.extra or framework,),
                                needed_for=f"reading {framework} checkpoints")
    source = adapter.make_source(list(checkpoints), options)
    if not isinstance(source, CheckpointSource):
        lacks = [a for a in ("framework", "provenance", "architecture", "weights")
                 if not hasattr(source, a)]
        raise NasprobeError(f"the {framework} adapter gave a source without {', '.join(lacks)}"
                            " (see nasprobe.contract.CheckpointSource)")
    return source


def _importable(module: str) -> bool:
    """Whether ``module`` (dotted: its packages too) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package of a dotted name is missing
        return False

