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
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # annotations only: the command line starts without numpy and onnx
    import numpy as np
    import onnx

__all__ = ["Checkpoint", "CheckpointSource", "SourceOptions", "Adapter", "BaseAdapter",
           "Tokenizing", "TokenizedText", "PAD_ID",
           "parse_shape", "per_layer", "unique_layer_name", "LAYER_KEY", "set_node_metadata"]

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

    Attributes:
        framework: the adapter's name, recorded in the store.
        provenance: what a reader of the store should know about how the checkpoints were
            read, as JSON-able ``{key: value}`` (may be empty). The ONNX adapter records what
            :func:`nasprobe.onnxgraph.prepare.prepare_model` changed (``opset_upgraded``...). The
            core merges it into the run's provenance record: keys the core writes itself
            (``source``, ``framework``, ``checkpoints``, ``skipped``...) keep the core's value.

    ``architecture()`` returns one ONNX model (with the weights of the first checkpoint) whose
    graph keeps every linear operator and BatchNorm as in the framework model, and whose layer
    names are the framework's own. Every call returns a new ``ModelProto`` that the caller
    owns and may change; the source's own copy never changes. ``weights(ckpt)`` returns the
    values of that model's initializers for one checkpoint, keyed by initializer name (only
    those that differ per epoch need to be given).

    Optional: a source of a token model may offer ``tokenize`` (:class:`Tokenizing`), which
    lets a text file be its probe set.

    A source need not be thread-safe: a job that probes several epochs at once calls the
    methods of its sources from one thread at a time (framework loaders such as
    ``transformers``' ``from_pretrained`` change process-wide state while they run).
    """

    framework: str
    provenance: dict[str, Any]

    def architecture(self) -> onnx.ModelProto:
        """A new ONNX model with the first checkpoint's weights, owned by the caller."""
        ...

    def weights(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]:
        """Initializer name → array, for ``checkpoint``."""
        ...


#: The token id the core feeds at padding positions of a text probe (see :class:`Tokenizing`).
PAD_ID = -1


@dataclass(frozen=True)
class TokenizedText:
    """A text probe set after tokenisation (what :meth:`Tokenizing.tokenize` returns).

    Attributes:
        ids: ``(N, T)`` int64 token ids, one row per line, padded on the right to ``T``
            (what sits at padding positions does not matter: the core replaces it).
        mask: ``(N, T)`` attention mask, 1 (or True) on the tokens of the line, 0 on padding;
            each row is ones then zeros.
        tokenizer: what tokenised the text, e.g. the class and a hash of its files; it is hashed
            into the probe set's ``sha256``, so that a store notices another tokenisation.
    """

    ids: np.ndarray
    mask: np.ndarray
    tokenizer: str


@runtime_checkable
class Tokenizing(Protocol):
    """The optional hook of a :class:`CheckpointSource` for text probes (a ``.txt`` file, one
    example per line): a source of a model of token ids that knows its checkpoints' tokenizer
    offers ``tokenize``. A source without it cannot be probed with text.

    Contract: the run is tokenised once, with the tokenizer of its first checkpoint (a source
    that finds another tokenizer in a later checkpoint refuses that checkpoint with a
    :class:`~nasprobe.errors.CheckpointError`). The core feeds the ids with :data:`PAD_ID`
    (-1) at every padding position, so the source's graph (``architecture()``) must take a
    negative id as padding: attention mask 0 there (and any valid id embedded in its place).
    Padding is also left out of every statistic by the core (docs/measures.md).
    """

    def tokenize(self, lines: Sequence[str], max_length: int | None) -> TokenizedText:
        """Tokenise ``lines`` (non-empty strings) with the first checkpoint's tokenizer.

        Args:
            lines: the examples, in order.
            max_length: truncate each example to this many tokens and pad all to it; ``None``:
                no truncation, pad to the longest example.

        Raises:
            ValueError: the checkpoints have no usable tokenizer, or an example is longer than
                the model takes (the message says what is wrong; the core names the file).
        """
        ...


@dataclass(frozen=True)
class SourceOptions:
    """The options an adapter receives when it builds a source (``nasprobe probe`` flags).

    Attributes:
        model: ``--model``: ``MODULE:CALLABLE`` or ``MODULE:CALLABLE(key=value, ...)`` building
            the architecture of weight-only checkpoints; from Python also a callable or a
            framework model object.
        input_shape: ``--input-shape``: one sample's shape without the batch axis, in the
            framework's own axis order (the adapter's :attr:`Adapter.input_layout`: ``C,H,W``
            for PyTorch, ``H,W,C`` for Keras and JAX); given as integers or as text
            (``"3,32,32"``), kept as a tuple of integers (see :func:`parse_shape`).
        trust_pickle: ``--trust-pickle``: allow loaders that can run code stored in a file.

    Raises:
        NasprobeError: an input shape that is not positive whole numbers.
    """

    model: Any = None
    input_shape: tuple[int, ...] | None = None
    trust_pickle: bool = False

    def __post_init__(self):
        object.__setattr__(self, "input_shape", parse_shape(self.input_shape))
        object.__setattr__(self, "trust_pickle", bool(self.trust_pickle))


def parse_shape(value: str | Sequence[int] | None, layout: str = "",
                what: str = "--input-shape") -> tuple[int, ...] | None:
    """One sample's input shape (without the batch axis) as a tuple of positive integers.

    The one parser of input shapes, for the command line and every adapter. The shape is in
    the framework's own axis order (``layout``, e.g. ``"C,H,W"`` for PyTorch, ``"H,W,C"`` for
    Keras and JAX: :attr:`Adapter.input_layout`), which is not checked here (a dense model
    takes ``(D,)``) but named in the message when the value is wrong.

    Args:
        value: ``None``; text such as ``"3,32,32"`` or ``"3x32x32"``; or a sequence of
            integers (a model's ``input_shape`` attribute).
        layout: the axis order expected, for the message.
        what: what the value is, for the message (the option, or the model it came from).

    Returns:
        ``None`` for ``None``, else the shape.

    Raises:
        NasprobeError: an empty shape, or one that is not positive whole numbers.
    """
    from .errors import NasprobeError

    if value is None:
        return None
    parts = value.replace("x", ",").split(",") if isinstance(value, str) else value
    try:
        shape = tuple(_whole(p) for p in parts)
    except (TypeError, ValueError):
        shape = ()
    if not shape or min(shape) < 1:
        order = f" in the order {layout}" if layout else ""
        raise NasprobeError(f"{what} {value!r}: expected positive whole numbers{order}, "
                            "one sample's shape without the batch axis (e.g. 3,32,32)")
    return shape


def _whole(part) -> int:
    """An integer from ``part`` (text, or a number without a fractional part)."""
    if isinstance(part, str):
        return int(part.strip())
    if isinstance(part, bool) or int(part) != part:
        raise ValueError(part)
    return int(part)


@runtime_checkable
class Adapter(Protocol):
    """A framework adapter, as registered under the entry-point group ``nasprobe.adapters``.

    Attributes:
        name: the ``--framework`` value (``"torch"``, ``"keras"``, ...).
        extensions: file suffixes of its checkpoints, lower case, with the dot (``".pt"``); used
            in messages and to strip suffixes before parsing epochs from file names.
        extra: the pip extra that installs its dependencies (``pip install 'nasprobe[<extra>]'``);
            :data:`nasprobe.errors.EXTRAS` names it for each module of ``requires``.
        requires: modules that must be importable for :meth:`make_source` to work; the
            registry checks them first and names ``extra`` when one is missing.
        input_layout: the axis order of ``--input-shape`` for this framework (``"C,H,W"``,
            ``"H,W,C"``), shown in the command line's help and messages; ``""`` when the
            option does not apply (ONNX files know their input).
    """

    name: str
    extensions: tuple[str, ...]
    extra: str
    requires: tuple[str, ...]
    input_layout: str

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
        imported here, never when the adapter object itself is imported. Every adapter
        package also exports a function of this signature (``make_source`` in the package)."""
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
    input_layout: str = ""

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


def per_layer(value: Any, layers: Sequence[str], what: str) -> dict[str, Any]:
    """A regulariser's per-layer coefficient (``lam``, ``kappa``) for each of ``layers``.

    Args:
        value: one value for every layer (a float, or ``"auto"``), or ``{layer: value}``
            naming every layer (extra keys are ignored).
        layers: the layer names, in order.
        what: the argument's name, for the message.

    Returns:
        ``{layer: value}`` in the order of ``layers``.

    Raises:
        ValueError: a dict that has no value for some layer (names them).
    """
    if isinstance(value, Mapping):
        missing = [name for name in layers if name not in value]
        if missing:
            raise ValueError(f"{what} has no value for layers {sorted(missing)}")
        return {name: value[name] for name in layers}
    return {name: value for name in layers}


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
