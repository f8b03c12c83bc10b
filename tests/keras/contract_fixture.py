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
