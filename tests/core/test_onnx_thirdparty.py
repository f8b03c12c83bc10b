"""Real third-party ONNX files (tests/core/data/thirdparty, see SOURCES.md there) probed
through the command line, each layer's median and mean NAS checked against the tap tensor
exposed in the original file with onnx.helper and NAS in float64 numpy."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

import nasprobe
from nasprobe.cli import main
from nasprobe.graph import find_taps
from nasprobe.onnx_prepare import prepare_model
from nasprobe.onnx_source import load_onnx
from nasprobe.probe import run_info
from tests.core.test_onnx_prepare import nas64

DATA = Path(__file__).parent / "data" / "thirdparty"


def _photo_strips(n, h, w):
    """``n`` crops (N, 3, h, w) in [0, 1] of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    out = [photos[i % 2][40 * i : 40 * i + h, 60 * i : 60 * i + w] for i in range(n)]
    return (np.stack(out).astype(np.float32) / 255).transpose(0, 3, 1, 2).copy()


def _bytes_rows(n, width):
    """The first ``width`` bytes of ``n`` real files, padded with 256 (magika's padding)."""
    files = sorted(Path(np.__file__).parent.glob("*.py"))[:n]
    rows = [np.frombuffer(f.read_bytes()[:width], np.uint8).astype(np.float32) for f in files]
    return np.stack([np.pad(r, (0, width - r.size), constant_values=256) for r in rows])


CASES = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (lambda: _photo_strips(4, 48, 192), 11, 54),
    "magika_standard_v1.onnx": (lambda: _bytes_rows(4, 1536), 13, 4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_third_party_file_probed_through_the_cli_matches_float64(tmp_path, name):
    make_x, opset, n_layers = CASES[name]
    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / "epoch_000.onnx"
    ckpt.write_bytes((DATA / name).read_bytes())
    x = make_x()
    np.save(tmp_path / "p.npy", x)
    res = CliRunner().invoke(
        main,
        ["probe", str(run), "--probe", str(tmp_path / "p.npy"), "--out", str(tmp_path / "s.zarr")],
    )
    assert res.exit_code == 0, res.output
    ds = nasprobe.open_store(tmp_path / "s.zarr")
    taps = find_taps(prepare_model(load_onnx(ckpt), name).model)
    assert list(ds.layer.values) == [t.layer for t in taps] and len(taps) == n_layers
    original = onnx.load(str(DATA / name))
    order = {n.name: i for i, n in enumerate(original.graph.node)}
    assert [order[t.node] for t in taps] == sorted(order[t.node] for t in taps)  # graph order
    for t in taps:
        original.graph.output.append(helper.make_empty_tensor_value_info(t.tensor))
    sess = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    raw = sess.run([t.tensor for t in taps], {original.graph.input[0].name: x})
    for t, r in zip(taps, raw):
        s = nas64(r, t.channel_axis).ravel()
        got = ds.sel(layer=t.layer).isel(run=0, epoch=0)
        assert abs(float(got.nas_median) - np.median(s)) < 1e-4, t.layer
        assert abs(float(got.nas_mean) - s.mean()) < 1e-4, t.layer
    info = run_info(tmp_path / "s.zarr")["run"]
    assert info["opset"] == 13 and info.get("opset_original", 13) == opset
