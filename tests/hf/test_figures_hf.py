"""Figures of Trainer runs: "step" on the axis, square heatmap cells, a ViT on its patch grid."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main
from nasprobe.plots import draw
from nasprobe.plots.select import heatmap_maps, on_patch_grid, select


@pytest.fixture(scope="module")
def vit_store(hf_runs, tmp_path_factory):
    root, runs, _ = hf_runs
    out = tmp_path_factory.mktemp("fig") / "vit.zarr"
    res = CliRunner().invoke(main, ["probe", str(runs["vit"][0]), "--probe",
                                    str(root / "images.npz"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_on_patch_grid_keeps_the_class_token_apart():
    tokens = np.arange(1 + 2 * 3, dtype=float)  # CLS, then patches row by row
    img = on_patch_grid(tokens, (2, 3))
    assert img.shape == (3, 4) and img[0, 0] == 0
    np.testing.assert_array_equal(img[1:, 1:], [[1, 2, 3], [4, 5, 6]])
    assert np.isnan(img[0, 1:]).all() and np.isnan(img[1:, 0]).all()


def test_vit_heatmaps_on_the_patch_grid_with_square_cells(vit_store):
    tree = nasprobe.open_store(vit_store)
    sel = select(tree)
    layer = "vit.layers.1.mlp.fc1"
    (m,) = heatmap_maps(sel, layer, sel.groups[next(iter(sel.groups))], [10])
    tokens = tree[f"heatmaps/{layer}"]["nas_map"].sel(epoch=10).values[0]  # (17,)
    assert tokens.shape == (17,)
    np.testing.assert_allclose(m[1:, 1:], tokens[1:].reshape(4, 4))
    assert m[0, 0] == pytest.approx(tokens[0])
    fig = draw(tree, "heatmaps", width="double", dpi=50)
    (ax,) = [a for a in fig.axes if a.get_label() == "nas"]
    assert ax.get_aspect() == 1.0 and ax.get_xlabel() == "step"
    assert [a for a in fig.axes if a.get_label() == "colorbar"]
    box = ax.get_position()  # one cell per (layer, step): square on the page
    w, h = fig.get_size_inches()
    cell_w = box.width * w / len(fig.nas_columns[next(iter(fig.nas_columns))])
    cell_h = box.height * h / len(sel.layers)
    assert cell_w == pytest.approx(cell_h, rel=0.02)
    for kind in ("line", "stripes"):
        fig = draw(tree, kind, width="single", dpi=50)
        assert fig.axes[-1].get_xlabel() == "step" or any(
            a.get_xlabel() == "step" for a in fig.axes)


def test_report_says_steps(vit_store, tmp_path):
    res = CliRunner().invoke(main, ["report", str(vit_store), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "r.html").read_text()
    assert "steps probed" in html and "2 step(s)" in html
