"""A tiny JAX/Flax run for the adapter contract test (tests/core/test_adapters.py)."""

from __future__ import annotations

from pathlib import Path

from nasprobe.contract import SourceOptions

from .models import small_cnn


def tiny_run(folder: Path) -> SourceOptions:
    """Two epochs of ``flax.serialization`` msgpack files of a small Flax NNX CNN."""
    from flax import nnx, serialization

    folder.mkdir(parents=True, exist_ok=True)
    for epoch in (1, 2):
        state = nnx.state(small_cnn(seed=epoch))
        (folder / f"epoch_{epoch:03d}.msgpack").write_bytes(
            serialization.to_bytes(nnx.to_pure_dict(state)))
    return SourceOptions(model="tests.jax.models:small_cnn")


#: Where ``nasprobe_jax.entropy`` keeps channels by default (Flax: channels last).
CHANNEL_AXIS = -1


def tensor(a):
    """A numpy array as the framework's tensor."""
    import jax.numpy as jnp

    return jnp.asarray(a)


def array(t):
    """A framework tensor as a numpy array."""
    import numpy as np

    return np.asarray(t)
