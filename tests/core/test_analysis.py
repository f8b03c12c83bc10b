"""The ``.nas`` accessor, run grouping and selection, and the ``nasprobe plot`` command."""

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from matplotlib.figure import Figure

import nasprobe.accessor  # noqa: F401  (registers the accessor)
from nasprobe.measures import onsets as onsets_mod
from tests.core.figures_data import make_dataset, make_tree

METHODS = ["lineplot", "stripes", "heatmaps", "corr_hist", "entropy", "dead", "hist"]


def _axes(fig, label):
    return [ax for ax in fig.axes if ax.get_label() == label]


@pytest.mark.parametrize("method", METHODS)
def test_accessor_methods_return_figures_on_tree_and_dataset(method):
    for obj in (make_tree(n_runs=2, n_layers=3), make_dataset(n_runs=2, n_layers=3)):
        fig = getattr(obj.nas, method)(dpi=20, width="single")
        assert isinstance(fig, Figure)
        assert fig.get_size_inches()[0] == pytest.approx(3.5)


def test_layer_and_run_selection():
    tree = make_tree(n_runs=3, n_layers=8)
    fig = tree.nas.lineplot(layers=r"^conv[0-3]$", runs="run-s0,run-s2", dpi=20)
    (ax,) = _axes(fig, "nas")
    labels = [ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")]
    assert labels == ["conv0", "conv1", "conv2", "conv3"]
    med = np.median(tree["nas_median"].sel(run=["run-s0", "run-s2"], layer="conv1").values,
                    axis=0)
    assert np.allclose(ax.lines[1].get_ydata(), med)
    fig = tree.nas.lineplot(layers=["fc7", "conv0"], dpi=20)  # a list keeps graph order
    (ax,) = _axes(fig, "nas")
    assert [ln.get_label() for ln in ax.lines][:2] == ["conv0", "fc7"]


def test_groups_argument_gives_one_banded_panel_per_configuration():
    tree = make_tree(n_runs=4, n_layers=2)
    groups = {"vanilla": ["run-s0", "run-s1", "run-s2"], "single": ["run-s3"]}
    fig = tree.nas.lineplot(groups=groups, dpi=20)
    nas_axes = _axes(fig, "nas")
    assert [ax.get_title(loc="left") for ax in nas_axes] == ["vanilla", "single"]
    assert len(nas_axes[0].collections) == 2 and len(nas_axes[1].collections) == 0
    band = nas_axes[0].collections[0].get_paths()[0].vertices[:, 1]
    v = tree["nas_median"].sel(run=groups["vanilla"], layer="conv0").values
    assert np.isclose(band.max(), v.max()) and np.isclose(band.min(), v.min())


def test_config_coordinate_groups_runs():
    ds = make_dataset(n_runs=4, n_layers=2)
    ds = ds.assign_coords(config=("run", ["a", "a", "b", "b"]))
    fig = ds.nas.stripes(dpi=20)
    assert [ax.get_title(loc="left") for ax in _axes(fig, "nas")] == ["a", "b"]
    fig = ds.nas.entropy(dpi=20)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b"]


def test_dataset_heatmaps_fall_back_to_one_cell_of_nas_mean():
    ds = make_dataset(n_runs=2, n_layers=2, n_epochs=4)
    fig = ds.nas.heatmaps(dpi=20)
    (ax,) = _axes(fig, "nas")
    img = ax.images[0].get_array()
    px = fig.nas_cell_pixels
    want = ds["nas_mean"].mean("run").transpose("layer", "epoch").values
    got = np.asarray(img[::px, ::px])  # top-left pixel of each cell
    assert got.shape == want.shape and np.allclose(got, want)
    tree = make_tree(n_runs=2, n_layers=2, n_epochs=4)
    fig = tree.nas.heatmaps(dpi=20)
    tree_img = _axes(fig, "nas")[0].images[0].get_array()
    first = np.asarray(tree_img[: fig.nas_cell_pixels - 1, : fig.nas_cell_pixels - 1])
    conv0 = tree["heatmaps/conv0"]["nas_map"].isel(epoch=0).mean("run").values  # (4, 3)
    assert np.array_equal(np.unique(first), np.unique(conv0))  # the map, not one cell


def test_onsets_method_matches_onsets_function():
    tree = make_tree(n_runs=2, n_layers=4, n_epochs=24)
    got = tree.nas.onsets()
    xr.testing.assert_identical(got, onsets_mod.onsets(tree.to_dataset()))
    sub = tree.to_dataset().nas.onsets(layers="conv", runs=["run-s1"])
    assert list(sub["layer"].values) == ["conv0", "conv1", "conv2"]
    assert list(sub["run"].values) == ["run-s1"]


def test_plot_command_writes_figures(tmp_path):
    import nasprobe.cli.figures  # noqa: F401  (registers `plot` on the group)
    from nasprobe.cli import main

    store = tmp_path / "s.zarr"
    make_tree(n_runs=2, n_layers=3, missing_epoch=2).to_zarr(store)  # read by open_store
    runner = CliRunner()
    for kind, suffix in [("line", "pdf"), ("stripes", "svg"), ("heatmaps", "png")]:
        out = tmp_path / "figs" / f"{kind}.{suffix}"
        res = runner.invoke(main, ["plot", str(store), "--kind", kind, "--out", str(out),
                                   "--width", "single", "--runs", "run-s0",
                                   "--layers", "conv"])
        assert res.exit_code == 0, res.output
        assert out.stat().st_size > 1000
        again = runner.invoke(main, ["plot", str(store), "--kind", kind, "--out",
                                     str(out.with_name("again." + suffix)), "--width",
                                     "single", "--runs", "run-s0", "--layers", "conv"])
        assert again.exit_code == 0
        assert out.read_bytes() == out.with_name("again." + suffix).read_bytes()
    for kind, extra in [("dead", []), ("hist", ["--epochs", "0,3"]), ("hist", [])]:
        out = tmp_path / "figs" / f"{kind}{len(extra)}.png"
        res = runner.invoke(main, ["plot", str(store), "--kind", kind, "--out", str(out),
                                   *extra])
        assert res.exit_code == 0, res.output
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(main, ["plot", str(store), "--kind", "hist", "--epochs", "99",
                               "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "epochs [99] are not in the store" in res.output
    res = runner.invoke(main, ["plot", str(store), "--kind", "line", "--epochs", "3",
                               "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "only --kind hist" in res.output
    res = runner.invoke(main, ["plot", str(store), "--kind", "line", "--out",
                               str(tmp_path / "x.png"), "--layers", "^nope$"])
    assert res.exit_code == 2 and "no layer matches" in res.output
    res = runner.invoke(main, ["plot", str(store), "--kind", "line", "--out",
                               str(tmp_path / "x.jpg")])
    assert res.exit_code == 2
