"""Fixtures for the Keras adapter: tiny models saved for 2 epochs in every Keras format.

Each model is built once, given random weights for epoch 1 (saved), new random weights for
epoch 2 (saved), and kept in memory with the epoch-2 weights as the Keras reference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest

try:
    import nasprobe_keras  # noqa: F401  (installed editable)
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "adapters"))

import keras
from keras import layers

from nasprobe.contract import Checkpoint

FORMATS = ("keras", "h5", "weights_json", "weights_keras")


def cnn() -> keras.Model:
    """Sequential CNN: Conv2D relu, Conv2D relu, MaxPool, Flatten, Dense relu, Dense."""
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        layers.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
        layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c2"),
        layers.MaxPooling2D(name="pool"),
        layers.Flatten(name="flat"),
        layers.Dense(7, activation="relu", name="d1"),
        layers.Dropout(0.5, name="drop"),
        layers.Dense(3, name="d2"),
    ], name="cnn")


def bn_net() -> keras.Model:
    """Functional: Conv2D → BN → relu, depthwise, separable, a residual Add, Concatenate."""
    x = keras.Input((8, 8, 3), name="image")
    h = layers.Conv2D(5, 3, use_bias=True, name="conv")(x)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.Activation("relu", name="act")(h)
    d = layers.DepthwiseConv2D(3, padding="same", activation="tanh", name="dw")(h)
    h = layers.Add(name="res")([h, d])
    s = layers.SeparableConv2D(4, 3, depth_multiplier=2, activation="sigmoid", name="sep")(h)
    a = layers.AveragePooling2D(2, padding="same", name="avg")(s)
    g = layers.GlobalAveragePooling2D(name="gap")(a)
    m = layers.GlobalMaxPooling2D(name="gmp")(h)
    c = layers.Concatenate(name="cat")([g, m])
    y = layers.Dense(3, activation="softmax", name="out")(c)
    return keras.Model(x, y, name="bn_net")


def seq_net() -> keras.Model:
    """Sequences: Conv1D (causal), Dense on (N, T, D), BN on (N, T, D), global pooling."""
    x = keras.Input((6, 4), name="seq")
    h = layers.Conv1D(5, 3, padding="causal", activation="elu", name="conv1d")(x)
    h = layers.Dense(6, activation="gelu", name="td")(h)
    h = layers.BatchNormalization(name="bn1d")(h)
    h = layers.LeakyReLU(name="leaky")(h)
    h = layers.GlobalAveragePooling1D(name="gap1d")(h)
    y = layers.Dense(2, activation="tanh", name="head")(h)
    return keras.Model(x, y, name="seq_net")


MODELS = {"cnn": cnn, "bn_net": bn_net, "seq_net": seq_net}


def randomize(model: keras.Model, seed: int) -> None:
    """New random weights; BN statistics far from the identity so BN is visible."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        if w.name == "moving_variance":
            w.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
        else:
            w.assign(rng.normal(0, 0.5, shape).astype("float32"))


def save_epochs(model: keras.Model, root: Path, epochs=(1, 2)) -> dict[str, list[Checkpoint]]:
    """Save ``model`` for each epoch in every format; returns checkpoints per format."""
    out = {f: [] for f in FORMATS}
    for f in FORMATS:
        (root / f).mkdir(parents=True, exist_ok=True)
    (root / "weights_json" / "model.json").write_text(model.to_json())
    model.save(root / "weights_keras" / "architecture.keras")
    for epoch in epochs:
        randomize(model, 100 * epoch + len(model.weights))
        files = {"keras": root / "keras" / f"epoch_{epoch:03d}.keras",
                 "h5": root / "h5" / f"epoch_{epoch:03d}.h5",
                 "weights_json": root / "weights_json" / f"epoch_{epoch:03d}.weights.h5",
                 "weights_keras": root / "weights_keras" / f"epoch_{epoch:03d}.weights.h5"}
        model.save(files["keras"])
        model.save(files["h5"])
        model.save_weights(files["weights_json"])
        model.save_weights(files["weights_keras"])
        for f, p in files.items():
            out[f].append(Checkpoint(p, epoch))
    return out


@pytest.fixture(scope="module", params=sorted(MODELS))
def saved(request, tmp_path_factory):
    """(name, epoch-2 keras model, {format: [Checkpoint epoch 1, epoch 2]})."""
    name = request.param
    model = MODELS[name]()
    ckpts = save_epochs(model, tmp_path_factory.mktemp(name))
    return name, model, ckpts


@pytest.fixture(scope="module")
def probe_x(saved):
    """Random probe inputs, shape (4, *input shape), float32."""
    _, model, _ = saved
    rng = np.random.default_rng(7)
    return rng.normal(0, 1, (4, *model.inputs[0].shape[1:])).astype("float32")
