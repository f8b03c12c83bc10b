"""NAS Heatmaps (2021 paper Fig. 4): rows = layers, columns = epochs, the test loss above.

Each cell is the layer's mean NAS map at that epoch (``heatmaps/<layer>/nas_map``, averaged
over the group's runs) in viridis on the fixed range [0, 1], drawn with nearest-neighbour
pixels, every cell square (``aspect="equal"``: a wide figure never stretches a map) and one
colour bar for the scale. 1-D layers (a text model's tokens) are a strip with one column per
token position, a vision transformer's token layers are drawn on their patch grid with the
class token apart (:func:`nasprobe.plots.select.on_patch_grid`), dense layers a single 1x1
cell.

All cells of a group are composed into one image in one axes whose data coordinates are
(column, row), rows top-down: the cell of layer ``i`` and column ``j`` spans
``[j, j + 1 - g] × [i, i + 1 - g]``, a gap of ``g = 1 / px`` left blank, where each cell is
``px`` image pixels wide (one more than the largest map side, between 16 and 65; stored as
``fig.nas_cell_pixels``); each map fills the ``(px - 1) × (px - 1)`` pixels by
nearest-neighbour repetition, so every map element of up to 64 × 64 maps is visible.
Column ``j`` shows epoch ``shown[j]``.

**Column subsampling.** With more probed epochs than ``max_cols`` (default 12 at double
width, 7 at single), ``max_cols`` epochs are shown, evenly spaced in index over the probed
epochs (``np.linspace(0, n - 1, max_cols)`` rounded), so the first and last probed epochs
are always shown; the loss above is drawn over all epochs, positioned on the same column
axis by linear interpolation between the shown epochs.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .select import Selection, heatmap_maps
from .style import LOSS_COLOR, NAS_CMAP

__all__ = ["draw_heatmaps", "shown_epochs", "compose"]


def shown_epochs(epochs, probed, max_cols: int) -> np.ndarray:
    """Epochs to show as columns: ``epochs`` (n,) where ``probed`` (bool, n) holds, evenly
    subsampled in index to at most ``max_cols`` (first and last kept). Returns (m,) ints."""
    e = np.asarray(epochs)[np.asarray(probed, dtype=bool)]
    if e.size <= max_cols:
        return e
    idx = np.unique(np.round(np.linspace(0, e.size - 1, max_cols)).astype(int))
    return e[idx]


def _probed(sel: Selection, runs) -> np.ndarray:
    v = sel.ds["nas_mean"].sel(run=runs).transpose("epoch", ...).values
    return np.isfinite(v.reshape(v.shape[0], -1)).any(axis=1)


def _enlarge(m: np.ndarray, px: int) -> np.ndarray:
    rows = (np.arange(px) * m.shape[0]) // px  # nearest neighbour, each element >= 1 pixel
    cols = (np.arange(px) * m.shape[1]) // px
    return m[np.ix_(rows, cols)]


def compose(sel: Selection, runs, shown, px: int) -> np.ndarray:
    """One image (n_layers * px, n_cols * px) of all cells of a group, NaN in the gaps and
    where an epoch was not probed; see the module docstring for the geometry."""
    layers = sel.layers
    img = np.full((len(layers) * px, max(len(shown), 1) * px), np.nan)
    for i, layer in enumerate(layers):
        for j, m in enumerate(heatmap_maps(sel, layer, runs, shown)):
            img[i * px: (i + 1) * px - 1, j * px: (j + 1) * px - 1] = _enlarge(m, px - 1)
    return img


def _cell_pixels(sel: Selection) -> int:
    side = 1
    for layer in sel.layers:
        (m,) = heatmap_maps(sel, layer, sel.groups[next(iter(sel.groups))], sel.epochs[-1:])
        side = max(side, *m.shape)
    return int(np.clip(side + 1, 16, 65))


def draw_heatmaps(sel: Selection, width_in: float, *, max_cols: int | None = None,
                  **kw) -> Figure:
    """Draw the heatmap grid of a :class:`Selection`.

    width_in: figure width in inches; rows are square-ish (at most 9.5 in in total).
    max_cols: most epoch columns (see the module docstring). Returns the Figure: per group a
    loss axes (``get_label()`` "loss", title = group; without loss values it says "no test
    loss") and a cell axes (label "nas"), and one colour bar (label "colorbar", NAS 0–1);
    ``fig.nas_columns`` maps each group to the epochs shown.
    """
    groups = list(sel.groups)
    layers = sel.layers
    if max_cols is None:
        max_cols = 12 if width_in >= 5 else 7
    cols = {g: shown_epochs(sel.epochs, _probed(sel, sel.groups[g]), max_cols) for g in groups}
    ncol = max(max(len(c) for c in cols.values()), 1)
    # room for the layer names (module paths of transformers run long), at most 40 %
    left_in = min(max(0.8, 0.062 * max((len(n) for n in layers), default=0)), 0.4 * width_in)
    cell = (0.98 * width_in - left_in - 0.62) / ncol  # the cells' box, see subplots_adjust
    grid_h = [max(0.8, cell * len(layers)) for _ in groups]
    loss_h = 0.7 if width_in >= 5 else 0.55
    total = sum(grid_h) + len(groups) * (loss_h + 0.35) + 0.8
    scale = min(1.0, 9.5 / total)
    fig = Figure(figsize=(width_in, min(total, 9.5)), **kw)
    # One block per group (loss above its cells), with room between blocks for the epoch
    # tick labels and the next group's title.
    outer = fig.add_gridspec(len(groups), 1, height_ratios=[loss_h + h * scale for h in grid_h],
                             hspace=0.45 if len(groups) > 1 else 0.0)
    fig.nas_columns = {}
    px = fig.nas_cell_pixels = _cell_pixels(sel)
    cells, panels = [], []
    for gi, group in enumerate(groups):
        runs = sel.groups[group]
        shown = cols[group]
        fig.nas_columns[group] = shown
        inner = outer[gi].subgridspec(2, 1, height_ratios=[loss_h, grid_h[gi] * scale],
                                      hspace=0.08)
        lax = fig.add_subplot(inner[0], label="loss")
        ax = fig.add_subplot(inner[1], sharex=lax, label="nas")
        cells.append(ax)
        panels.append((lax, ax))
        image = ax.imshow(np.ma.masked_invalid(compose(sel, runs, shown, px)), cmap=NAS_CMAP,
                  vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal", origin="upper",
                  extent=(0, max(len(shown), 1), len(layers), 0))
        ax.set_xlim(0, max(len(shown), 1))
        ax.set_ylim(len(layers), 0)
        ax.set_xticks(np.arange(len(shown)) + 0.5, [str(int(e)) for e in shown])
        step = max(1, int(np.ceil(len(layers) / 20)))
        ax.set_yticks(np.arange(0, len(layers), step) + 0.5, layers[::step])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        if gi == len(groups) - 1:
            ax.set_xlabel(sel.epoch_label)
        _draw_loss(lax, sel, group, shown)
        lax.set_title(group, loc="left")
    right = 1 - 0.62 / width_in  # room for the colour bar
    height = fig.get_size_inches()[1]  # margins in inches: the title and the axis label fit
    fig.subplots_adjust(left=left_in / width_in + 0.02, right=right, top=1 - 0.3 / height,
                        bottom=0.5 / height)
    for lax, ax in panels:  # square cells: the box shrinks to the map; its loss panel follows
        ax.apply_aspect()
        box, lbox = ax.get_position(), lax.get_position()
        lax.set_position((box.x0, lbox.y0, box.width, lbox.height))
    if cells:
        lo = min(a.get_position().y0 for a in cells)
        hi = max(a.get_position().y1 for a in cells)
        # beside the cells, wherever square cells left them (a tall grid is narrower than the
        # figure: a bar at the figure's edge would float away from the maps it explains)
        x = min(max(a.get_position().x1 for a in cells), right) + 0.1 / width_in
        cax = fig.add_axes((x, lo, 0.09 / width_in, hi - lo), label="colorbar")
        fig.colorbar(image, cax=cax, label="NAS")
    return fig


def _draw_loss(lax, sel: Selection, group: str, shown) -> None:
    loss = sel.loss(group)
    lax.tick_params(axis="x", labelbottom=False, length=0)
    lax.set_ylabel("test loss", color=LOSS_COLOR)
    lax.tick_params(axis="y", colors=LOSS_COLOR)
    if loss is None or len(shown) == 0:
        lax.text(0.5, 0.5, "no test loss", transform=lax.transAxes, ha="center",
                 va="center", color="0.5")
        lax.set_yticks([])
        return
    ok = np.isfinite(loss)
    e = sel.epochs[ok]
    inside = (e >= shown[0]) & (e <= shown[-1])
    if len(shown) == 1:
        x = np.full(int(inside.sum()), 0.5)
    else:
        x = np.interp(e[inside], shown, np.arange(len(shown)) + 0.5)
    lax.plot(x, loss[ok][inside], color=LOSS_COLOR, marker="." if len(x) < 3 else None)
    onset = sel.loss_onset(group)
    if onset is not None and len(shown) > 1 and shown[0] <= onset <= shown[-1]:
        lax.axvline(float(np.interp(onset, shown, np.arange(len(shown)) + 0.5)),
                    color=LOSS_COLOR, linestyle="--", linewidth=0.8)
