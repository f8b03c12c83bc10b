"""nasprobe_jax.taps and .regularizers: taps equal Flax's own module outputs, penalties equal
float64 numpy and the PyTorch regularisers on the same numbers, and all of it runs inside a
jitted, differentiated train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from nasprobe_jax.regularizers import (
    DecorrReg,
    NASReg,
    SparsityReg,
    decorr_penalty,
    kernels_of,
)
from nasprobe_jax.taps import forward_with_taps
from nasprobe_torch import regularizers as treg

from .conftest import jax_outputs, trained_like


@pytest.fixture(scope="module")
def net_and_x():
    x = np.random.default_rng(11).standard_normal((4, 8, 8, 2)).astype(np.float32)
    return trained_like(3), x


def np_entropy(a):
    """Softmax entropy over the last axis, float64."""
    a = np.asarray(a, np.float64)
    z = a - a.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return -(p * np.log(p)).sum(axis=-1)


def np_activation_penalty(taps, perplexity, lam="auto"):
    total = 0.0
    for a in taps.values():
        h = np_entropy(a).reshape(len(a), -1)
        f = np.exp(h) if perplexity else h
        total -= (1.0 / h.shape[1] if lam == "auto" else lam) * f.sum(axis=1).mean()
    return total


def np_decorr(kernels, reduction="signed", centring="paper"):
    total = 0.0
    for k in kernels.values():
        f = np.moveaxis(np.asarray(k, np.float64), -1, 0).reshape(k.shape[-1], -1)
        u = f - (f.mean(axis=0, keepdims=True) if centring == "paper"
                 else f.mean(axis=1, keepdims=True))
        n = np.linalg.norm(u, axis=1)
        c = (u @ u.T) / np.outer(n, n)
        v = c[np.tril_indices(len(c), -1)]
        total += {"signed": v, "abs": np.abs(v), "square": v * v}[reduction].sum()
    return total


def test_linear_taps_are_the_module_outputs(net_and_x):
    net, x = net_and_x
    out, taps = forward_with_taps(net, x)
    ref = jax_outputs(net, x)
    assert list(taps) == ["conv1", "block2.conv", "fc"]  # call order, head left out
    for name, a in taps.items():
        np.testing.assert_array_equal(np.asarray(a), ref[name].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(net(x)))


def test_preact_taps_are_batchnorm_outputs(net_and_x):
    net, x = net_and_x
    _, taps = forward_with_taps(net, x, tap="preact", layers=["conv1", "block2.conv", "fc"])
    ref = jax_outputs(net, x)
    for name, module in (("conv1", "bn1"), ("block2.conv", "block2.bn"), ("fc", "fc")):
        np.testing.assert_array_equal(np.asarray(taps[name]), ref[module].astype(np.float32))


def test_exclude_bias_and_layer_regex(net_and_x):
    net, x = net_and_x
    _, taps = forward_with_taps(net, x, layers="conv", exclude_bias=True)
    assert list(taps) == ["conv1", "block2.conv"]
    ref = jax_outputs(net, x)["conv1"] - np.asarray(net.conv1.bias[...], np.float64)
    np.testing.assert_allclose(np.asarray(taps["conv1"]), ref, atol=1e-6)
    with pytest.raises(ValueError, match="not Conv/Linear modules called"):
        forward_with_taps(net, x, layers=["bn1"])


def test_penalties_equal_numpy_float64(net_and_x):
    net, x = net_and_x
    _, taps = forward_with_taps(net, x)
    for reg, perplexity in ((NASReg(), True), (SparsityReg(lam=0.01), False)):
        want = np_activation_penalty(taps, perplexity, "auto" if perplexity else 0.01)
        assert float(reg(taps)) == pytest.approx(want, rel=1e-5)
    kernels = kernels_of(net)
    for reduction in ("signed", "abs", "square"):
        for centring in ("paper", "pearson"):
            got = float(DecorrReg(reduction=reduction, centring=centring)(net))
            assert got == pytest.approx(np_decorr(kernels, reduction, centring), abs=1e-4)


def _identity_net(taps):
    """A torch net whose Conv/Linear outputs are exactly ``taps``: one identity 1×1 conv (or
    identity Linear) per tap, fed with the tap itself."""
    layers = torch.nn.ModuleDict()
    for i, a in enumerate(taps.values()):
        d = a.shape[-1]
        m = torch.nn.Conv2d(d, d, 1) if a.ndim == 4 else torch.nn.Linear(d, d)
        with torch.no_grad():
            m.weight.copy_(torch.eye(d).reshape(m.weight.shape))
            m.bias.zero_()
        layers[str(i)] = m
    return layers


def test_activation_penalties_equal_torch_on_the_same_numbers(net_and_x):
    net, x = net_and_x
    _, taps = forward_with_taps(net, x, tap="preact")
    layers = _identity_net(taps)
    names = list(layers)
    for jreg, treg_cls, lam in ((NASReg(), treg.NASReg, "auto"),
                                (SparsityReg(), treg.SparsityReg, 0.001)):
        reg = treg_cls(layers, layers=names, lam=lam)
        for name, a in zip(names, taps.values()):
            t = torch.from_numpy(np.array(a))
            t = t.permute(0, 3, 1, 2) if t.ndim == 4 else t  # NHWC -> NCHW
            layers[name](t)
        want = float(reg.penalty().detach())
        reg.remove()
        assert float(jreg(taps)) == pytest.approx(want, rel=1e-5)


def test_decorr_equals_torch_on_the_same_kernels(net_and_x):
    net, _ = net_and_x
    kernels = {k: np.asarray(v) for k, v in kernels_of(net, ["conv1", "block2.conv", "fc"]).items()}
    mods = torch.nn.ModuleDict()
    for i, k in enumerate(kernels.values()):
        if k.ndim == 4:  # HWIO -> OIHW
            m = torch.nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], bias=False)
            w = k.transpose(3, 2, 0, 1)
        else:  # (in, out) -> (out, in)
            m = torch.nn.Linear(*k.shape, bias=False)
            w = k.T
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        mods[str(i)] = m
    for reduction in ("signed", "abs", "square"):
        want = float(treg.DecorrReg(mods, layers=list(mods), kappa=0.5,
                                    reduction=reduction).penalty().detach())
        got = float(decorr_penalty(kernels, kappa=0.5, reduction=reduction))
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_jitted_train_step_with_all_three(net_and_x):
    """Penalties traced in nnx.jit with gradients: same value as eagerly, finite gradients,
    and one SGD step on the regulariser alone lowers it."""
    import optax

    _, x = net_and_x
    net = trained_like(4)
    net.train()
    nas_reg, sparsity, decorr = NASReg(), SparsityReg(), DecorrReg(kappa=0.1)

    def loss_fn(model):
        _, taps = forward_with_taps(model, x)
        return nas_reg(taps) + sparsity(taps) + decorr(kernels_of(model))

    eager = float(loss_fn(net))
    optimizer = nnx.Optimizer(net, optax.sgd(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    loss, grads = step(net, optimizer)
    assert float(loss) == pytest.approx(eager, rel=1e-5)
    leaves = jax.tree_util.tree_leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.abs(grads["conv1"]["kernel"][...]).sum()) > 0
    assert float(loss_fn(net)) < eager
