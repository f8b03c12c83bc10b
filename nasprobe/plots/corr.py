"""Weight-correlation histograms (2020 paper Fig. 7): epoch × correlation per layer.

x = epoch, y = correlation coefficient in bins of 0.01 on [-1, 1] (``corr_hist``). Colour =
the fraction of the layer's filter pairs in a bin at that epoch (counts summed over the
group's runs, divided by the epoch's total), from rare (yellow) to frequent (blue), on one
colour scale shared by all panels; epochs without counts are blank. The loss onset of the
group is a dashed red line.

Up to ``max_panels`` (default 12) (group, layer) pairs: one panel each, layers in depth
order, wrapped into 3 (single width) or 6 (double width) columns. More: one axes per group
in which the layers are stacked as horizontal bands (layer ``i`` spans rows ``[i, i + 1]``,
correlation -1 at the bottom of its band and +1 at the top), so 60 layers stay one figure.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .select import Selection
from .stripes import epoch_edges
from .style import CORR_CMAP, finish_grid, layer_grid, onset_line, panel_label

__all__ = ["draw_corr", "corr_fractions"]

_BAND_GAP = 6  # blank histogram rows between stacked layers


def corr_fractions(sel: Selection, group: str, layer: str) -> np.ndarray:
    """Fractions (corr_bin, epoch) of filter pairs per correlation bin for one layer: counts
    summed over the group's runs, each epoch divided by its total (NaN where it is 0)."""
    da = sel.ds["corr_hist"].sel(run=sel.groups[group], layer=layer)
    counts = np.nansum(da.transpose("run", "corr_bin", "epoch").values, axis=0)
    total = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / total, np.nan)


def draw_corr(sel: Selection, width_in: float, *, max_panels: int = 12, **kw) -> Figure:
    """Draw the correlation histograms of a :class:`Selection` (needs ``corr_hist``).

    width_in: figure width in inches; max_panels: most panels before layers are stacked
    (module docstring). Returns the Figure with a shared colour bar.
    """
    layers = sel.layers
    panels = [(g, layer) for g in sel.groups for layer in layers]
    fracs = {p: corr_fractions(sel, *p) for p in panels}
    vmax = max([float(np.nanmax(f)) for f in fracs.values() if np.isfinite(f).any()]
               + [1e-12])
    onsets = {g: sel.loss_onset(g) for g in sel.groups}
    style = dict(cmap=CORR_CMAP, vmin=0.0, vmax=vmax)
    xe = epoch_edges(sel.epochs)
    if len(panels) <= max_panels:
        fig, axes, mesh = _grid(sel, width_in, panels, fracs, onsets, xe, style, kw)
    else:
        fig, axes, mesh = _stacked(sel, width_in, fracs, onsets, xe, style, kw)
    cax = fig.add_axes((1.0 - 0.55 / width_in, 0.2, 0.12 / width_in, 0.6))
    fig.colorbar(mesh, cax=cax, label="fraction of filter pairs")
    return fig


def _grid(sel, width_in, panels, fracs, onsets, xe, style, kw):
    nrows, ncols, height = layer_grid(len(panels), width_in)
    fig = Figure(figsize=(width_in, height), **kw)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    ye = epoch_edges(sel.ds["corr_bin"].values)
    many = len(sel.groups) > 1
    mesh = None
    for ax, (group, layer) in zip(axes, panels):
        mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(fracs[group, layer]),
                             shading="flat", antialiased=False, linewidth=0, **style)
        panel_label(ax, f"{group}: {layer}" if many else layer)
        ax.set_ylim(-1.0, 1.0)
        onset_line(ax, onsets[group])
    finish_grid(fig, axes, len(panels), ncols, (xe[0], xe[-1]), "correlation",
                right_in=0.75, shared_y=True, xlabel=sel.epoch_label)
    for ax in axes[: len(panels): ncols]:
        ax.set_yticks([-1.0, 0.0, 1.0])
    return fig, axes, mesh


def _stacked(sel, width_in, fracs, onsets, xe, style, kw):
    layers = sel.layers
    n = len(layers)
    groups = list(sel.groups)
    panel = max(1.5, 0.12 * n + 0.5)
    fig = Figure(figsize=(width_in, min(9.5, panel * len(groups) + 0.3)), **kw)
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    step = max(1, int(np.ceil(n / 20)))
    mesh = None
    for ax, group in zip(axes, groups):
        bands = []
        for layer in layers:
            f = fracs[group, layer][::-1]  # +1 on top within the band
            bands += [f, np.full((_BAND_GAP, f.shape[1]), np.nan)]
        img = np.ma.masked_invalid(np.concatenate(bands))
        mesh = ax.imshow(img, aspect="auto", interpolation="nearest", origin="upper",
                         extent=(xe[0], xe[-1], n, 0), **style)
        ax.set_yticks(np.arange(0, n, step) + 0.5, layers[::step])
        ax.tick_params(axis="y", length=0)
        ax.set_ylabel("layer (band: correlation -1 to +1 upwards)")
        ax.set_title(group, loc="left")
        onset_line(ax, onsets[group])
    axes[-1].set_xlabel(sel.epoch_label)
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.9 / w, right=1.0 - 0.8 / w, bottom=0.4 / h, top=1 - 0.25 / h,
                        hspace=0.3)
    return fig, axes, mesh
