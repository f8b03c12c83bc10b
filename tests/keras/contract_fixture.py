"""A tiny Keras run for the adapter contract test (tests/core/test_adapters.py)."""

from __future__ import annotations

from pathlib import Path

from nasprobe.contract import SourceOptions


def tiny_run(folder: Path) -> SourceOptions:
    """Two epochs of whole ``.keras`` models (``epoch_001.keras``, ``epoch_002.keras``)."""
    import keras
    from keras import layers

    folder.mkdir(parents=True, exist_ok=True)
    for epoch in (1, 2):
        keras.utils.set_random_seed(epoch)
        model = keras.Sequential([
            keras.Input((6, 6, 2)),
            layers.Conv2D(3, 3, activation="relu", name="conv"),
            layers.Flatten(name="flat"),
            layers.Dense(4, activation="relu", name="fc"),
            layers.Dense(2, name="head"),
        ], name="tiny")
        model.save(folder / f"epoch_{epoch:03d}.keras")
    return SourceOptions()


#: Where ``nasprobe_keras.entropy`` and the taps keep channels by default (channels last).
CHANNEL_AXIS = -1


def tensor(a):
    """A numpy array as the framework's tensor."""
    from keras import ops

    return ops.convert_to_tensor(a)


def array(t):
    """A framework tensor as a numpy array."""
    from keras import ops

    return ops.convert_to_numpy(t)


def tiny_model():
    """``(model, probe inputs)`` for the training helpers (``NASMonitor``, ``TapCapture``...)."""
    import keras
    import numpy as np
    from keras import layers

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        layers.Conv2D(3, 3, activation="relu", name="conv"),
        layers.Flatten(name="flat"),
        layers.Dense(4, activation="relu", name="fc"),
        layers.Dense(2, name="head"),
    ], name="tiny")
    x = np.random.default_rng(0).standard_normal((5, 6, 6, 2)).astype(np.float32)
    return model, x
