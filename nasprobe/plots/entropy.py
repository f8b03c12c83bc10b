"""Mean receptive-field entropy per layer (2020 paper Fig. 5).

Up to ``max_panels`` layers (default 12): one panel per layer (depth order, 3 or 6 columns),
in each one line per group (configuration): ``entropy_mean`` in nats, the median over the
group's runs with a min-max band when the group has several runs. Each group's loss onset
(the moment of overfitting) is a vertical line in the group's colour and line style; groups
whose loss never rises (or have no loss) get none, as in the paper.

More layers: one panel per group with one line per layer coloured by depth (dark blue =
first layer, light blue = last, as in the line plot) and the loss onset dashed in red.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .select import Selection
from .style import (
    GROUP_STYLES,
    depth_colors,
    finish_grid,
    layer_grid,
    onset_line,
    panel_height,
    panel_label,
)

__all__ = ["draw_entropy"]

_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def draw_entropy(sel: Selection, width_in: float, *, var: str = "entropy_mean",
                 max_panels: int = 12, **kw) -> Figure:
    """Draw ``var`` (run, epoch, layer; default mean entropy, nats) per layer.

    width_in: figure width in inches; max_panels: most per-layer panels (module docstring).
    Returns the Figure: per-layer axes (labelled above with the layer name; a legend names
    the groups when there are several), or one axes per group for many layers.
    """
    if len(sel.layers) > max_panels:
        return _by_group(sel, width_in, var, kw)
    layers = sel.layers
    nrows, ncols, height = layer_grid(len(layers), width_in)
    fig = Figure(figsize=(width_in, height), **kw)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    epochs = sel.epochs
    onsets = {g: sel.loss_onset(g) for g in sel.groups}
    for ax, layer in zip(axes, layers):
        for k, group in enumerate(sel.groups):
            color = _COLORS[k % len(_COLORS)]
            style = GROUP_STYLES[k % len(GROUP_STYLES)]
            med, lo, hi = sel.band(var, group, layer)
            ok = np.isfinite(med)
            if len(sel.groups[group]) > 1:
                ax.fill_between(epochs[ok], lo[ok], hi[ok], color=color, alpha=0.25,
                                linewidth=0)
            ax.plot(epochs[ok], med[ok], color=color, label=group)
            onset_line(ax, onsets[group], linestyle=style, color=color)
        panel_label(ax, layer)
    xlim = (float(epochs.min()), float(epochs.max())) if epochs.size > 1 else (-1.0, 1.0)
    finish_grid(fig, axes, len(layers), ncols, xlim, "entropy (nats)", xlabel=sel.epoch_label)
    if len(sel.groups) > 1:
        axes[0].legend(frameon=False, loc="upper left")
    return fig


def _by_group(sel: Selection, width_in: float, var: str, kw) -> Figure:
    groups = list(sel.groups)
    fig = Figure(figsize=(width_in, min(9.5, panel_height(width_in) * len(groups))), **kw)
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    epochs = sel.epochs
    colors = depth_colors(len(sel.layers))
    for ax, group in zip(axes, groups):
        for color, layer in zip(colors, sel.layers):
            med, lo, hi = sel.band(var, group, layer)
            ok = np.isfinite(med)
            if len(sel.groups[group]) > 1:
                ax.fill_between(epochs[ok], lo[ok], hi[ok], color=color, alpha=0.2,
                                linewidth=0)
            ax.plot(epochs[ok], med[ok], color=color, linewidth=0.7)
        onset_line(ax, sel.loss_onset(group))
        ax.set_title(group, loc="left")
        ax.set_ylabel("entropy (nats)")
        ax.margins(x=0)
    axes[-1].set_xlabel(sel.epoch_label)
    fig.set_layout_engine("constrained")
    return fig
