"""Dead units per layer over epochs: ``dead_fraction`` (docs/measures.md, "Dead units").

One panel per group (configuration; without groups or a ``config`` coordinate, one per run,
side by side). In a panel, one line per layer that reaches a nonlinearity, coloured and dashed
by depth as in the line plot (dark navy = first layer, light teal = last; colour-blind safe and
apart in greyscale); a group of several runs (seeds) is drawn as its median with a band from
the minimum to the maximum. The y label names what is counted: "dead units" where every
nonlinearity is ReLU-like (a channel never above zero outputs zero), else "units never above
zero" with the nonlinearities named (a GELU, SiLU, sigmoid or tanh unit that is never above
zero still passes a signal).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .select import Selection
from .style import layer_bands, onset_line

__all__ = ["draw_dead", "dead_label", "RELU_LIKE"]

#: Nonlinearities whose output is exactly zero (or a clipped constant) below zero.
RELU_LIKE = frozenset({"Relu", "Clip", "ThresholdedRelu"})


def dead_label(sel: Selection) -> str:
    """The y label: "dead units" when every recorded nonlinearity of the selected layers is
    ReLU-like, else "units never > 0" naming them (or "nonlinearity unknown")."""
    if "nonlinearity" not in sel.ds.coords:
        return "share of units never > 0 (nonlinearity unknown)"
    kinds = sorted({str(v) for v in sel.ds["nonlinearity"].values} - {""})
    if kinds and set(kinds) <= RELU_LIKE:
        return "share of dead units (" + ", ".join(kinds) + ")"
    return "share of units never > 0 (" + ", ".join(kinds or ["none"]) + ")"


def draw_dead(sel: Selection, width_in: float, *, var: str = "dead_fraction",
              legend: bool | None = None, **kw) -> Figure:
    """Draw ``var`` (run, epoch, layer; default ``dead_fraction``) for a :class:`Selection`.

    width_in: figure width in inches; panels side by side, at most 2 per row at single width
    and 3 at double, rows filled evenly. legend: label the layers (default: at most 8 layers).
    Returns the Figure: one axes per group (``get_label()`` "dead"); layers without values
    (no nonlinearity) are left out.
    """
    groups = list(sel.groups)
    most = 2 if width_in < 5 else 3
    nrows = -(-len(groups) // most)
    ncols = -(-len(groups) // nrows)  # rows as full as they can be: 4 panels are 2 x 2
    fig = Figure(figsize=(width_in, min(9.5, 1.9 * nrows + 0.5)), **kw)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    has = np.isfinite(np.asarray(sel.ds[var].values, float)).any(axis=(0, 1))
    shown = [layer for layer, ok in zip(sel.layers, has) if ok]
    show_legend = len(shown) <= 8 if legend is None else legend
    for ax, group in zip(axes, groups):
        ax.set_label("dead")
        layer_bands(ax, sel, var, group, shown)
        onset_line(ax, sel.loss_onset(group))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(group, loc="left")
        ax.margins(x=0)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    for k, ax in enumerate(axes[: len(groups)]):
        if k + ncols >= len(groups):  # nothing drawn below: the epochs are labelled here
            ax.set_xlabel(sel.epoch_label)
            ax.xaxis.set_tick_params(labelbottom=True)
    fig.supylabel(dead_label(sel), fontsize=7.0)
    if show_legend and shown:
        axes[0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.08), borderaxespad=0.2,
                       ncol=min(len(shown), 4), frameon=False, handlelength=1.6,
                       columnspacing=1.0)
    fig.set_layout_engine("constrained")
    return fig
