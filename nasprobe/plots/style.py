"""Shared look of the figures: column widths, fonts, colours, the red loss axis."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.ticker import MaxNLocator

__all__ = ["WIDTHS", "LOSS_COLOR", "NAS_CMAP", "CORR_CMAP", "RC", "fig_width", "depth_colors",
           "add_loss", "onset_line", "GROUP_STYLES", "DEPTH_STYLES", "depth_styles", "panel_height", "layer_grid",
           "finish_grid", "panel_label"]

#: Journal column widths in inches: one column / two columns.
WIDTHS = {"single": 3.5, "double": 7.16}
#: Colour of the test loss (its line, axis, ticks and onset line), as in the papers.
LOSS_COLOR = "#d62728"
#: Colour map of NAS values, always on the fixed range [0, 1].
NAS_CMAP = "viridis"
#: Colour map of correlation histograms: rare = yellow, frequent = blue (2020 Fig. 7).
CORR_CMAP = "viridis_r"
#: Line styles that tell groups (configurations) apart where colour encodes depth.
GROUP_STYLES = ("--", ":", "-.", (0, (6, 2, 1, 2)))

#: rcParams used while drawing and saving: small print fonts, embedded fonts, no dates.
RC = {
    "font.size": 7.0,
    "axes.titlesize": 7.0,
    "axes.labelsize": 7.0,
    "xtick.labelsize": 6.0,
    "ytick.labelsize": 6.0,
    "legend.fontsize": 6.0,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "path",
    "svg.hashsalt": "nasprobe",
    "path.simplify": False,
}

# Navy → blue → teal: greyscale luminance (0.299 R + 0.587 G + 0.114 B) rises evenly from
# about 24 to 170 of 255, so the deepest line is still dark enough to see on white, and the
# hue changes too, so neighbouring depths differ in colour as well as in lightness.
_DEPTH_CMAP = LinearSegmentedColormap.from_list(
    "nas_depth", ["#061a40", "#1f4e9c", "#2c8fc9", "#6cc3c9"])
#: Line styles per depth (shallow → deep), ending with a solid line for the deepest layer:
#: with :func:`depth_colors` they tell layers apart in greyscale print.
DEPTH_STYLES = ((0, (1, 1.3)), (0, (5, 1.5, 1, 1.5)), (0, (3, 1.5)),
                (0, (6, 1.5, 1, 1.5, 1, 1.5)), (0, (9, 2)), "-")


def fig_width(width: str | float) -> float:
    """Figure width in inches from ``"single"`` (3.5 in), ``"double"`` (7.16 in) or a number."""
    if isinstance(width, str):
        try:
            return WIDTHS[width]
        except KeyError:
            raise ValueError(f"width must be one of {sorted(WIDTHS)} or inches, "
                             f"not {width!r}") from None
    return float(width)


def panel_height(width_in: float) -> float:
    """Height in inches of one plot panel for a figure ``width_in`` inches wide."""
    return 2.2 if width_in < 5 else 2.6


def depth_colors(n: int) -> np.ndarray:
    """``n`` RGB colours (array (n, 3), values in [0, 1]) from dark navy (first, shallowest
    layer) over blue to light teal (last, deepest), strictly increasing in greyscale
    luminance (evenly, from about 24 to 170 of 255)."""
    pos = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    return _DEPTH_CMAP(pos)[:, :3]


def depth_styles(n: int) -> list:
    """``n`` matplotlib line styles, shallow → deep: the last ``n`` of :data:`DEPTH_STYLES`
    (the deepest layer solid), cycling when there are more layers than styles."""
    k = len(DEPTH_STYLES)
    return [DEPTH_STYLES[(i - n) % k] for i in range(n)]


def layer_bands(ax, sel, var: str, group: str, layers=None) -> None:
    """One line per layer on ``ax``: the median of ``var`` (dims run, epoch, layer) over the
    runs of ``group`` in a :class:`~nasprobe.plots.select.Selection` ``sel``, in the layer's
    depth colour and dash, with the min-max band when the group has several runs. ``layers``:
    only these (default: every layer of ``sel``; colours stay those of the whole selection)."""
    epochs = sel.epochs
    colors = depth_colors(len(sel.layers))
    styles = depth_styles(len(sel.layers))
    for color, style, layer in zip(colors, styles, sel.layers):
        if layers is not None and layer not in layers:
            continue
        med, lo, hi = sel.band(var, group, layer)
        ok = np.isfinite(med)
        if len(sel.groups[group]) > 1:
            ax.fill_between(epochs[ok], lo[ok], hi[ok], color=color, alpha=0.25,
                            linewidth=0, zorder=1)
        ax.plot(epochs[ok], med[ok], color=color, linestyle=style, linewidth=1.2,
                label=layer, zorder=2)


def add_loss(ax, epochs, loss, *, label: str = "test loss", linestyle="-", twin=True):
    """Draw the loss (1-D, one value per epoch, NaN allowed) in red on a twin y axis of
    ``ax`` (or on ``ax`` itself with ``twin=False``); returns the loss axes (its
    ``get_label()`` is "loss") or None when the loss is absent or all NaN. The axis, its
    ticks and label are red."""
    if loss is None or not np.isfinite(np.asarray(loss, dtype=float)).any():
        return None
    lax = ax.twinx() if twin else ax
    lax.set_label("loss")
    y = np.asarray(loss, dtype=float)
    ok = np.isfinite(y)
    lax.plot(np.asarray(epochs)[ok], y[ok], color=LOSS_COLOR, linestyle=linestyle,
             linewidth=1.0, label=label, zorder=5)
    lax.set_ylabel(label, color=LOSS_COLOR)
    lax.tick_params(axis="y", colors=LOSS_COLOR)
    side = "right" if twin else "left"
    lax.spines[side].set_color(LOSS_COLOR)
    return lax


def onset_line(ax, epoch, *, linestyle="--", color=LOSS_COLOR) -> None:
    """Dashed vertical line at the loss onset ``epoch`` (nothing when it is None/NaN)."""
    if epoch is None or not np.isfinite(epoch):
        return
    ax.axvline(float(epoch), color=color, linestyle=linestyle, linewidth=0.8, zorder=4)



def layer_grid(n_panels: int, width_in: float, panel_h: float = 1.25):
    """Grid for one small panel per layer: returns ``(nrows, ncols, height_in)`` with 3
    columns at single width and 6 at double, panels ``panel_h`` in high, the figure at most
    9.5 in high (panels shrink to fit)."""
    ncols = max(1, min(n_panels, 3 if width_in < 5 else 6))
    nrows = -(-n_panels // ncols)
    return nrows, ncols, min(9.5, nrows * panel_h + 0.4)


def finish_grid(fig, axes, n_used: int, ncols: int, xlim, ylabel: str,
                right_in: float = 0.1, shared_y: bool = False, xlabel: str = "epoch") -> None:
    """Lay out a :func:`layer_grid` of ``axes`` (flat, row-major) without a layout engine
    (fast for 60 panels): hide unused panels, set ``xlim`` (epochs) everywhere, x tick labels
    and ``xlabel`` ("epoch" or "step") only on the lowest panel of each column, ``ylabel`` on the first column
    (with ``shared_y`` the y ticks too); fixed margins in inches (``right_in`` on the right,
    e.g. room for a colour bar)."""
    for k, ax in enumerate(axes):
        if k >= n_used:
            ax.set_visible(False)
            continue
        ax.set_xlim(*xlim)
        ax.xaxis.set_major_locator(MaxNLocator(4, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(3))
        if k + ncols < n_used:
            ax.set_xticks([])
        else:
            ax.set_xlabel(xlabel)
        if k % ncols == 0:
            ax.set_ylabel(ylabel)
        elif shared_y:
            ax.set_yticks([])
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.5 / w, right=1.0 - right_in / w, bottom=0.35 / h,
                        top=1.0 - 0.18 / h, hspace=0.55, wspace=0.35)


def panel_label(ax, text: str) -> None:
    """Small label above a grid panel (cheaper to lay out than an axes title)."""
    ax.text(0.5, 1.02, text, transform=ax.transAxes, ha="center", va="bottom", fontsize=6,
            clip_on=False)
