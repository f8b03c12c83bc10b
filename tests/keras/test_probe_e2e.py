"""End to end: ``nasprobe.probe`` on a folder of .keras checkpoints equals numpy NAS of Keras's
own pre-activation tensors (per epoch, per image, per location)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import nasprobe
from nasprobe.measures.nas import nas
from tests.keras.conftest import cnn, save_epochs

# Keras layers whose (tap) tensor feeds the nonlinearity: fused activations in cnn().
LAYERS = {"linear": ["c1", "c2", "d1", "d2"], "preact": ["c1", "c2", "d1"]}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    ckpts = save_epochs(cnn(), root)["keras"]
    x = np.random.default_rng(11).normal(0, 1, (5, 8, 8, 3)).astype("float32")
    np.savez(root / "probe.npz", x=x)
    return root, ckpts, x


def keras_linear(model: keras.Model, name: str, x: np.ndarray) -> np.ndarray:
    """Output of layer ``name`` without its activation, (N, ..., D) channels-last."""
    layer = model.get_layer(name)
    z = keras.ops.convert_to_numpy(keras.Model(model.inputs[0], layer.input)(x))
    ref = type(layer).from_config(dict(layer.get_config(), activation="linear", name="ref"))
    ref.build(z.shape)
    ref.set_weights(layer.get_weights())
    return keras.ops.convert_to_numpy(ref(z))


@pytest.mark.parametrize("tap", ["linear", "preact"])
def test_probe_heatmaps_equal_keras_nas(run_folder, tmp_path, tap):
    root, ckpts, x = run_folder
    store = tmp_path / "store.zarr"
    nasprobe.probe([root / "keras"], probe=root / "probe.npz", out=store, run="r",
                   framework="keras", tap=tap, keep_images=len(x), progress=False)
    tree = nasprobe.open_store(store)
    assert list(tree.ds["layer"].values) == LAYERS[tap]
    for ck in ckpts:
        model = keras.saving.load_model(ck.path)
        for name in LAYERS[tap]:
            want = nas(keras_linear(model, name, x).astype(np.float64), axis=-1)
            got = tree[f"heatmaps/{name}"]["nas_image_map"].sel(run="r", epoch=ck.epoch)
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-4,
                                       err_msg=f"{name} epoch {ck.epoch}")
