"""The adapter contract: what the core asks of a framework adapter, and what it gives one.

An adapter turns one framework's checkpoints into what the probe needs: a
:class:`CheckpointSource`, that is one ONNX architecture (exported once) and, per epoch, the
values of its initializers. The core itself knows only ONNX; every framework (PyTorch, Keras,
JAX, ...) is a plug-in registered under the entry-point group ``nasprobe.adapters`` and found
by :mod:`nasprobe.frameworks.registry`. docs/adapters.md shows how to write one.

This module imports nothing of the core, so that adapters and the registry can both depend
on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # annotations only: the command line starts without numpy and onnx
    import numpy as np
    import onnx

__all__ = ["Checkpoint", "CheckpointSource", "SourceOptions", "Adapter", "BaseAdapter",
           "unique_layer_name", "LAYER_KEY", "set_node_metadata"]

#: The metadata key of an ONNX node whose value names its layer: an adapter that writes it
#: decides the layer names (nasprobe.onnxgraph.layer_names reads it before any other rule).
LAYER_KEY = "nasprobe.layer"


@dataclass(frozen=True)
class Checkpoint:
    """One saved epoch: its file (or folder) and the epoch number (-1 for the untrained model)."""

    path: Path
    epoch: int


@runtime_checkable
class CheckpointSource(Protocol):
    """What the probe needs from a run's checkpoints, whatever the framework.

    ``architecture()`` returns one ONNX model (with the weights of the first checkpoint) whose
    graph keeps every linear operator and BatchNorm as in the framework model, and whose layer
    names are the framework's own. ``weights(ckpt)`` returns the values of that model's
    initializers for one checkpoint, keyed by initializer name (only those that differ per
    epoch need to be given). ``framework`` names the framework for provenance.
    """

    framework: str

    def architecture(self) -> onnx.ModelProto:
        """The ONNX model, with the first checkpoint's weights."""
        ...

    def weights(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]:
        """Initializer name → array, for ``checkpoint``."""
        ...


@dataclass(frozen=True)
class SourceOptions:
    """The options an adapter receives when it builds a source (``nasprobe probe`` flags).

    Attributes:
        model: ``--model``: ``MODULE:CALLABLE`` or ``MODULE:CALLABLE(key=value, ...)`` building
            the architecture of weight-only checkpoints; from Python also a callable or a
            framework model object.
        input_shape: ``--input-shape``: one sample's shape without the batch axis, in the
            framework's own axis order (e.g. ``(C, H, W)`` for PyTorch, ``(H, W, C)`` for Keras).
        trust_pickle: ``--trust-pickle``: allow loaders that can run code stored in a file.
    """

    model: Any = None
    input_shape: tuple[int, ...] | None = None
    trust_pickle: bool = False

    def __post_init__(self):
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "trust_pickle", bool(self.trust_pickle))


@runtime_checkable
class Adapter(Protocol):
    """A framework adapter, as registered under the entry-point group ``nasprobe.adapters``.

    Attributes:
        name: the ``--framework`` value (``"torch"``, ``"keras"``, ...).
        extensions: file suffixes of its checkpoints, lower case, with the dot (``".pt"``); used
            in messages and to strip suffixes before parsing epochs from file names.
        extra: the pip extra that installs its dependencies (``pip install 'nasprobe[extra]'``).
        requires: modules that must be importable for :meth:`make_source` to work; the
            registry checks them first and names ``extra`` when one is missing.
    """

    name: str
    extensions: tuple[str, ...]
    extra: str
    requires: tuple[str, ...]

    def claims(self, path: Path) -> bool:
        """Whether ``path`` (a file, or a folder such as an orbax checkpoint) is one of this
        adapter's checkpoints. Must be cheap: it is asked of every entry of a run folder."""
        ...

    def companions(self, files: Sequence[Path]) -> set[Path]:
        """Among a run's files, those that are not epochs but belong with them (such as the
        architecture file beside weight-only checkpoints); they are left out when no epoch can
        be parsed from their names."""
        ...

    def make_source(self, checkpoints: list[Checkpoint], options: SourceOptions
                    ) -> CheckpointSource:
        """The source of one run's checkpoints (sorted by epoch, not empty). The framework is
        imported here, never when the adapter object itself is imported."""
        ...

    def train_demo(self, folder: Path, *, epochs: int, seed: int) -> dict:
        """Optional: train the demo network so that it overfits, one checkpoint per epoch
        (``nasprobe demo``). Returns ``{"run": folder of checkpoints, "probe": probe-set file,
        "model": the --model spec, "input_shape": model input shape without the batch axis}``.
        Adapters without a demo raise :class:`NotImplementedError`."""
        ...


class BaseAdapter:
    """Defaults for an :class:`Adapter`: claims files by extension, has no companions.

    Subclasses set ``name``, ``extensions`` (and ``extra``, ``requires``) and define
    :meth:`make_source`.
    """

    name: str = ""
    extensions: tuple[str, ...] = ()
    extra: str = ""
    requires: tuple[str, ...] = ()

    def claims(self, path: Path) -> bool:
        """A path that is not a folder and ends with one of :attr:`extensions`."""
        name = Path(path).name.lower()
        return name.endswith(self.extensions) and not Path(path).is_dir()

    def companions(self, files: Sequence[Path]) -> set[Path]:
        """None."""
        return set()

    def make_source(self, checkpoints: list[Checkpoint], options: SourceOptions
                    ) -> CheckpointSource:
        """Must be defined by the adapter."""
        raise NotImplementedError

    def train_demo(self, folder: Path, *, epochs: int, seed: int) -> dict:
        """No demo."""
        raise NotImplementedError(f"the {self.name} adapter has no demo")

    def __repr__(self) -> str:
        return f"<nasprobe adapter {self.name!r}>"


def unique_layer_name(base: str, used: set[str], reserved: set[str] = frozenset()) -> str:
    """A layer name not yet in ``used``: ``base`` itself, else ``base#2``, ``base#3``... — the
    first suffixed name that is neither used nor one of the ``reserved`` names (the other
    layers' own names, so that a real layer called ``conv#2`` keeps its name). The caller adds
    the result to ``used``."""
    if base not in used:
        return base
    k = 2
    while f"{base}#{k}" in used or f"{base}#{k}" in reserved:
        k += 1
    return f"{base}#{k}"


def set_node_metadata(node, key: str, value: str) -> None:
    """Set ``key`` to ``value`` in an ONNX ``NodeProto``'s ``metadata_props`` (replacing an
    entry of that key); with :data:`LAYER_KEY` this is how an adapter names a node's layer."""
    for p in node.metadata_props:
        if p.key == key:
            p.value = value
            return
    node.metadata_props.add(key=key, value=value)
