"""Figures: pixels, colours, structure, deterministic files, every kind in every shape."""

import functools
import io

import matplotlib
import numpy as np
import pytest
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from nasprobe.plots import KINDS, draw, save
from tests.core.figures_data import make_tree

VIRIDIS = matplotlib.colormaps["viridis"]
RED = to_rgb("#d62728")


def _pixels(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


def _pixel_at(fig, img, ax, x, y) -> np.ndarray:
    """RGB (0-255) of the pixel under data point (x, y) of ax."""
    px, py = ax.transData.transform((x, y))
    return img[int(img.shape[0] - py), int(px)]


def _axes(fig, label):
    return [ax for ax in fig.axes if ax.get_label() == label]


def test_heatmap_cells_are_viridis_of_the_map_values():
    tree = make_tree(n_runs=2, n_layers=7, n_epochs=6)  # conv (y, x), conv1d (t), dense
    fig = draw(tree, "heatmaps", width="double", dpi=100)
    img = _pixels(fig)
    (ax,) = _axes(fig, "nas")
    shown = fig.nas_columns[next(iter(fig.nas_columns))]
    assert list(shown) == list(tree["epoch"].values)  # 6 epochs <= 12 columns: all shown
    layers = [str(v) for v in tree["layer"].values]
    g = 1.0 / fig.nas_cell_pixels
    checked = 0
    for j, epoch in enumerate(shown):
        for i, layer in enumerate(layers):
            m = tree[f"heatmaps/{layer}"]["nas_map"].sel(epoch=epoch).values.mean(axis=0)
            m = np.atleast_2d(m)  # (y, x); (1, t); (1, 1)
            h, w = m.shape
            for yy, xx in [(0, 0), (h - 1, w - 1), (h // 2, w // 2)]:
                # element centre; the cell spans [j, j + 1 - g] x [i, i + 1 - g]
                got = _pixel_at(fig, img, ax, j + (xx + 0.5) / w * (1 - g),
                                i + (yy + 0.5) / h * (1 - g))
                want = np.round(np.array(VIRIDIS(m[yy, xx])[:3]) * 255)
                assert np.abs(got - want).max() <= 2, (layer, epoch, yy, xx, got, want)
                checked += 1
    assert checked == 6 * 7 * 3
    (lax,) = _axes(fig, "loss")
    assert [to_rgb(line.get_color()) for line in lax.lines][0] == RED


def test_heatmap_colour_bar_spans_nas_0_to_1_beside_the_cells():
    tree = make_tree(n_runs=2, n_layers=3, n_epochs=4, loss=True)
    fig = draw(tree, "heatmaps", width="single", dpi=60)
    (cax,) = _axes(fig, "colorbar")
    assert cax.get_ylabel() == "NAS"
    assert cax.get_ylim() == pytest.approx((0.0, 1.0))
    cells = _axes(fig, "nas")
    assert cax.get_position().x0 > max(a.get_position().x1 for a in cells)
    assert cax.get_position().x1 <= 1.0


def test_heatmap_columns_are_subsampled_evenly_with_first_and_last():
    tree = make_tree(n_layers=2, n_epochs=31)
    fig = draw(tree, "heatmaps", width="double", dpi=30)
    shown = next(iter(fig.nas_columns.values()))
    epochs = tree["epoch"].values
    assert len(shown) == 12 and shown[0] == epochs[0] and shown[-1] == epochs[-1]
    assert np.all(np.diff(shown) >= 2) and np.ptp(np.diff(shown)) <= 1
    fig = draw(tree, "heatmaps", width="single", dpi=30)
    assert len(next(iter(fig.nas_columns.values()))) == 7


def test_line_plot_colours_follow_depth_and_loss_axis_is_red():
    tree = make_tree(n_runs=3, n_layers=6, n_epochs=20)
    fig = draw(tree, "line", width="single", dpi=50)
    (ax,) = _axes(fig, "nas")
    lines = [ln for ln in ax.lines if ln.get_label() in set(tree["layer"].values)]
    assert [ln.get_label() for ln in lines] == [str(v) for v in tree["layer"].values]
    rgb = np.array([to_rgb(ln.get_color()) for ln in lines])
    lightness = rgb @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(lightness) > 0)  # dark (shallow) -> light (deep)
    assert np.all(rgb[:, 2] > rgb[:, 0])  # blue to teal
    # the line is the median over runs, the band spans min..max over runs
    med = np.median(tree["nas_median"].values[:, :, 2], axis=0)
    assert np.allclose(lines[2].get_ydata(), med)
    assert len(ax.collections) == 6
    (lax,) = _axes(fig, "loss")
    assert to_rgb(lax.lines[0].get_color()) == RED
    assert to_rgb(lax.yaxis.label.get_color()) == RED
    assert np.allclose(lax.lines[0].get_ydata(), np.median(tree["loss"].values, axis=0))
    onset = [ln for ln in ax.lines if to_rgb(ln.get_color()) == RED]
    assert len(onset) == 1 and onset[0].get_linestyle() == "--"
    assert abs(onset[0].get_xdata()[0] - tree.attrs["loss_onset_true"]) <= 1


def test_line_plot_single_run_has_no_band_and_no_loss_axis_without_loss():
    fig = draw(make_tree(n_runs=1, n_layers=3, loss=False), "line", dpi=30)
    (ax,) = _axes(fig, "nas")
    assert len(ax.collections) == 0
    assert _axes(fig, "loss") == []
    assert not [ln for ln in ax.lines if to_rgb(ln.get_color()) == RED]


def test_line_plot_layers_stay_apart_in_greyscale():
    """Six layers drawn flat at known heights: rendered and converted to greyscale, each line's
    ink gets lighter with depth by a visible step, and no two layers share a dash pattern."""
    n_layers, n_epochs = 6, 30
    tree = make_tree(n_runs=1, n_layers=n_layers, n_epochs=n_epochs, loss=False)
    levels = 0.12 + 0.14 * np.arange(n_layers)
    tree["nas_median"] = tree["nas_median"] * 0 + levels
    fig = draw(tree, "line", width="double", dpi=150, legend=False)
    rgb = _pixels(fig).astype(float)
    grey = rgb @ [0.299, 0.587, 0.114]  # ITU-R 601 luminance, as a greyscale print
    (ax,) = _axes(fig, "nas")
    epochs = tree["epoch"].values
    inks, patterns = [], []
    for level in levels:
        x0, y = ax.transData.transform((epochs[2], level))
        x1, _ = ax.transData.transform((epochs[-3], level))
        row = int(round(grey.shape[0] - y))
        band = grey[row - 2: row + 3, int(x0): int(x1)]
        column_ink = band.min(axis=0)  # darkest pixel of each column across the line
        on = column_ink < 235
        inks.append(np.median(column_ink[on]))
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, on.astype(int), 0])))[::2]  # ink runs
        patterns.append((round(on.mean(), 1), int(np.median(runs))))
    assert np.all(np.diff(inks) >= 15), inks  # shallow dark → deep light, a visible step
    assert inks[-1] < 200  # the deepest line still shows on white paper
    assert len(set(patterns)) == n_layers, patterns  # six different dash patterns
    assert patterns[-1][0] == 1.0  # the deepest layer is solid


def test_stripes_sixty_layers_give_sixty_distinct_rows():
    tree = make_tree(n_layers=60, n_epochs=8, noise=0.0, loss=False)  # no red line over it
    values = np.linspace(0.0, 1.0, 60)
    med = tree["nas_median"].copy()
    med.loc[dict(epoch=2)] = values[None, :]
    tree["nas_median"] = med
    fig = draw(tree, "stripes", width="double", dpi=100)
    img = _pixels(fig)
    (ax,) = _axes(fig, "nas")
    rows = np.array([_pixel_at(fig, img, ax, 2.0, i + 0.5) for i in range(60)])
    want = np.round(VIRIDIS(values)[:, :3] * 255)
    assert np.abs(rows - want).max() <= 2
    assert len({tuple(r) for r in rows}) == 60
    fig = draw(make_tree(n_layers=60, n_epochs=8), "stripes", dpi=30)
    (lax,) = _axes(fig, "loss")
    assert to_rgb(lax.lines[0].get_color()) == RED


@pytest.mark.parametrize("suffix", [".svg", ".pdf"])
def test_identical_input_gives_identical_bytes(tmp_path, suffix):
    tree = make_tree(n_runs=2, n_layers=3, n_epochs=6)
    a = save(draw(tree, "line", width="single"), tmp_path / f"a{suffix}").read_bytes()
    b = save(draw(tree, "line", width="single"), tmp_path / f"b{suffix}").read_bytes()
    assert a == b
    if suffix == ".pdf":
        assert b"CreationDate" not in a and b"/FontFile2" in a  # TrueType embedded
    else:
        assert b"<text" not in a  # glyphs as paths


def test_save_format_from_suffix(tmp_path):
    fig = draw(make_tree(), "stripes", width="single")
    assert save(fig, tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save(fig, tmp_path / "f.PDF").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="unknown figure format"):
        save(fig, tmp_path / "f.jpg")


def test_unknown_kind_layer_and_run_are_errors():
    tree = make_tree()
    with pytest.raises(ValueError, match="unknown figure kind"):
        draw(tree, "pie")
    with pytest.raises(ValueError, match="no layer matches"):
        draw(tree, "line", layers="^nothing$")
    with pytest.raises(ValueError, match="unknown runs"):
        draw(tree, "line", runs="nobody")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_single_epoch_and_slashed_layer_names_render(kind):
    tree = make_tree(n_runs=2, n_layers=3, n_epochs=1)
    fig = draw(tree, kind, dpi=20)
    fig.savefig(io.BytesIO(), format="png", dpi=20)
    if kind == "heatmaps":  # ONNX node names: group "heatmaps/_conv_0" holds layer "/conv/0"
        ds = tree.to_dataset().assign_coords(layer=["/conv/0", "conv1", "fc2"])
        kids = {"/": ds, "heatmaps/_conv_0": tree["heatmaps/conv0"].to_dataset(inherit=False)}
        fig = draw(xr.DataTree.from_dict(kids), kind, layers=["/conv/0"], dpi=20)
        img = _axes(fig, "nas")[0].images[0].get_array()
        want = tree["heatmaps/conv0"]["nas_map"].mean("run").values[0]
        px = fig.nas_cell_pixels
        assert np.allclose(np.unique(img[: px - 1, : px - 1]), np.unique(want))


@functools.cache
def _shared_tree(n_runs, n_layers, loss):
    """Built once per shape (drawing never modifies a tree); epoch 4 not probed."""
    return make_tree(n_runs=n_runs, n_layers=n_layers, loss=loss, n_epochs=10, missing_epoch=4)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("n_runs", [1, 3])
@pytest.mark.parametrize("n_layers", [2, 60])
@pytest.mark.parametrize("loss", [True, False])
def test_every_kind_renders(kind, n_runs, n_layers, loss):
    tree = _shared_tree(n_runs, n_layers, loss)
    width = "single" if n_layers == 2 else "double"
    fig = draw(tree, kind, width=width, dpi=20)
    assert fig.get_size_inches()[0] == pytest.approx({"single": 3.5, "double": 7.16}[width])
    assert 1.0 <= fig.get_size_inches()[1] <= 9.5
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=20)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    loss_lines = [ln for ax in _axes(fig, "loss") for ln in ax.lines]
    if kind in ("line", "stripes", "heatmaps"):
        assert bool(loss_lines) == loss


def _near(img, x, y, color, r=3):
    """Smallest RGB distance (0-255) to ``color`` in a (2r+1)² window around pixel (x, y)."""
    win = img[int(img.shape[0] - y) - r: int(img.shape[0] - y) + r + 1, int(x) - r: int(x) + r + 1]
    return np.abs(win - np.round(np.asarray(color) * 255)).max(axis=-1).min()


def test_dead_lines_are_depth_coloured_per_layer_with_a_band_over_seeds():
    """Flat dead fractions at known heights: each layer's line sits at its height in its depth
    colour; three seeds in one group give the median line and a min-max band; the logits
    layer (no nonlinearity, NaN) is not drawn; the label says dead ReLU units."""
    from nasprobe.plots.style import depth_colors

    tree = make_tree(n_runs=3, n_layers=5, n_epochs=10, loss=False)
    levels = np.array([0.1, 0.3, 0.5, 0.7, np.nan])
    spread = np.array([-0.05, 0.0, 0.05])[:, None, None]  # seeds: min, median, max
    tree["dead_fraction"] = tree["dead_fraction"] * 0 + levels + spread
    fig = draw(tree, "dead", width="double", dpi=200, groups={"cfg": list(tree["run"].values)})
    (ax,) = _axes(fig, "dead")
    assert [ln.get_label() for ln in ax.lines] == ["conv0", "conv1", "conv2", "conv3"]
    assert len(ax.collections) == 4  # one band per drawn layer
    assert "dead units (Relu)" in fig._supylabel.get_text()
    img = _pixels(fig)
    colors = depth_colors(5)
    epochs = tree["epoch"].values
    for i, level in enumerate(levels[:4]):
        hits = [_near(img, *ax.transData.transform((e, level)), colors[i]) for e in epochs[1:-1]]
        assert min(hits) <= 3, (i, hits)  # the line's colour at its height (dashes: somewhere)
        x, y = ax.transData.transform((epochs[4], level + 0.03))  # inside the band, off the line
        band = img[int(img.shape[0] - y), int(x)]
        want = 0.25 * np.round(colors[i] * 255) + 0.75 * 255  # alpha 0.25 over white
        assert np.abs(band - want).max() <= 3, (i, band, want)


def test_dead_panels_per_run_and_label_for_other_nonlinearities():
    tree = make_tree(n_runs=3, n_layers=3, n_epochs=6)
    fig = draw(tree, "dead", width="double", dpi=30)
    assert [ax.get_title(loc="left") for ax in _axes(fig, "dead")] == ["run-s0", "run-s1", "run-s2"]
    ds = tree.to_dataset().assign_coords(nonlinearity=("layer", ["Gelu", "Relu", ""]))
    fig = draw(ds, "dead", dpi=30)
    assert fig._supylabel.get_text() == "share of units never > 0 (Gelu, Relu)"
    with pytest.raises(ValueError, match="no 'dead_fraction'"):
        draw(ds.drop_vars("dead_fraction"), "dead")


def test_hist_overlay_draws_each_run_in_its_own_colour_and_dash():
    """Run s0's values all in bin 30, s1's in bin 70 at the last epoch: each run's step curve
    peaks at its bin in its Okabe-Ito colour, at height 1 (a fraction)."""
    from nasprobe.plots.hist import OKABE_ITO

    tree = make_tree(n_runs=2, n_layers=2, n_epochs=5, loss=False)
    hist = np.zeros(tree["nas_hist"].shape)
    hist[0, :, :, 30] = 50
    hist[1, :, :, 70] = 20
    tree["nas_hist"] = tree["nas_hist"] * 0 + hist
    fig = draw(tree, "hist", width="single", dpi=240)
    axes = _axes(fig, "hist")
    assert len(axes) == 2
    ax = axes[0]
    curves = {fig.hist_curves[ln]: ln for ln in ax.lines}
    assert set(curves) == {("run-s0", 3), ("run-s1", 3)}
    assert curves["run-s0", 3].get_linestyle() != curves["run-s1", 3].get_linestyle()
    img = _pixels(fig)
    for run, b in (("run-s0", 30), ("run-s1", 70)):
        color = to_rgb(OKABE_ITO[0 if run == "run-s0" else 1])
        assert to_rgb(curves[run, 3].get_color()) == color
        x, y = ax.transData.transform((b * 0.01 + 0.005, 1.0))
        assert _near(img, x, y, color, r=3) <= 3, run
    fig = draw(tree, "hist", dpi=30, epochs=[0, 3])
    assert set(fig.hist_curves.values()) == {(r, e) for r in ("run-s0", "run-s1") for e in (0, 3)}


def test_hist_ridgeline_fills_each_epoch_in_viridis_by_time():
    """One run: epoch k's values all in bin 10 + 15 k, so no two fills overlap; each fill is
    viridis of its rank in time (alpha 0.85 over white), stacked upwards."""
    tree = make_tree(n_runs=1, n_layers=1, n_epochs=6, loss=False)
    hist = np.zeros(tree["nas_hist"].shape)
    for k in range(6):
        hist[0, k, :, 10 + 15 * k] = 7
    tree["nas_hist"] = tree["nas_hist"] * 0 + hist
    fig = draw(tree, "hist", width="single", dpi=120)
    (ax,) = _axes(fig, "hist")
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(e) for e in tree["epoch"].values]
    img = _pixels(fig)
    for k in range(6):
        x, y = ax.transData.transform(((10 + 15 * k) * 0.01 + 0.005, k * 0.6 + 0.5))
        got = img[int(img.shape[0] - y), int(x)]
        want = 0.85 * np.round(np.array(VIRIDIS(k / 5)[:3]) * 255) + 0.15 * 255
        assert np.abs(got - want).max() <= 3, (k, got, want)
