"""A graph exported with a fixed batch size (e.g. a .pt2 traced with batch 1) is fed batches of
exactly that size, the last one padded; the padding never reaches the statistics."""

import numpy as np
import onnx
import pytest

import nasprobe
from tests.core import onnx_models as om


def _fix_batch(model: onnx.ModelProto, n: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = n
    return m


@pytest.mark.parametrize("fixed", [1, 4])
@pytest.mark.parametrize("nas_on", ["graph", "host"])
def test_fixed_batch_equals_dynamic(tmp_path, labelled_probe, fixed, nas_on):
    model, _ = om.conv_bn_relu_net(np.random.default_rng(3))
    (tmp_path / "dyn").mkdir()
    (tmp_path / "fix").mkdir()
    onnx.save(model, str(tmp_path / "dyn" / "epoch_001.onnx"))
    onnx.save(_fix_batch(model, fixed), str(tmp_path / "fix" / "epoch_001.onnx"))
    # 21 probe images: with a fixed batch of 4 the last batch holds 1 image and 3 of padding.
    dyn = nasprobe.open_store(nasprobe.probe([tmp_path / "dyn"], probe=labelled_probe,
                                             out=tmp_path / "dyn.zarr", batch_size=8,
                                             progress=False, nas_on=nas_on))
    fix = nasprobe.open_store(nasprobe.probe([tmp_path / "fix"], probe=labelled_probe,
                                             out=tmp_path / "fix.zarr", batch_size=8,
                                             progress=False, nas_on=nas_on))
    for name in ("nas_median", "nas_mean", "nas_min", "nas_max", "entropy_mean", "nas_quantile",
                 "loss", "accuracy"):
        np.testing.assert_allclose(fix[name].values, dyn[name].values, rtol=0, atol=1e-6,
                                   err_msg=name)
    np.testing.assert_array_equal(fix["nas_hist"].values.sum(-1), dyn["nas_hist"].values.sum(-1))
    for layer in ("conv1", "conv2"):
        np.testing.assert_allclose(fix[f"heatmaps/{layer}/nas_image_map"].values,
                                   dyn[f"heatmaps/{layer}/nas_image_map"].values, atol=1e-6)
