"""nasprobe_keras.regularizers: values against numpy, parity with PyTorch (values and
gradients, the latter checked against finite differences in tests/torch), and model.fit."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from keras import ops  # noqa: E402
from torch import nn  # noqa: E402

from nasprobe.measures.correlation import filter_correlations, lower_triangle  # noqa: E402
from nasprobe.measures.nas import entropy, nas, perplexity  # noqa: E402
from nasprobe_keras.regularizers import DecorrReg, NASMonitor, NASReg, Regularized, SparsityReg  # noqa: E402
from nasprobe_torch.regularizers import (
    DecorrReg as TDecorrReg,  # noqa: E402
    NASReg as TNASReg,  # noqa: E402
    SparsityReg as TSparsityReg,  # noqa: E402
)


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(5, 3, name="c2")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="r2")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(6, activation="tanh", name="d1")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="out")(h))


def reference_taps(model, x, tap):
    """The tap tensors computed independently of the regulariser's capture (numpy float64)."""
    L = model.get_layer
    sub = keras.Model(model.input, [L("c2").output, L("bn").output, L("flatten").output])
    c2, bn, flat = (ops.convert_to_numpy(t) for t in sub(x, training=False))
    c1 = ops.convert_to_numpy(ops.conv(ops.convert_to_tensor(x), L("c1").kernel) + L("c1").bias)
    d1 = flat @ ops.convert_to_numpy(L("d1").kernel) + ops.convert_to_numpy(L("d1").bias)
    return {"c1": c1.astype(np.float64), "c2": (c2 if tap == "linear" else bn).astype(np.float64),
            "d1": d1.astype(np.float64)}


def numpy_penalty(taps, kind, lam=None):
    total = 0.0
    for t in taps.values():
        f = perplexity(t, -1) if kind == "nas" else entropy(t, -1)
        f = f.reshape(f.shape[0], -1)
        total += -(1.0 / f.shape[1] if lam is None else lam) * f.sum(axis=1).mean()
    return total


@pytest.fixture
def x():
    return (np.random.default_rng(0).standard_normal((6, 8, 8, 1)) * 3).astype("float32")


@pytest.mark.parametrize("tap", ["linear", "preact"])
def test_values_and_last_nas(x, tap):
    model = make_model()
    model.get_layer("bn").set_weights([np.full(5, 1.5), np.full(5, 0.3), np.full(5, 0.2), np.full(5, 2.0)])
    ref = reference_taps(model, x, tap)
    reg = NASReg(model, tap=tap)
    assert reg.layers == ["c1", "c2", "d1"]
    assert float(reg.penalty(x)) == pytest.approx(numpy_penalty(ref, "nas"), rel=1e-5)
    for name, m in reg.last_nas().items():
        np.testing.assert_allclose(m, nas(ref[name], -1), atol=1e-5)
    sreg = SparsityReg(model, layers="^c", lam=0.01, tap=tap)
    assert float(sreg.penalty(x)) == pytest.approx(
        numpy_penalty({k: ref[k] for k in ("c1", "c2")}, "entropy", lam=0.01), rel=1e-5)
    mon = NASMonitor(model, layers=["c2"], tap=tap)
    np.testing.assert_allclose(mon.measure(x, batch_size=4)["c2"], nas(ref["c2"], -1), atol=1e-5)
    # the model is left untouched: activations restored, outputs as before
    assert model.get_layer("c1").activation is keras.activations.relu
    assert "call" not in model.get_layer("r2").__dict__


def test_exclude_bias_and_errors(x):
    model = make_model()
    model.get_layer("c1").bias.assign(np.arange(4, dtype="float32"))
    ref = reference_taps(model, x, "linear")
    reg = NASReg(model, layers=["c1"], lam=0.5, exclude_bias=True)
    assert float(reg.penalty(x)) == pytest.approx(
        numpy_penalty({"c1": ref["c1"] - np.arange(4)}, "nas", lam=0.5), rel=1e-5)
    with pytest.raises(ValueError, match="not Conv/Dense"):
        NASReg(model, layers=["bn"])
    with pytest.raises(ValueError, match="no activation follows"):
        NASReg(model, layers=["out"], tap="preact")
    with pytest.raises(RuntimeError, match="has not run"):
        NASReg(model).penalty()


def test_decorr_value():
    model = make_model()
    for centring in ("paper", "pearson"):
        for reduction, g in (("signed", lambda v: v), ("abs", np.abs), ("square", np.square)):
            reg = DecorrReg(model, kappa={"c1": 1.0, "c2": 0.5, "d1": 2.0}, centring=centring,
                            reduction=reduction)
            ref = 0.0
            for name, kappa in reg.kappa.items():
                k = ops.convert_to_numpy(model.get_layer(name).kernel)
                ref += kappa * g(lower_triangle(filter_correlations(np.moveaxis(k, -1, 0), centring))).sum()
            assert float(reg.penalty()) == pytest.approx(ref, rel=1e-5, abs=1e-6)


# -- parity with PyTorch on the same weights and inputs --------------------------------------
def _pair(kind):
    """An equivalent (torch, keras) pair: conv-only or dense-only, same weights."""
    torch.manual_seed(0)
    if kind == "conv":
        tnet = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Conv2d(5, 3, 2))
        knet = keras.Sequential([keras.Input((9, 9, 2)), keras.layers.Conv2D(4, 3, activation="relu"),
                                 keras.layers.Conv2D(5, 3, activation="relu"), keras.layers.Conv2D(3, 2)])
        convs = [m for m in tnet if isinstance(m, nn.Conv2d)]
        for t, k in zip(convs, knet.layers):
            k.set_weights([t.weight.detach().permute(2, 3, 1, 0).numpy(), t.bias.detach().numpy()])
        x = np.random.default_rng(1).standard_normal((3, 2, 9, 9)).astype("float32")
        return tnet, knet, torch.tensor(x), x.transpose(0, 2, 3, 1)
    tnet = nn.Sequential(nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    knet = keras.Sequential([keras.Input((7,)), keras.layers.Dense(6, activation="tanh"),
                             keras.layers.Dense(5, activation="relu"), keras.layers.Dense(2)])
    lins = [m for m in tnet if isinstance(m, nn.Linear)]
    for t, k in zip(lins, knet.layers):
        k.set_weights([t.weight.detach().T.numpy(), t.bias.detach().numpy()])
    x = np.random.default_rng(1).standard_normal((4, 7)).astype("float32")
    return tnet, knet, torch.tensor(x), x


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_keras_and_torch_agree(kind):
    tnet, knet, tx, kx = _pair(kind)
    pairs = [(TNASReg(tnet), NASReg(knet)),
             (TNASReg(tnet, tap="preact", exclude_bias=True), NASReg(knet, tap="preact", exclude_bias=True)),
             (TSparsityReg(tnet, lam=0.1), SparsityReg(knet, lam=0.1)),
             (TDecorrReg(tnet), DecorrReg(knet)),
             (TDecorrReg(tnet, centring="pearson", reduction="abs"), DecorrReg(knet, centring="pearson",
                                                                               reduction="abs"))]
    for treg, kreg in pairs:
        tnet.zero_grad()
        tnet(tx)
        tp = treg.penalty()
        tp.backward()
        kp = kreg.penalty(kx)
        assert float(kp) == pytest.approx(tp.item(), rel=1e-5, abs=1e-6)
        # gradients (keras on the torch backend: variables are torch parameters)
        kvars = [l.kernel for l in knet.layers[:2]]
        grads = torch.autograd.grad(kp, [v.value for v in kvars])
        for t, g in zip([m for m in tnet if isinstance(m, (nn.Conv2d, nn.Linear))][:2], grads):
            tg = t.weight.grad.permute(2, 3, 1, 0) if kind == "conv" else t.weight.grad.T
            torch.testing.assert_close(g.cpu(), tg, rtol=1e-4, atol=1e-6)
        for r in (treg,):
            r.remove()


def test_fit_reports_loss_with_penalty(x):
    model = make_model()
    y = np.arange(len(x)) % 3
    regs = [NASReg(model, lam=0.2), DecorrReg(model, layers=["c2"], kappa=0.5),
            SparsityReg(model, layers=["c1"], lam=0.3)]  # c1 tapped twice: nested patches
    wrapped = Regularized(model, regs)
    wrapped.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = wrapped.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False,
                       validation_data=(x, y))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    val_loss = float(loss_fn(y, model(x)))  # before training-mode calls move BatchNorm's statistics
    ce = float(loss_fn(y, model(x, training=True)))
    penalty = (float(regs[0].penalty(x, training=True)) + float(regs[1].penalty())
               + float(regs[2].penalty(x, training=True)))
    assert abs(penalty) > 0.1
    assert hist.history["loss"][0] == pytest.approx(ce + penalty, rel=1e-4)
    assert hist.history["penalty"][0] == pytest.approx(penalty, rel=1e-4)
    assert hist.history["val_loss"][0] == pytest.approx(val_loss, rel=1e-5)
    # and with a learning rate, NASReg lowers the NAS of its layers
    wrapped.compile(optimizer=keras.optimizers.Adam(learning_rate=0.05),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = {k: np.median(v) for k, v in NASMonitor(model).measure(x).items()}
    wrapped.fit(x, y, batch_size=3, epochs=3, verbose=0)
    after = {k: np.median(v) for k, v in NASMonitor(model).measure(x).items()}
    assert all(after[k] < before[k] for k in before), (before, after)


def test_entropy_reference_values_and_large_inputs():
    from nasprobe_keras.regularizers import entropy as k_entropy

    a = np.array([[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0],
                  [1e4, -1e4, 9999.0, 0.0], [-1e4, -1e4, -1e4, -1e4]])
    h64 = k_entropy(ops.convert_to_tensor(a), -1)
    # float64 stays float64 end to end (the clamp included): the backend tensor's own dtype,
    # read through Keras' standardisation, and values equal to numpy float64's.
    assert keras.backend.standardize_dtype(h64.dtype) == "float64"
    np.testing.assert_allclose(ops.convert_to_numpy(h64), entropy(a, -1), rtol=0, atol=1e-12)
    got = ops.convert_to_numpy(k_entropy(ops.convert_to_tensor(a.astype("float32")), -1))
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, entropy(a, -1), atol=1e-6)


def test_filter_correlations_keep_float64():
    from nasprobe_keras.regularizers import filter_correlations as k_corr

    f = np.random.default_rng(3).normal(size=(6, 10))
    f[2] = 0.0  # a zero-norm filter gives 0
    for centring in ("paper", "pearson"):
        c = k_corr(ops.convert_to_tensor(f), centring)
        assert keras.backend.standardize_dtype(c.dtype) == "float64"
        want = filter_correlations(f, centring)
        np.testing.assert_allclose(ops.convert_to_numpy(c), want, rtol=0, atol=1e-12)
    c32 = k_corr(ops.convert_to_tensor(f.astype(np.float32)))
    assert keras.backend.standardize_dtype(c32.dtype) == "float32"


@pytest.mark.parametrize("kind", ["nas", "entropy"])
def test_float64_model_penalty_is_float64(kind):
    """A float64 model's penalty is computed in float64: equal to numpy float64 on the same
    taps (the layer outputs, as Keras computes them) to 1e-12."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((4, 4, 2), dtype="float64")
    h = keras.layers.Conv2D(5, 3, activation="relu", name="c1", dtype="float64")(inp)
    h = keras.layers.Flatten(dtype="float64")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="out", dtype="float64")(h))
    x = np.random.default_rng(2).standard_normal((7, 4, 4, 2)) * 2
    conv = model.get_layer("c1")
    pre = keras.Model(inp, conv.output)  # relu output; the tap is its input
    act, conv.activation = conv.activation, keras.activations.linear
    try:
        tap = ops.convert_to_numpy(pre(x, training=False))
    finally:
        conv.activation = act
    assert tap.dtype == np.float64
    reg = (NASReg if kind == "nas" else SparsityReg)(model, layers=["c1"], lam=0.5)
    penalty = reg.penalty(x)
    assert keras.backend.standardize_dtype(penalty.dtype) == "float64"
    want = numpy_penalty({"c1": tap}, kind, lam=0.5)
    assert abs(float(ops.convert_to_numpy(penalty)) - want) <= 1e-12 * max(1.0, abs(want))
