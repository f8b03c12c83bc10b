"""The figure kinds: the one list ``nasprobe plot --kind``, ``nasprobe report``, the demo and
:func:`nasprobe.plots.draw` read.

This module imports nothing (the command line reads it to build its options). A new kind is
one :class:`Kind` entry in :data:`KINDS` plus the module of :mod:`nasprobe.plots` whose
function draws it, ``draw_<kind>(sel, width_in, **kw) -> Figure``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

__all__ = ["Kind", "KINDS"]


@dataclass(frozen=True)
class Kind:
    """One figure kind.

    Attributes:
        name: the ``--kind`` value; the module ``nasprobe.plots.<name>`` holds ``draw_<name>``.
        needs: the store variable the figure is drawn from (its default ``var``).
        about: for the command line's help: the papers' figure it reproduces, or what it shows.
        caption: one sentence under the figure in the HTML report.
        per_run: without groups (or a ``config`` coordinate), each run is its own group
            (instead of all selected runs as one band).
    """

    name: str
    needs: str
    about: str
    caption: str
    per_run: bool = False

    def function(self) -> Callable:
        """The drawing function (imports its module, and matplotlib, on first use)."""
        module = importlib.import_module(f"{__package__}.{self.name}")
        return getattr(module, f"draw_{self.name}")


#: Every figure kind by name, in the order the report shows them.
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("line", "nas_median", "2021 paper Fig. 2b/3",
         "Median NAS per layer against epoch (2021 paper line plots)."),
    Kind("stripes", "nas_median", "2021 paper Fig. 2c/5",
         "NAS per layer and epoch as colour stripes."),
    Kind("heatmaps", "nas_mean", "2021 paper Fig. 4",
         "Mean NAS per location (receptive field) per layer."),
    Kind("corr", "corr_hist", "2020 paper Fig. 7",
         "Histogram of filter weight correlations per layer and epoch (2020 paper Fig. 7)."),
    Kind("entropy", "entropy_mean", "2020 paper Fig. 5",
         "Mean activation entropy per layer against epoch (2020 paper)."),
    Kind("dead", "dead_fraction", "share of dead units per layer over epochs",
         "Share of dead units per layer against epoch: channels never above zero at the "
         "nonlinearity's input on the whole probe set.", per_run=True),
    Kind("hist", "nas_hist", "NAS distributions, runs overlaid (one run: ridgeline over epochs)",
         "NAS distributions per layer: runs overlaid at the last epoch, or for one run a "
         "ridgeline over epochs (earliest at the bottom).", per_run=True),
)}
