"""nasprobe_keras.callbacks: checkpoint folders nasprobe can read, live NAS event files."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

from nasprobe.frameworks.checkpoints import parse_epoch  # noqa: E402
from nasprobe.measures.nas import nas  # noqa: E402
from nasprobe.report.event_writer import heatmap_scale  # noqa: E402
from nasprobe.store.training_logs import read_training_log  # noqa: E402
from nasprobe_keras.callbacks import CheckpointCallback, LiveNASCallback  # noqa: E402
from nasprobe_keras.regularizers import NASReg, Regularized  # noqa: E402


def make_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(3, 3, activation="relu", name="c1"),
        keras.layers.Conv2D(4, 3, name="c2"),
        keras.layers.Activation("relu", name="a2"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(5, activation="relu", name="d1"),
        keras.layers.Dense(2, name="out"),
    ])


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((12, 8, 8, 1)).astype("float32"), np.arange(12) % 2


def _compile(m):
    m.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


@pytest.mark.parametrize("wrap", [False, True])
def test_checkpoint_callback(tmp_path, data, wrap):
    x, y = data
    model = make_model()
    init_kernel = ops.convert_to_numpy(model.get_layer("c1").kernel).copy()
    trained = Regularized(model, [NASReg(model)]) if wrap else model
    _compile(trained)
    hist = trained.fit(x, y, validation_data=(x, y), epochs=2, batch_size=6, verbose=0,
                       callbacks=[CheckpointCallback(tmp_path)])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["epoch_000.keras", "epoch_001.keras", "init.keras", "metrics.csv"]
    assert [parse_epoch(tmp_path / f) for f in files[:3]] == [0, 1, -1]
    init = keras.models.load_model(tmp_path / "init.keras")
    last = keras.models.load_model(tmp_path / "epoch_001.keras")
    assert [l.name for l in last.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(ops.convert_to_numpy(init.get_layer("c1").kernel), init_kernel)
    np.testing.assert_array_equal(ops.convert_to_numpy(last.get_layer("c1").kernel),
                                  ops.convert_to_numpy(model.get_layer("c1").kernel))
    logged = read_training_log(tmp_path / "metrics.csv")
    assert logged["train_loss"] == pytest.approx(dict(enumerate(hist.history["loss"])))
    assert logged["loss"] == pytest.approx(dict(enumerate(hist.history["val_loss"])))
    assert logged["accuracy"] == pytest.approx(dict(enumerate(hist.history["val_accuracy"])))
    assert logged["train_accuracy"] == pytest.approx(dict(enumerate(hist.history["accuracy"])))


def test_live_nas_callback(tmp_path, data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = data
    probe = x[:5]
    model = make_model()
    _compile(model)

    expected = {}

    class Reference(keras.callbacks.Callback):
        """After LiveNAS: the taps computed by hand from the layer weights (numpy medians)."""

        def on_epoch_end(self, epoch, logs=None):
            L = model.get_layer
            c1 = ops.convert_to_numpy(ops.conv(ops.convert_to_tensor(probe), L("c1").kernel) + L("c1").bias)
            sub = keras.Model(model.inputs, [L("c2").output, L("flat").output])
            c2, flat = (ops.convert_to_numpy(t) for t in sub(probe))
            d1 = flat @ ops.convert_to_numpy(L("d1").kernel) + ops.convert_to_numpy(L("d1").bias)
            expected[epoch] = {k: float(np.median(nas(v.astype(np.float64), -1)))
                               for k, v in (("c1", c1), ("c2", c2), ("d1", d1))}

    live = LiveNASCallback(probe, tmp_path / "tb", batch_size=2)
    model.fit(x, y, epochs=2, batch_size=6, verbose=0, callbacks=[live, Reference()])
    assert set(live.medians) == {0, 1}
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    assert sorted(ea.Tags()["scalars"]) == ["nas_median/c1", "nas_median/c2", "nas_median/d1"]
    for name in ("c1", "c2", "d1"):
        events = ea.Scalars(f"nas_median/{name}")
        assert [e.step for e in events] == [0, 1]
        assert [e.value for e in events] == pytest.approx([expected[e][name] for e in (0, 1)], abs=1e-5)
    img = ea.Images("nas_heatmap/c2")[1]
    assert (img.step, img.height, img.width) == (1, 4 * heatmap_scale((4, 4)), 4 * heatmap_scale((4, 4)))
