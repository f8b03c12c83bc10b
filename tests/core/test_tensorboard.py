"""Store → TensorBoard: scalars and heatmap images read back with EventAccumulator equal the
store's values."""

from __future__ import annotations

import io

import numpy as np
import pytest
import xarray as xr
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea

from nasprobe.report.event_writer import LogdirError, heatmap_rgba
from nasprobe.report.tensorboard import run_folder, write_tensorboard

LAYERS = {"features.0": (4, 5), "rnn/seq": (6,), "fc": ()}  # layer → spatial shape


def synthetic_tree(n_epochs: int = 12, seed: int = 0) -> xr.DataTree:
    """A small store-shaped DataTree: runs "a" and "b/x" (b lacks its last two epochs),
    epochs -1..n_epochs-2, the layers of LAYERS, NAS rising late, loss with a clear minimum."""
    rng = np.random.default_rng(seed)
    runs, epochs, layers = ["a", "b/x"], np.arange(-1, n_epochs - 1), list(LAYERS)
    shape = (len(runs), len(epochs), len(layers))
    t = np.arange(n_epochs, dtype=float)
    rise = np.clip((t - n_epochs / 2) / n_epochs, 0, None)[None, :, None]
    median = np.clip(0.2 + rise * np.linspace(0.5, 1.0, len(layers)) + rng.normal(0, 0.01, shape), 0, 1)
    mean = np.clip(median + rng.normal(0, 0.01, shape), 0, 1)
    loss = 1.0 + 0.02 * (t - n_epochs * 0.7) ** 2 + rng.normal(0, 0.005, (len(runs), n_epochs))
    hist = rng.integers(0, 50, shape + (100,))
    ds = xr.Dataset(
        {"nas_median": (("run", "epoch", "layer"), median),
         "nas_mean": (("run", "epoch", "layer"), mean),
         "nas_min": (("run", "epoch", "layer"), median * 0.5),
         "nas_max": (("run", "epoch", "layer"), np.minimum(median * 1.5, 1)),
         "entropy_mean": (("run", "epoch", "layer"), np.log(8 * (1 - median))),
         "nas_quantile": (("run", "epoch", "layer", "quantile"),
                          np.sort(rng.uniform(0, 1, shape + (5,)), axis=-1)),
         "nas_hist": (("run", "epoch", "layer", "nas_bin"), hist),
         "corr_hist": (("run", "epoch", "layer", "corr_bin"), rng.integers(0, 30, shape + (200,))),
         "loss": (("run", "epoch"), loss),
         "accuracy": (("run", "epoch"), 1 / loss),
         "train_loss": (("run", "epoch"), loss * 0.5)},
        coords={"run": runs, "epoch": epochs, "layer": layers,
                "layer_kind": ("layer", ["Conv", "MatMul", "Gemm"]),
                "channels": ("layer", [8, 16, 10]),
                "locations": ("layer", [int(np.prod(s)) for s in LAYERS.values()]),
                "depth": ("layer", [0, 1, 2]),
                "quantile": [0.05, 0.25, 0.5, 0.75, 0.95],
                "nas_bin": np.arange(100) / 100 + 0.005, "corr_bin": np.arange(200) / 100 - 0.995},
        attrs={"nasprobe_version": "0.1.0", "tap": "linear", "probe_sha256": "ab" * 32,
               "probe_size": 16, "framework": "onnx",
               "sources": '{"a": "ckpt/a", "b/x": "ckpt/b <&>"}'},
    )
    nodes = {"/": ds}
    for layer, spatial in LAYERS.items():
        dims = {0: (), 1: ("t",), 2: ("y", "x")}[len(spatial)]
        maps = rng.uniform(0, 1, (len(runs), len(epochs), *spatial))
        if spatial:
            maps[(0, 0) + (0,) * len(spatial)] = np.nan  # one missing location
        images = rng.uniform(0, 1, (len(runs), len(epochs), 2, *spatial))
        group = xr.Dataset({"nas_map": (("run", "epoch", *dims), maps),
                            "nas_image_map": (("run", "epoch", "image", *dims), images)},
                           attrs={"layer": layer})
        nodes[f"heatmaps/{layer.replace('/', '_')}"] = group
    for name in [n for n, v in ds.data_vars.items() if v.dtype.kind == "f"]:
        ds[name][{"run": 1, "epoch": slice(-2, None)}] = np.nan
    for key in nodes:
        if key != "/":
            nodes[key]["nas_map"][{"run": 1, "epoch": slice(-2, None)}] = np.nan
    # (run "b/x" lacks its last two epochs: NaN above, in every float variable)
    return xr.DataTree.from_dict(nodes)


def _read(folder) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    acc.Reload()
    return acc


def test_scalars_and_heatmaps_round_trip(tmp_path):
    tree = synthetic_tree()
    ds = tree.to_dataset()
    folders = write_tensorboard(tree, tmp_path / "tb")
    assert {r: f.name for r, f in folders.items()} == {"a": "a", "b/x": "b_x"}
    for run, folder in folders.items():
        acc = _read(folder)
        tags = acc.Tags()
        expected_scalars = {f"{v}/{layer}" for v in ("nas_median", "nas_mean") for layer in LAYERS}
        expected_scalars |= {"loss", "accuracy", "train_loss"}
        assert set(tags["scalars"]) == expected_scalars
        for var in ("nas_median", "nas_mean"):
            for layer in LAYERS:
                truth = ds[var].sel(run=run, layer=layer)
                truth = truth[np.isfinite(truth)]
                got = acc.Scalars(f"{var}/{layer}")
                assert [e.step for e in got] == truth["epoch"].values.tolist()
                np.testing.assert_allclose([e.value for e in got], truth.values, rtol=1e-6)
        loss = ds["loss"].sel(run=run).dropna("epoch")
        assert [e.step for e in acc.Scalars("loss")] == loss["epoch"].values.tolist()
        np.testing.assert_allclose([e.value for e in acc.Scalars("loss")], loss.values, rtol=1e-6)
        assert set(tags["images"]) == {f"nas_heatmap/{layer}" for layer in LAYERS}
        for layer, spatial in LAYERS.items():
            node = tree["heatmaps"][layer.replace("/", "_")]
            events = acc.Images(f"nas_heatmap/{layer}")
            assert [e.step for e in events] == loss["epoch"].values.tolist()
            for event in events:
                truth = node["nas_map"].sel(run=run, epoch=event.step).values
                rgba = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
                rows, cols = (1,) * (2 - len(spatial)) + spatial
                k = max(1, 128 // max(rows, cols))
                assert rgba.shape == (rows * k, cols * k, 4) == (event.height, event.width, 4)
                import matplotlib
                viridis = matplotlib.colormaps["viridis"]
                for index in np.ndindex(*truth.shape):
                    pixel = rgba[(index[-2] if len(index) == 2 else 0) * k,
                                 index[-1] * k if index else 0]
                    if np.isnan(truth[index]):
                        assert pixel[3] == 0
                    else:
                        np.testing.assert_array_equal(pixel, viridis(truth[index], bytes=True))


def test_heatmap_colours_fixed_range():
    rgba = heatmap_rgba(np.array([[0.0, 1.0, 2.0, -1.0, np.nan]]))
    k = 128 // 5
    assert rgba.shape == (k, 5 * k, 4) and rgba.dtype == np.uint8
    import matplotlib
    viridis = matplotlib.colormaps["viridis"]
    cols = rgba[0, ::k]
    np.testing.assert_array_equal(cols[0], viridis(0.0, bytes=True))
    np.testing.assert_array_equal(cols[1], viridis(1.0, bytes=True))
    np.testing.assert_array_equal(cols[2], cols[1])  # clipped to [0, 1]
    np.testing.assert_array_equal(cols[3], cols[0])
    assert cols[4][3] == 0


def test_existing_events_need_overwrite(tmp_path):
    tree = synthetic_tree(n_epochs=4)
    write_tensorboard(tree, tmp_path)
    with pytest.raises(LogdirError, match="--overwrite"):
        write_tensorboard(tree, tmp_path)
    write_tensorboard(tree, tmp_path, overwrite=True, runs=["a"])
    assert len(list((tmp_path / "a").glob("events.out.tfevents*"))) == 1
    assert run_folder("..") == "run_unnamed" and run_folder("x\\y") == "x_y"


def test_cli_tensorboard_from_store_on_disk(tmp_path):
    from click.testing import CliRunner

    import nasprobe.cli.report  # noqa: F401  (registers the command)
    from nasprobe.cli import main
    from nasprobe.store.reader import open_store

    tree = synthetic_tree(n_epochs=5)
    root = tree.to_dataset(inherit=False)
    root["probed"] = xr.DataArray(np.ones((2, 5), np.int8), dims=("run", "epoch"))
    nodes = {"/": root, **{n.path: n.to_dataset(inherit=False) for n in tree.subtree
                           if n is not tree}}
    xr.DataTree.from_dict(nodes).to_zarr(tmp_path / "store.zarr")
    result = CliRunner().invoke(main, ["tensorboard", str(tmp_path / "store.zarr"),
                                       str(tmp_path / "tb"), "--run", "b/x"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["b_x"]
    stored = open_store(tmp_path / "store.zarr")["nas_median"].sel(run="b/x", layer="fc").dropna("epoch")
    got = _read(tmp_path / "tb" / "b_x").Scalars("nas_median/fc")
    assert [e.step for e in got] == stored["epoch"].values.tolist()
    np.testing.assert_allclose([e.value for e in got], stored.values, rtol=1e-6)
    result = CliRunner().invoke(main, ["tensorboard", str(tmp_path / "store.zarr"),
                                       str(tmp_path / "tb"), "--run", "nope"])
    assert result.exit_code == 2 and "no run 'nope'" in result.output


def test_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(LogdirError, match=r"nasprobe\[tensorboard\]"):
        write_tensorboard(synthetic_tree(n_epochs=3), tmp_path)
    from nasprobe.store.training_logs import TrainingLogError, read_training_log

    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")
    with pytest.raises(TrainingLogError, match=r"nasprobe\[tensorboard\]"):
        read_training_log(tmp_path / "events.out.tfevents.1.host")


def _store_on_disk(tree: xr.DataTree, path) -> None:
    root = tree.to_dataset(inherit=False)
    root["probed"] = xr.DataArray(np.ones((root.sizes["run"], root.sizes["epoch"]), np.int8),
                                  dims=("run", "epoch"))
    nodes = {"/": root, **{n.path: n.to_dataset(inherit=False) for n in tree.subtree
                           if n is not tree}}
    xr.DataTree.from_dict(nodes).to_zarr(path)


def test_overwrite_keeps_training_logs_and_3d_maps_are_drawn(tmp_path):
    """--overwrite replaces only nasprobe's own event files (a training log beside them is
    byte for byte kept); a Conv3d layer's (z, y, x) map is drawn as its slices side by side."""
    import hashlib

    from click.testing import CliRunner
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    from nasprobe.cli import main

    tree = synthetic_tree(n_epochs=3)
    rng = np.random.default_rng(3)
    maps = rng.uniform(0, 1, (2, 3, 2, 3, 4))  # run, epoch, z, y, x
    tree["heatmaps/conv3d"] = xr.DataTree(xr.Dataset(
        {"nas_map": (("run", "epoch", "z", "y", "x"), maps)}, attrs={"layer": "conv3d"}))
    _store_on_disk(tree, tmp_path / "store.zarr")
    training = tmp_path / "tb" / "a"
    training.mkdir(parents=True)
    writer = EventFileWriter(str(training))  # the training's own log, e.g. Keras' callback
    writer.close()
    (log,) = training.glob("events.out.tfevents*")
    digest = hashlib.sha256(log.read_bytes()).hexdigest()
    args = ["tensorboard", str(tmp_path / "store.zarr"), str(tmp_path / "tb"), "--run", "a"]
    assert CliRunner().invoke(main, args).exit_code == 0
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 2 and "--overwrite" in second.stderr
    result = CliRunner().invoke(main, args + ["--overwrite"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert log.exists() and hashlib.sha256(log.read_bytes()).hexdigest() == digest
    ours = [p for p in training.glob("events.out.tfevents*") if p != log]
    assert len(ours) == 1 and ours[0].name.endswith(".nasprobe")
    acc = ea.EventAccumulator(str(ours[0]), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    (first, *_) = acc.Images("nas_heatmap/conv3d")
    image = np.asarray(Image.open(io.BytesIO(first.encoded_image_string)))
    k = 128 // 8  # (3, 2 * 4) → longest side 8
    assert image.shape == (3 * k, 8 * k, 4)
    expected = heatmap_rgba(np.concatenate([maps[0, 0, 0], maps[0, 0, 1]], axis=1))
    np.testing.assert_array_equal(image, expected)


def test_tensorboard_of_a_store_written_by_a_probe_job(conv_run, labelled_probe, tmp_path):
    """The current layout (one group per run and job, combined on read), not only a 0.1 view:
    every layer's median NAS and the probe loss reach TensorBoard at their epochs."""
    from click.testing import CliRunner

    import nasprobe
    import nasprobe.cli.report  # noqa: F401  (registers the command)
    from nasprobe.cli import main

    folder, _, _ = conv_run
    store = tmp_path / "nas.zarr"
    nasprobe.probe([folder], probe=labelled_probe, out=store, progress=False)
    result = CliRunner().invoke(main, ["tensorboard", str(store), str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    ds = nasprobe.open_store(store).to_dataset()
    acc = _read(tmp_path / "tb" / "vanilla")
    for layer in ds.layer.values:
        got = acc.Scalars(f"nas_median/{layer}")
        truth = ds["nas_median"].sel(run="vanilla", layer=layer)
        assert [e.step for e in got] == [-1, 1, 2] == ds.epoch.values.tolist()
        np.testing.assert_allclose([e.value for e in got], truth.values, rtol=1e-6)
    np.testing.assert_allclose([e.value for e in acc.Scalars("loss")],
                               ds["loss"].sel(run="vanilla").values, rtol=1e-6)
    assert set(acc.Tags()["images"]) == {f"nas_heatmap/{layer}" for layer in ds.layer.values}
