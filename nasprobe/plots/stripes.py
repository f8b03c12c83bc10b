"""NAS Stripe Plot (2021 paper Fig. 2c, 5): one colour stripe per layer over epochs.

One panel per group. Rows are layers sorted by depth (first layer at the top), columns are
epochs (each stripe cell spans half-way to the neighbouring epochs), colour is the median NAS
(median over the group's runs) in viridis on the fixed range [0, 1]; epochs not probed are
left blank. The test loss is overlaid in red on a second y axis, with the loss onset dashed.
With many layers only every k-th row is labelled so that labels stay readable (≤ 20 labels).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .select import Selection
from .style import NAS_CMAP, add_loss, onset_line

__all__ = ["draw_stripes", "epoch_edges"]


def epoch_edges(epochs) -> np.ndarray:
    """Cell edges (n+1,) around epochs (n,): midpoints, outer cells as wide as their neighbour
    (a single epoch gets the width 1)."""
    e = np.asarray(epochs, dtype=float)
    if e.size == 1:
        return np.array([e[0] - 0.5, e[0] + 0.5])
    mid = 0.5 * (e[1:] + e[:-1])
    return np.concatenate([[e[0] - (mid[0] - e[0])], mid, [e[-1] + (e[-1] - mid[-1])]])


def draw_stripes(sel: Selection, width_in: float, *, var: str = "nas_median", **kw) -> Figure:
    """Draw the stripe plot of ``var`` (run, epoch, layer) for a :class:`Selection`.

    width_in: figure width in inches; each group's panel is 0.09 in per layer high
    (1.2 in at least), the figure at most 9.5 in. Returns the Figure: per group a stripe
    axes (data y = row index, layer i spans [i, i+1] from the top) and, with a loss, its red
    twin axes; axes labels (``get_label()``) "nas" and "loss"; a colour bar on the right.
    """
    groups = list(sel.groups)
    layers = sel.layers
    n = len(layers)
    panel = max(1.2, 0.09 * n + 0.5)
    fig = Figure(figsize=(width_in, min(9.5, panel * len(groups) + 0.3)), **kw)
    axes = fig.subplots(len(groups), 1, squeeze=False, sharex=True)[:, 0]
    xe = epoch_edges(sel.epochs)
    ye = np.arange(n + 1)
    step = max(1, int(np.ceil(n / 20)))
    mesh = None
    for ax, group in zip(axes, groups):
        ax.set_label("nas")
        z = np.stack([sel.band(var, group, layer)[0] for layer in layers])  # (layer, epoch)
        mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(z), cmap=NAS_CMAP, vmin=0.0,
                             vmax=1.0, shading="flat", antialiased=False, linewidth=0,
                             rasterized=False)
        ax.set_ylim(n, 0)
        ax.set_yticks(np.arange(0, n, step) + 0.5, [layers[i] for i in range(0, n, step)])
        ax.tick_params(axis="y", length=0)
        ax.set_title(group, loc="left")
        add_loss(ax, sel.epochs, sel.loss(group))
        onset_line(ax, sel.loss_onset(group))
    axes[-1].set_xlabel(sel.epoch_label)
    fig.set_layout_engine("constrained")
    fig.colorbar(mesh, ax=list(axes), label=var.replace("_", " "), shrink=0.9, aspect=30,
                 pad=0.08)
    return fig
