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
from nasprobe.frameworks.onnx_adapter import load_onnx
from nasprobe.job.probe_job import run_info
from nasprobe.onnxgraph.prepare import prepare_model
from nasprobe.onnxgraph.taps import find_taps
from tests.core.test_onnx_prepare import nas64

DATA = Path(__file__).parent / "data" / "thirdparty"


def _photo_strips(n, h, w):
    """``n`` crops (N, 3, h, w) in [0, 1] of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    out = [photos[i % 2][40 * i : 40 * i + h, 60 * i : 60 * i + w] for i in range(n)]
    return (np.stack(out).astype(np.float32) / 255).transpose(0, 3, 1, 2).copy()


def _photo_crops_nhwc(n, h, w):
    """``n`` crops (N, h, w, 3) in [0, 1] of scikit-learn's sample photos, channels last as
    Keras models take them."""
    return _photo_strips(n, h, w).transpose(0, 2, 3, 1).copy()


def _bytes_rows(n, width):
    """The first ``width`` bytes of ``n`` real files, padded with 256 (magika's padding)."""
    files = sorted(Path(np.__file__).parent.glob("*.py"))[:n]
    rows = [np.frombuffer(f.read_bytes()[:width], np.uint8).astype(np.float32) for f in files]
    return np.stack([np.pad(r, (0, width - r.size), constant_values=256) for r in rows])


def _around_scaler(n, name):
    """``n`` rows around the training inputs recorded in skl2onnx's ``Scaler``
    (y = (x - offset) * scale, so x = offset + z / scale with z ~ N(0, 1))."""
    (scaler,) = [nd for nd in onnx.load(str(DATA / name)).graph.node if nd.op_type == "Scaler"]
    att = {a.name: np.array(helper.get_attribute_value(a)) for a in scaler.attribute}
    z = np.random.default_rng(0).normal(0, 1, (n, att["offset"].size))
    return (att["offset"] + z / att["scale"]).astype(np.float32)


CASES = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (lambda: _photo_strips(4, 48, 192), 11, 54),
    "magika_standard_v1.onnx": (lambda: _bytes_rows(4, 1536), 13, 4),
    # keras2onnx 1.7.0, NHWC, PReLU; P-Net is fully convolutional (dynamic H and W) with a
    # bounding-box head that reaches no nonlinearity; R-Net has MatMul+Add dense layers and
    # two heads
    "mtcnn_pnet.onnx": (lambda: _photo_crops_nhwc(4, 60, 84), 12, 5),
    "mtcnn_rnet.onnx": (lambda: _photo_crops_nhwc(4, 24, 24), 12, 6),
    # skl2onnx 1.19.1, opset 21: an MLPRegressor behind an ai.onnx.ml Scaler
    "surrogates_svm_regressor.onnx": (
        lambda: _around_scaler(32, "surrogates_svm_regressor.onnx"),
        21,
        3,
    ),
}
# keras2onnx names the nodes after the Keras layers: the store keeps those names, in graph order
# (P-Net's bounding-box head conv2d_4 comes before its face-probability head conv2d_3).
# skl2onnx names nodes after their type and a count (MatMul, MatMul1): the weights name them
NAMES = {
    "mtcnn_pnet.onnx": ["conv2d", "conv2d_1", "conv2d_2", "conv2d_4", "conv2d_3"],
    "mtcnn_rnet.onnx": ["conv2d_5", "conv2d_6", "conv2d_7", "dense", "dense_2", "dense_1"],
    "surrogates_svm_regressor.onnx": ["coefficient", "coefficient1", "coefficient2"],
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
    if name in NAMES:
        assert list(ds.layer.values) == NAMES[name]
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
    if opset < 13:  # upgraded in memory; the provenance keeps the file's own opset
        assert info["opset"] == 13 and info["opset_original"] == opset
    else:
        assert info["opset"] == opset and "opset_original" not in info
