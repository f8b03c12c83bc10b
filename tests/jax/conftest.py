"""Shared pieces of the JAX adapter tests: checkpoints of a small Flax NNX CNN (one run saved as
Orbax folders, the same epochs as msgpack files), a probe set, and JAX's own tensors."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx, serialization

from .models import small_cnn

MODEL = "tests.jax.models:small_cnn"
EPOCHS = (1, 2)
#: Per layer: the module whose output is the layer's pre-activation (input of the ReLU);
#: block2.conv's BatchNorm output meets the skip connection first, head feeds no nonlinearity.
PREACT_OF = {"conv1": "bn1", "fc": "fc"}
LINEAR = ("conv1", "block2.conv", "fc", "head")


def trained_like(seed: int):
    """A SmallCNN whose every parameter and BatchNorm statistic is random (not the init's
    ones and zeros), so that BatchNorm changes the taps and epochs differ."""
    net = small_cnn(seed=seed)
    rng = np.random.default_rng(100 + seed)
    state = nnx.state(net)
    pure = nnx.to_pure_dict(state)

    def fill(tree, path=()):
        for key, value in tree.items():
            if isinstance(value, dict):
                fill(value, path + (key,))
            elif key == "var":
                tree[key] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
            else:
                tree[key] = (rng.standard_normal(value.shape) * 0.5).astype(np.float32)

    fill(pure)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(net, state)
    net.eval()
    return net


def save_orbax(net, folder):
    """One Orbax checkpoint folder of ``nnx.state(net)``, as training scripts write it."""
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder.resolve(), nnx.state(net))
    checkpointer.wait_until_finished()


def save_msgpack(net, path):
    """``flax.serialization.to_bytes`` of the model state's pure dict."""
    path.write_bytes(serialization.to_bytes(nnx.to_pure_dict(nnx.state(net))))


@pytest.fixture(scope="session")
def jax_run(tmp_path_factory):
    """The run: ``orbax`` and ``msgpack`` folders, ``probe`` (.npz), ``x``, ``nets`` by epoch."""
    root = tmp_path_factory.mktemp("jax_run")
    (root / "orbax").mkdir()
    (root / "msgpack").mkdir()
    nets = {}
    for epoch in EPOCHS:
        net = trained_like(epoch)
        save_orbax(net, root / "orbax" / f"epoch_{epoch:03d}")
        save_msgpack(net, root / "msgpack" / f"epoch_{epoch:03d}.msgpack")
        nets[epoch] = net
    x = np.random.default_rng(7).standard_normal((5, 8, 8, 2)).astype(np.float32)
    np.savez(root / "probe.npz", x=x)
    return {"orbax": root / "orbax", "msgpack": root / "msgpack", "probe": root / "probe.npz",
            "x": x, "nets": nets, "root": root}


def jax_outputs(net, x) -> dict[str, np.ndarray]:
    """Every module's output in one forward pass, ``{module path: float64 array}``, captured
    by Flax itself (``nnx.capture`` with ``method_outputs``)."""
    _, inter = nnx.capture(net, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
    out = {}
    for path, var in nnx.to_flat_state(inter):
        if path[-1] == "__call__" and len(path) > 1:
            (value,) = var.get_value()
            out[".".join(path[:-1])] = np.asarray(value, dtype=np.float64)
    return out


def nas64(a: np.ndarray) -> np.ndarray:
    """NAS along the last (channel) axis in float64 numpy: ``1 - exp(H)/D`` with ``H`` the
    softmax entropy in nats, written out here independently of nasprobe."""
    z = a - a.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)
    return 1.0 - np.exp(h) / a.shape[-1]
