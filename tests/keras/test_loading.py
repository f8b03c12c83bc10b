"""Safe mode, wrong architectures, --model factories and unsupported layers."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from nasprobe.contract import Checkpoint, SourceOptions
from nasprobe.errors import CheckpointError, NasprobeError
from nasprobe_keras import UnsupportedLayerError, export_onnx, make_source
from tests.keras.conftest import cnn, randomize


@pytest.fixture(scope="module")
def lambda_files(tmp_path_factory):
    """A model with a Lambda layer saved as .keras and legacy .h5."""
    root = tmp_path_factory.mktemp("lambda")
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="d"),
                              layers.Lambda(lambda t: t * 2.0, name="double")])
    files = [root / "epoch_1.keras", root / "epoch_1.h5"]
    for f in files:
        model.save(f)
    return files


@pytest.mark.parametrize("index", [0, 1], ids=["keras", "h5"])
def test_safe_mode_refuses_lambda(lambda_files, index):
    path = lambda_files[index]
    with pytest.raises(CheckpointError) as err:
        make_source([Checkpoint(path, 1)])
    assert str(path) in str(err.value) and "--trust-pickle" in str(err.value)


def test_trusted_lambda_is_unsupported_by_name(lambda_files):
    with pytest.raises(CheckpointError, match="'double'.*Lambda"):
        make_source([Checkpoint(lambda_files[0], 1)], SourceOptions(trust_pickle=True))


@pytest.fixture(scope="module")
def wrong_arch(tmp_path_factory):
    """Epoch 1 of the CNN and an epoch 2 whose 'c2' has 5 filters (as .keras and .weights.h5)."""
    root = tmp_path_factory.mktemp("wrong")
    good = cnn()
    randomize(good, 1)
    good.save(root / "epoch_1.keras")
    (root / "model.json").write_text(good.to_json())
    good.save_weights(root / "epoch_1.weights.h5")
    bad = keras.Sequential([keras.Input((8, 8, 3)),
                            layers.Conv2D(4, 3, padding="same", name="c1"),
                            layers.Conv2D(5, 3, padding="same", name="c2")])
    bad.save(root / "epoch_2.keras")
    bad.save_weights(root / "epoch_2.weights.h5")
    return root


@pytest.mark.parametrize("ext", [".keras", ".weights.h5"])
def test_wrong_architecture_names_file_and_tensor(wrong_arch, ext):
    ckpts = [Checkpoint(wrong_arch / f"epoch_1{ext}", 1), Checkpoint(wrong_arch / f"epoch_2{ext}", 2)]
    source = make_source(ckpts)
    assert source.weights(ckpts[0])  # the right one reads fine
    with pytest.raises(CheckpointError) as err:
        source.weights(ckpts[1])
    msg = str(err.value)
    assert str(ckpts[1].path) in msg and "c2/kernel" in msg


def test_weights_only_needs_an_architecture(tmp_path):
    model = cnn()
    model.save_weights(tmp_path / "epoch_1.weights.h5")
    with pytest.raises(CheckpointError, match="--model"):
        make_source([Checkpoint(tmp_path / "epoch_1.weights.h5", 1)])


FACTORY = '''
import keras
from keras import layers

def build(filters=4, width=8):
    return keras.Sequential([keras.Input((width, width, 3)),
                             layers.Conv2D(filters, 3, activation="relu", name="c"),
                             layers.GlobalAveragePooling2D(name="g"), layers.Dense(2, name="o")])
'''


def test_model_factory_with_kwargs(tmp_path, monkeypatch):
    (tmp_path / "nk_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import nk_factory

    trained = nk_factory.build(filters=5)
    randomize(trained, 3)
    ckpt = Checkpoint(tmp_path / "epoch_3.weights.h5", 3)
    trained.save_weights(ckpt.path)
    source = make_source([ckpt], SourceOptions(model="nk_factory:build(filters=5)"))
    w = source.weights(ckpt)
    np.testing.assert_array_equal(w["c/kernel"],
                                  np.transpose(trained.get_layer("c").kernel.numpy(), (3, 2, 0, 1)))
    with pytest.raises(CheckpointError, match="c/kernel"):
        make_source([ckpt], SourceOptions(model="nk_factory:build(filters=4)")).weights(ckpt)
    with pytest.raises(NasprobeError, match="literals"):
        make_source([ckpt], SourceOptions(model="nk_factory:build(filters=os.sep)"))


def test_unsupported_layer_is_named():
    model = keras.Sequential([keras.Input((5, 4)), layers.LSTM(3, name="rnn")])
    with pytest.raises(UnsupportedLayerError, match="'rnn' of type LSTM"):
        export_onnx(model)
