"""NAS distributions (``nas_hist``) per layer: runs overlaid, or a ridgeline over epochs.

One small panel per layer (depth order, 3 or 6 columns). The histogram of a (group, epoch) is
the group's runs' counts summed and divided by their total (a fraction per bin of width 0.01).

* ``overlay`` (the default with several groups; without groups or a ``config`` coordinate each
  run is a group): one step curve per group at each chosen epoch (``epochs``; default the last
  one), colour per group from the Okabe-Ito palette (told apart with colour-blindness) and a
  line style per group too (told apart in greyscale print); several epochs are told apart
  by line width, thin = early, thick = late.
* ``ridge`` (the default for one group): the epochs (``epochs``, default up to 10 spread over
  the run) stacked upwards, earliest at the bottom, each curve filled in viridis by its rank
  in time (dark = early, yellow = late), so that the drift of the distribution over training
  reads from bottom to top.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .select import Selection
from .style import finish_grid, layer_grid, panel_label

__all__ = ["draw_hist", "hist_fractions", "OKABE_ITO", "pick_epochs"]

#: Okabe & Ito's palette, distinguishable with the common colour-vision deficiencies.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000",
             "#F0E442")
_STYLES = ("-", "--", ":", "-.", (0, (6, 2, 1, 2)), (0, (1, 1)), (0, (8, 2)), (0, (3, 1, 1, 1)))


def hist_fractions(sel: Selection, group: str, layer: str, epoch: int) -> np.ndarray:
    """``(nas_bin,)`` fractions of the layer's NAS values per bin at ``epoch``: counts summed
    over the group's runs, divided by their total (all NaN where there are none)."""
    da = sel.ds["nas_hist"].sel(run=sel.groups[group], layer=layer, epoch=epoch)
    counts = np.nansum(np.asarray(da.transpose("run", "nas_bin").values, float), axis=0)
    total = counts.sum()
    return counts / total if total > 0 else np.full(counts.shape, np.nan)


def pick_epochs(sel: Selection, epochs, ridge: bool) -> list[int]:
    """The epochs drawn: ``epochs`` as given (each must be in the store), else the last probed
    epoch (overlay) or up to 10 spread evenly from the first to the last (ridge)."""
    have = [int(e) for e in sel.epochs]
    if epochs is not None:
        want = [int(e) for e in (epochs.split(",") if isinstance(epochs, str) else epochs)]
        missing = sorted(set(want) - set(have))
        if missing:
            raise ValueError(f"epochs {missing} are not in the store (it has {have})")
        return want
    counts = np.nansum(np.asarray(sel.ds["nas_hist"].values, float), axis=(0, 2, 3))
    probed = [e for e, c in zip(have, counts) if c > 0] or have
    if not ridge:
        return probed[-1:]
    idx = np.unique(np.round(np.linspace(0, len(probed) - 1, min(10, len(probed)))).astype(int))
    return [probed[i] for i in idx]


def draw_hist(sel: Selection, width_in: float, *, epochs=None, mode: str | None = None,
              **kw) -> Figure:
    """Draw the NAS histograms of a :class:`Selection` (needs ``nas_hist``).

    width_in: figure width in inches. epochs: list or "10,20" (see :func:`pick_epochs`).
    mode: ``"overlay"`` or ``"ridge"`` (default: ridge for one group, else overlay).
    Returns the Figure, one axes per layer (``get_label()`` "hist"); in ``overlay`` mode
    ``fig.hist_curves`` maps each drawn line to its ``(group, epoch)``.
    """
    groups = list(sel.groups)
    mode = mode or ("ridge" if len(groups) == 1 else "overlay")
    if mode not in ("overlay", "ridge"):
        raise ValueError(f"hist mode must be 'overlay' or 'ridge', not {mode!r}")
    chosen = pick_epochs(sel, epochs, mode == "ridge")
    layers = sel.layers
    nrows, ncols, height = layer_grid(len(layers), width_in,
                                      panel_h=1.25 if mode == "overlay" else 1.6)
    fig = Figure(figsize=(width_in, min(9.5, height + 0.3)), **kw)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    centres = np.asarray(sel.ds["nas_bin"].values, float)
    edges = np.r_[centres - np.diff(centres, prepend=2 * centres[0] - centres[1]) / 2,
                  centres[-1] + (centres[-1] - centres[-2]) / 2]
    fig.hist_curves = {}
    for ax, layer in zip(axes, layers):
        ax.set_label("hist")
        if mode == "ridge":
            _ridge(ax, sel, groups[0], layer, chosen, edges)
        else:
            _overlay(fig, ax, sel, groups, layer, chosen, edges)
        panel_label(ax, layer)
    finish_grid(fig, axes, len(layers), ncols, (0.0, 1.0),
                sel.epoch_label if mode == "ridge" else "fraction of values")
    for k, ax in enumerate(axes[: len(layers)]):
        if ax.get_xlabel():
            ax.set_xlabel("NAS")
        if mode == "ridge":  # each curve's baseline, named by its epoch on the first column
            ax.set_yticks(np.arange(len(chosen)) * 0.6,
                          [str(e) for e in chosen] if k % ncols == 0 else [])
            ax.tick_params(axis="y", length=0, labelsize=5)
    handles = _legend_handles(groups, chosen, mode)
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 5),
                   frameon=False, bbox_to_anchor=(0.5, 1.0), fontsize=6)
        w, h = fig.get_size_inches()
        fig.subplots_adjust(top=1.0 - 0.45 / h)
    return fig


def _ridge(ax, sel, group, layer, chosen, edges) -> None:
    cmap = colormaps["viridis"]
    n = len(chosen)
    fracs = [hist_fractions(sel, group, layer, e) for e in chosen]
    peak = max([float(np.nanmax(f)) for f in fracs if np.isfinite(f).any()] + [1e-12])
    for k, f in enumerate(fracs):
        if not np.isfinite(f).any():
            continue
        y = k * 0.6 + np.r_[f, f[-1]] / peak  # curves overlap a little, as ridgelines do
        color = cmap(k / max(n - 1, 1))
        ax.fill_between(edges, k * 0.6, y, step="post", color=color, alpha=0.85,
                        linewidth=0, zorder=n - k)
        ax.step(edges, y, where="post", color="black", linewidth=0.4, zorder=n - k)
    ax.set_ylim(0.0, (n - 1) * 0.6 + 1.1)


def _overlay(fig, ax, sel, groups, layer, chosen, edges) -> None:
    widths = np.linspace(0.6, 1.4, len(chosen)) if len(chosen) > 1 else [1.0]
    for g, group in enumerate(groups):
        for epoch, lw in zip(chosen, widths):
            f = hist_fractions(sel, group, layer, epoch)
            if not np.isfinite(f).any():
                continue
            (line,) = ax.step(edges, np.r_[f, f[-1]], where="post",
                              color=OKABE_ITO[g % len(OKABE_ITO)],
                              linestyle=_STYLES[g % len(_STYLES)], linewidth=lw)
            fig.hist_curves[line] = (group, epoch)
    ax.set_ylim(bottom=0.0)


def _legend_handles(groups, chosen, mode) -> list:
    from matplotlib.lines import Line2D

    if mode == "ridge":  # the epochs are named on the y axis
        return []
    out = [Line2D([], [], color=OKABE_ITO[g % len(OKABE_ITO)], linestyle=_STYLES[g % len(_STYLES)],
                  label=group) for g, group in enumerate(groups)]
    if len(chosen) > 1:
        widths = np.linspace(0.6, 1.4, len(chosen))
        out += [Line2D([], [], color="0.3", linewidth=w, label=f"epoch {e}")
                for e, w in zip(chosen, widths)]
    return out
