"""A later run whose layer has a stored layer's name but another width is refused before
anything is written (exit 2, the store and the layer named), instead of a ``channels``
coordinate that is wrong for one of the runs; another map size is stored (padded with NaN)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.core import onnx_models as om
from tests.hostile import assert_refused, probe, tree_digest, write_probe


@pytest.mark.parametrize("kwargs, fragment", [
    ({"widths": (7, 5)}, "layer 'conv1' of run 'b' has 7 channels, but 6 in the store"),
    ({"size": 10}, None),
])
def test_same_layer_name_other_shape_is_refused(tmp_path, kwargs, fragment):
    for name, kw in (("a", {}), ("b", kwargs)):
        (tmp_path / name).mkdir()
        model, _ = om.conv_bn_relu_net(np.random.default_rng(0), **kw)
        onnx.save(model, str(tmp_path / name / "epoch_001.onnx"))
    store = tmp_path / "s.zarr"
    assert probe(tmp_path / "a", "--probe", write_probe(tmp_path / "p.npz"), "--out", store).exit_code == 0
    size = kwargs.get("size", 8)
    probe_b = write_probe(tmp_path / "pb.npz", shape=(3, size, size))
    before = tree_digest(store)
    res = probe(tmp_path / "b", "--probe", probe_b, "--out", store, "--force")
    if fragment is None:  # same widths, larger maps: accepted
        assert res.exit_code == 0, (res.output, res.exception)
        return
    assert_refused(res, store, fragment)
    assert tree_digest(store) == before
