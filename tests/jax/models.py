"""Small Flax NNX models for the JAX adapter tests (built by ``--model`` from this file)."""

from __future__ import annotations

from flax import nnx


class Residual(nnx.Module):
    """conv (3×3, no bias) → BatchNorm → + skip → ReLU."""

    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(channels, channels, (3, 3), padding="SAME", use_bias=False,
                             rngs=rngs)
        self.bn = nnx.BatchNorm(channels, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(x + self.bn(self.conv(x)))


class SmallCNN(nnx.Module):
    """conv1 → bn1 → ReLU → max-pool → residual block2 → flatten → fc → ReLU → head."""

    input_shape = (8, 8, 2)

    def __init__(self, width: int = 6, hidden: int = 12, classes: int = 5, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.conv1 = nnx.Conv(2, width, (3, 3), padding="SAME", rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, rngs=rngs)
        self.block2 = Residual(width, rngs)
        self.fc = nnx.Linear(width * 4 * 4, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = self.block2(x)
        x = x.reshape(x.shape[0], -1)
        return self.head(nnx.relu(self.fc(x)))


def small_cnn(**kwargs) -> SmallCNN:
    """The ``--model`` callable."""
    return SmallCNN(**kwargs)
