"""The probe options: one frozen value, built once (by the CLI or by :func:`nasprobe.probe`).

:class:`ProbeOptions` holds everything that decides what a probe job computes for a run; it is
validated when built and hashed once (:attr:`ProbeOptions.fingerprint`), so a worker process
can tell whether the tapped model it has cached was built with the same options.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from nasprobe.contract import SourceOptions
from nasprobe.errors import NasprobeError

__all__ = ["ProbeOptions", "TAPS", "NAS_ON", "DEVICES"]

#: Where a layer is tapped: ``linear`` (output of the linear operator, before BatchNorm) or
#: ``preact`` (input of the nonlinearity).
TAPS = ("linear", "preact")
#: Where NAS is computed (see :func:`nasprobe.job.run_context.host_nas`).
NAS_ON = ("auto", "graph", "host")
#: onnxruntime devices.
DEVICES = ("auto", "cpu", "cuda")


def _floats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise NasprobeError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


@dataclass(frozen=True)
class ProbeOptions:
    """What a probe job measures, and how (see ``nasprobe probe --help`` and docs/cli.md).

    Attributes:
        probe: the probe set: ``.npy`` images, ``.npz`` with ``x`` (and optional labels ``y``),
            or an image folder.
        framework: ``auto`` or a registered adapter's name (``onnx``, ``torch``, ``keras``...).
        source: what the adapter needs (``--model``, ``--input-shape``, ``--trust-pickle``).
        tap: one of :data:`TAPS`.
        exclude_bias: subtract the layer's bias before measuring.
        layers: regex selecting layers by name (``None``: all).
        device: one of :data:`DEVICES`.
        mean, std: per-channel normalisation of the probe images.
        batch_size: probe images per forward pass (bounds memory).
        keep_images: per-image heatmaps kept for the first N probe images.
        nas_on: one of :data:`NAS_ON`.
        corr: histogram the filter weight correlations (``corr_hist``); ``False`` leaves its
            counts at 0 (see :mod:`nasprobe.measures.correlation` for its memory bound).
        max_length: ``--max-length``: tokens per example of a text probe (truncated and padded
            to it); ``None``: padded to the longest line. Only for text probes.
    """

    probe: str
    framework: str = "auto"
    source: SourceOptions = field(default_factory=SourceOptions)
    tap: str = "linear"
    exclude_bias: bool = False
    layers: str | None = None
    device: str = "auto"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    batch_size: int = 64
    keep_images: int = 8
    nas_on: str = "auto"
    corr: bool = True
    max_length: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "probe", os.fspath(self.probe))
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))
        _choice("tap", self.tap, TAPS)
        _choice("nas_on", self.nas_on, NAS_ON)
        _choice("device", self.device, DEVICES)
        if self.layers is not None:
            try:
                re.compile(self.layers)
            except re.error as exc:
                raise NasprobeError(f"--layers {self.layers!r}: not a valid regular expression "
                                    f"({exc})") from None
        if int(self.batch_size) < 1:
            raise NasprobeError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.max_length is not None and int(self.max_length) < 1:
            raise NasprobeError(f"--max-length must be at least 1, not {self.max_length}")
        if int(self.keep_images) < 0:
            raise NasprobeError(f"keep_images must be 0 or more, not {self.keep_images}")
        # Hashed once, here: the per-process cache of tapped models is keyed by it.
        object.__setattr__(self, "_fingerprint", self._hash())

    @classmethod
    def build(cls, probe: str | os.PathLike, *, model: Any = None,
              input_shape: Sequence[int] | None = None, trust_pickle: bool = False,
              **rest: Any) -> ProbeOptions:
        """Options from flat keyword arguments (those of :func:`nasprobe.probe`): ``model``,
        ``input_shape`` and ``trust_pickle`` go into :attr:`source`, the rest are fields."""
        source = SourceOptions(model=model, input_shape=input_shape, trust_pickle=trust_pickle)
        return cls(probe=probe, source=source, **rest)

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of every option that shapes a run's tapped model and its numbers. A
        ``model`` that is not a string (a callable or model object) counts by its identity in
        this process."""
        return self._fingerprint  # type: ignore[attr-defined]

    def _hash(self) -> str:
        model = self.source.model
        if model is not None and not isinstance(model, str):
            model = f"<{type(model).__qualname__} {id(model)} {os.getpid()}>"
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}
        values["source"] = [model, self.source.input_shape, self.source.trust_pickle]
        text = json.dumps(values, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()
