"""Malformed options and small malformed files give exit 2 and a message naming what is wrong,
never a traceback (exit 1); an existing store is unchanged."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nasprobe.cli import main
from tests.hostile import assert_refused, make_store, probe, tree_digest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parse")
    store, probe_path = make_store(tmp)
    return tmp, store, probe_path


@pytest.mark.parametrize("args, named, fragment", [
    (["--input-shape", "a,b"], "--input-shape 'a,b'", "whole numbers"),
    (["--input-shape", "3,0,8"], "--input-shape '3,0,8'", "whole numbers"),
    (["--mean", "x,y,z"], "--mean 'x,y,z'", "numbers"),
    (["--layers", "conv("], "--layers 'conv('", "not a valid regular expression"),
    (["--epoch-regex", "epoch_("], "--epoch-regex 'epoch_('", "not a valid regular expression"),
    (["--epoch-regex", "(?P<epoch>[a-z]+)"], "gives the epoch 'epoch'", "not a whole number"),
])
def test_bad_options_exit_2(world, args, named, fragment):
    tmp, store, probe_path = world
    before = tree_digest(store)
    res = probe(tmp / "good", "--probe", probe_path, "--out", store, *args)
    assert_refused(res, named, fragment)
    assert tree_digest(store) == before


def test_export_bad_layers_regex(world):
    tmp, _, _ = world
    res = CliRunner().invoke(main, ["export", str(tmp / "good"), "--out", str(tmp / "x"),
                                    "--layers", "["])
    assert_refused(res, "--layers '['", "not a valid regular expression")


@pytest.mark.parametrize("epoch", ["nan", "inf", "-inf", "1.5"])
def test_training_log_epoch_must_be_whole(world, epoch):
    tmp, store, probe_path = world
    log = tmp / f"log_{epoch}.csv"
    log.write_text(f"epoch,val_loss\n{epoch},0.5\n")
    before = tree_digest(store)
    res = probe(tmp / "good", "--probe", probe_path, "--out", store, "--metrics", log)
    assert_refused(res, log, f"epoch {epoch!r} is not a whole number")
    assert tree_digest(store) == before
    js = tmp / f"log_{epoch}.json"
    js.write_text(f'[{{"epoch": {epoch if epoch != "nan" else "NaN"}, "val_loss": 0.5}}]'
                  .replace("inf", "Infinity"))
    res = probe(tmp / "good", "--probe", probe_path, "--out", store, "--metrics", js)
    assert_refused(res, js, "is not a whole number")


def _npz_with_cut_member(path, x, keep: int, extra: dict | None = None):
    """A valid zip (central directory intact, CRCs right) whose stored member ``x.npy`` holds
    only the first ``keep`` bytes of the .npy: the file was cut inside that member when it was
    written, then zipped whole. ``extra`` members follow it."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, x)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("x.npy", buf.getvalue()[:keep])
        for name, a in (extra or {}).items():
            b = io.BytesIO()
            np.lib.format.write_array(b, a)
            z.writestr(f"{name}.npy", b.getvalue())
    return path


@pytest.mark.parametrize("keep, fragment", [
    # Cut inside the .npy header: numpy's header parser raised tokenize.TokenError, which
    # nasprobe did not catch (exit 1, a traceback).
    (20, "cannot read the probe array"),
    (80, "cannot read the probe array"),
    (100, "cannot read the probe array"),
    # Cut inside the image data, more members after it: the images were memory-mapped over
    # the next member's bytes and probed without a word (exit 0, wrong numbers).
    (2000, "member x.npy is truncated"),
    (4500, "member x.npy is truncated"),
])
def test_npz_cut_inside_a_member(world, keep, fragment):
    tmp, store, probe_path = world
    x = np.load(probe_path)["x"]
    bad = _npz_with_cut_member(tmp / f"cut_{keep}.npz", x, keep,
                               {"y": np.zeros(len(x), np.int64),
                                "notes": np.zeros(4000, np.float32)})
    before = tree_digest(store)
    res = probe(tmp / "good", "--probe", bad, "--out", store)
    assert_refused(res, bad, fragment)
    assert tree_digest(store) == before


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_npz_cut_short(world, cut):
    """A download cut short loses the zip's central directory: refused as not a zip."""
    tmp, store, probe_path = world
    data = probe_path.read_bytes()
    bad = tmp / f"trunc_{cut}.npz"
    bad.write_bytes(data[: int(len(data) * cut)])
    before = tree_digest(store)
    res = probe(tmp / "good", "--probe", bad, "--out", store)
    assert_refused(res, bad, "cannot read the probe array")
    assert tree_digest(store) == before


def test_superscript_label_is_a_class_name(tmp_path):
    """``²`` passes str.isdigit() but is not a number: labels.csv labels are then class names."""
    from tests.hostile import write_onnx_run

    write_onnx_run(tmp_path / "run")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "labels.csv").write_text("file,label\n0.png,1\n1.png,²\n2.png,1\n")
    res = probe(tmp_path / "run", "--probe", folder, "--out", tmp_path / "s.zarr")
    assert res.exit_code == 0, (res.output, res.exception)
