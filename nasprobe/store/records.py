"""Typed records of a store's runs, as :mod:`nasprobe.store.runs` reads them with zarr alone:
per run its jobs, per job the arrays of its committed epochs, and the summary ``nasprobe info``
prints. Plain data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LayerMaps", "JobArrays", "RunRecord", "RunSummary", "StoreSummary"]


@dataclass
class LayerMaps:
    """One layer's heatmaps in one job group, at its committed epochs (``E`` of them)."""

    nas_map: np.ndarray  #: (E, *spatial), the mean NAS per location
    nas_image_map: np.ndarray  #: (E, images, *spatial), the first probe images' maps
    unit_activity: np.ndarray | None = None  #: (E, channels); None where not recorded


@dataclass
class JobArrays:
    """What one job group holds for its committed epochs (``E``) and layers (``L``): the
    coordinates always, ``variables`` and ``maps`` when read with values."""

    attrs: dict  #: the job group's attributes
    epoch: np.ndarray  #: (E,) int
    layer: list[str]  #: the L layer names, in the job's graph order
    layer_kind: list[str]
    channels: np.ndarray  #: (L,) int
    locations: np.ndarray  #: (L,) int
    depth: np.ndarray  #: (L,) int
    nonlinearity: list[str] | None = None  #: per layer; None for jobs before unit activity
    has_activity: bool = False  #: whether the job recorded unit activity
    #: ``nas_*``, ``entropy_mean`` (E, L), ``nas_quantile``/``nas_hist``/``corr_hist``
    #: (E, L, bins), ``loss``/``accuracy`` (E,), ``dead_fraction`` (E, L) where recorded
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    maps: dict[str, LayerMaps] = field(default_factory=dict)  #: layer → its heatmaps


@dataclass
class RunRecord:
    """One run of a store as :func:`read_runs` reads it."""

    key: str  #: the run's group under ``runs/``
    name: str
    first: str  #: its first job (the runs' order)
    attrs: dict[str, dict]  #: job → the job group's attributes
    jobs: dict[str, JobArrays] = field(default_factory=dict)  #: job → its committed epochs
    extra: dict[str, dict[int, float]] = field(default_factory=dict)  #: metric → epoch → value


@dataclass
class RunSummary:
    """One run of :class:`StoreSummary`: its ``name``, committed ``epochs`` (sorted) and merged
    ``provenance`` (framework, source, provider, nas_on, skipped, nonfinite, probe_sets...)."""

    name: str
    epochs: list[int]
    provenance: dict


@dataclass
class StoreSummary:
    """What ``nasprobe info`` prints: the store's ``attrs`` (as in the xarray view, without
    ``runs`` and ``sources``), its ``runs``, its ``layers`` as ``(name, kind, channels,
    locations)`` in the view's order, the names of its per-epoch ``metrics``, each layer's
    recorded ``nonlinearity`` (name → operator; absent for stores that predate it) and
    whether any job recorded unit ``activity`` (``dead_fraction``, ``unit_activity``)."""

    attrs: dict
    runs: list[RunSummary]
    layers: list[tuple[str, str, int, int]]
    metrics: list[str]
    nonlinearity: dict[str, str] = field(default_factory=dict)
    activity: bool = False
