"""NASEarlyStopping in a real (tiny) Keras ``model.fit`` (torch backend); the post-hoc rule on a
store of the checkpoints the same fit wrote gives the callback's epoch."""

import keras
import numpy as np
from click.testing import CliRunner
from keras import layers

import nasprobe
from nasprobe import stopping
from nasprobe.cli import main
from nasprobe_keras.callbacks import CheckpointCallback
from nasprobe_keras.early_stopping import NASEarlyStoppingCallback

#: deep NAS of this run saturates within ~20 epochs: a window of 3 epochs with a rise < 0.02
RULE = dict(rule="plateau", window=3, tol=0.02, sigma=0, patience=1)


def small_cnn() -> keras.Model:
    return keras.Sequential([
        keras.Input((16, 16, 1)),
        layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
        layers.Conv2D(4, 3, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(8, 3, padding="same", activation="relu", name="conv3"),
        layers.MaxPooling2D(name="pool2"),
        layers.Flatten(name="flat"),
        layers.Dense(16, activation="relu", name="fc1"),
        layers.Dense(10, name="fc2"),
    ])


def test_fit_stops_when_the_rule_fires_and_post_hoc_agrees(tmp_path):
    from nasprobe_torch.digits import digits_splits

    x_tr, y_tr, x_pr, _ = digits_splits(80, 40, seed=0)
    x_tr, x_pr = x_tr.transpose(0, 2, 3, 1), x_pr.transpose(0, 2, 3, 1)  # channels last
    keras.utils.set_random_seed(0)
    model = small_cnn()
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    params = {k: v for k, v in RULE.items() if k != "rule"}
    cb = NASEarlyStoppingCallback(x_pr, RULE["rule"], **params)
    hist = model.fit(x_tr, y_tr, epochs=40, batch_size=20, shuffle=False, verbose=0,
                     callbacks=[CheckpointCallback(tmp_path / "run"), cb])
    fired = cb.stop_epoch
    assert fired is not None and 3 <= fired < 39
    assert len(hist.history["loss"]) == fired + 1  # model.fit ended after the firing epoch
    series = cb.dataset()
    assert list(series["epoch"].values) == list(range(-1, fired + 1))
    assert list(series["layer"].values) == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert stopping.stop_epoch(series, **RULE) == fired
    assert [s["epoch"] for s in cb.signals] == list(range(-1, fired + 1))

    np.save(tmp_path / "probe.npy", x_pr)
    store = tmp_path / "nas.zarr"
    nasprobe.probe([tmp_path / "run"], probe=tmp_path / "probe.npy", out=store, run="k",
                   framework="keras", progress=False, device="cpu")
    stored = nasprobe.open_store(store).to_dataset()["nas_median"].sel(run="k")
    assert [str(v) for v in stored["layer"].values] == list(series["layer"].values)
    assert np.allclose(stored.values, series["nas_median"].values, atol=1e-4)
    res = CliRunner().invoke(main, ["onsets", str(store), "--rule", "plateau",
                                    *sum((["--param", f"{k}={v}"] for k, v in RULE.items()
                                          if k != "rule"), [])])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == f"k\t{fired}"
