"""The figures of the two papers, drawn from a nasprobe store.

>>> fig = draw(tree, "line", width="single", runs=["vanilla-s0"], layers="conv")
>>> save(fig, "line.pdf")

Kinds (one module each, listed in :mod:`nasprobe.plots.kinds`): ``line`` (2021 Fig. 2b/3),
``stripes`` (2021 Fig. 2c/5), ``heatmaps`` (2021 Fig. 4), ``corr`` (2020 Fig. 7), ``entropy``
(2020 Fig. 5), and two of nasprobe's own: ``dead`` (share of dead units per layer over epochs)
and ``hist`` (NAS distributions of several runs overlaid, or a ridgeline over epochs).
Runs are grouped into configurations as described in :mod:`nasprobe.plots.select`; ``dead``
and ``hist`` without groups (or a ``config`` coordinate) take each run as its own group.
Figures are :class:`matplotlib.figure.Figure` objects made without pyplot (no global state).
Importing this package imports neither matplotlib nor xarray (the command line reads
:data:`KINDS`); :func:`draw` and :func:`save` do.

Owns every figure kind (one module each), the selection of runs and layers (:mod:`.select`)
and the shared look (:mod:`.style`). May import matplotlib, xarray, :mod:`nasprobe.measures`
(onsets drawn on the figures), :mod:`nasprobe.store` (layer group names) and the base modules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .kinds import KINDS, Kind

if TYPE_CHECKING:  # matplotlib and xarray are imported by draw/save, not by this package
    from matplotlib.figure import Figure

__all__ = ["KINDS", "Kind", "draw", "save", "SAVE_DPI"]

#: Resolution of saved PNGs (dots per inch); vector formats keep it for rasterised parts.
SAVE_DPI = 300
_FORMATS = {".pdf": "pdf", ".svg": "svg", ".png": "png"}


def draw(tree_or_ds, kind: str, *, width="double", runs=None, layers=None, groups=None,
         **kw) -> Figure:
    """Draw one figure of a store.

    tree_or_ds: an ``xarray.DataTree`` (a store; heatmaps read its ``heatmaps/<layer>``
    groups) or its root ``xarray.Dataset``. kind: a name of :data:`KINDS`.
    width: ``"single"`` (3.5 in), ``"double"`` (7.16 in) or a width in inches.
    runs: run names (list or "A,B"); layers: names (list) or a regex (``re.search``);
    groups: ``{name: [runs]}`` drawn as one band each (default: the ``config`` coordinate
    on ``run`` if any, else all selected runs as one group).
    kw: passed to the kind's function (e.g. ``max_cols`` for heatmaps, ``var`` for line and
    stripes, ``epochs`` and ``mode`` for hist) or to :class:`~matplotlib.figure.Figure`
    (e.g. ``dpi``).
    Returns the Figure (height grows with the number of layers/groups, at most 9.5 in).
    """
    import matplotlib

    from .select import select
    from .style import RC, fig_width

    if kind not in KINDS:
        raise ValueError(f"unknown figure kind {kind!r}; choose one of {', '.join(KINDS)}")
    sel = select(tree_or_ds, runs=runs, layers=layers, groups=groups)
    if KINDS[kind].per_run and not groups and "config" not in sel.ds.coords:
        sel = select(tree_or_ds, runs=runs, layers=layers,
                     groups={str(r): [str(r)] for r in sel.ds["run"].values})
    need = kw.get("var", KINDS[kind].needs)
    if need not in sel.ds:
        why = (" (written by a nasprobe before unit activity was recorded: probe again into "
               "a new store)" if need == "dead_fraction" else "")
        raise ValueError(f"the store has no {need!r}, which the {kind} figure needs{why}")
    with matplotlib.rc_context(RC):
        return KINDS[kind].function()(sel, fig_width(width), **kw)


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path``; the format comes from the suffix (.pdf, .svg or .png).

    Output is deterministic (identical figures give identical bytes): no dates or software
    stamps in the metadata, a fixed SVG hash salt, fixed dpi (:data:`SAVE_DPI`). Fonts are
    embedded (PDF TrueType, SVG text as paths). Returns the path written.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown figure format {path.suffix!r}; use .pdf, .svg "
                         "or .png")
    import matplotlib

    from .style import RC

    metadata = {"pdf": {"CreationDate": None, "ModDate": None, "Producer": None,
                        "Creator": None},
                "svg": {"Date": None, "Creator": None},
                "png": {"Software": None}}[fmt]
    with matplotlib.rc_context(RC):
        fig.savefig(path, format=fmt, dpi=SAVE_DPI, metadata=metadata)
    return path
