"""NAS Line Plot (2021 paper Fig. 2b, 3): median NAS per layer over epochs.

One panel per group (configuration). In a panel, one line per layer, coloured by depth from
dark navy (first layer) over blue to light teal (last) and drawn in a line style of its own
(:func:`~nasprobe.plots.style.depth_styles`), so that layers stay apart in greyscale print;
with several runs in the group the line is the
median over runs and a band spans their minimum to maximum (a functional box plot). The test
loss (median over the group's runs) is drawn in red on a second y axis, with a dashed red
vertical line at the loss onset (:func:`nasprobe.measures.onsets.loss_onset`).
"""

from __future__ import annotations

from matplotlib.figure import Figure

from .select import Selection
from .style import add_loss, layer_bands, onset_line, panel_height

__all__ = ["draw_line"]


def draw_line(sel: Selection, width_in: float, *, var: str = "nas_median",
              ylabel: str = "median NAS", legend: bool | None = None, **kw) -> Figure:
    """Draw the line plot of ``var`` (dims run, epoch, layer) for a :class:`Selection`.

    width_in: figure width in inches; height :func:`panel_height` per group (at most 9.5 in).
    legend: label the layers (default: only when there are at most 8 layers).
    Returns the Figure: one NAS axes per group (``get_label()`` "nas"), plus a red twin
    axes (label "loss") per group that has a loss.
    """
    groups = list(sel.groups)
    fig = Figure(figsize=(width_in, min(9.5, panel_height(width_in) * len(groups))), **kw)
    axes = fig.subplots(len(groups), 1, squeeze=False, sharex=True)[:, 0]
    epochs = sel.epochs
    show_legend = len(sel.layers) <= 8 if legend is None else legend
    for ax, group in zip(axes, groups):
        ax.set_label("nas")
        layer_bands(ax, sel, var, group)
        if var.startswith("nas"):
            ax.set_ylim(0.0, 1.0)
        ax.set_ylabel(ylabel)
        ax.set_title(group, loc="left")
        ax.margins(x=0)
        lax = add_loss(ax, epochs, sel.loss(group))
        onset_line(ax, sel.loss_onset(group))
        if show_legend:
            # Above the axes, right of the title: never on top of the curves.
            ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2,
                      ncol=min(len(sel.layers), 8 if width_in >= 5 else 4), frameon=False,
                      handlelength=1.2, columnspacing=1.0)
        if lax is not None:
            ax.set_zorder(lax.get_zorder() + 1)  # NAS lines above, loss axis visible
            ax.patch.set_visible(False)
    axes[-1].set_xlabel(sel.epoch_label)
    fig.set_layout_engine("constrained")
    return fig
