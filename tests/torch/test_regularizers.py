"""nasprobe_torch.regularizers: values against numpy (nasprobe.measures.nas/correlation), gradients
against finite differences (float64), in-place ReLU, autocast, DDP, and short trainings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasprobe.measures.correlation import filter_correlations, lower_triangle
from nasprobe.measures.nas import entropy, nas, perplexity
from nasprobe_torch.regularizers import DecorrReg, NASMonitor, NASReg, SparsityReg

LAYERS = ["0", "3", "7"]  # conv, conv, hidden linear; "9" is the prediction layer


def make_net(inplace=False, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=inplace),   # 0 1 2
        nn.Conv2d(4, 5, 3), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),     # 3 4 5
        nn.Flatten(), nn.Linear(5 * 2 * 2, 6), nn.Tanh(),                  # 6 7 8
        nn.Linear(6, 3),                                                   # 9
    )
    return net.to(dtype)


def reference_taps(net, tap):
    """Hooks that clone the tap tensors of LAYERS (module outputs or activation inputs)."""
    store, handles = {}, []
    follow = {"0": "2", "3": "4", "7": "8"}
    for name in LAYERS:
        if tap == "linear":
            def hook(m, i, o, name=name):
                store[name] = o.detach().clone()
            handles.append(net.get_submodule(name).register_forward_hook(hook))
        else:
            def pre(m, i, name=name):
                store[name] = i[0].detach().clone()
            handles.append(net.get_submodule(follow[name]).register_forward_pre_hook(pre))
    return store, handles


def axis_of(name):
    return -1 if name == "7" else 1


def numpy_penalty(taps, kind, lam=None):
    """docs/measures.md directly: -Σ_i λ_i Σ_k mean_n f(T_i[n, :, k])."""
    total = 0.0
    for name, t in taps.items():
        a = t.double().numpy()
        f = perplexity(a, axis_of(name)) if kind == "nas" else entropy(a, axis_of(name))
        f = f.reshape(f.shape[0], -1)
        lam_i = 1.0 / f.shape[1] if lam is None else lam
        total += -lam_i * f.sum(axis=1).mean()
    return total


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(1)
    return torch.randn(7, 1, 8, 8, generator=g) * 3


@pytest.mark.parametrize("tap", ["linear", "preact"])
def test_nasreg_value_and_last_nas(x, tap):
    net = make_net()
    net.train()
    reg = NASReg(net, tap=tap)
    assert reg.layers == LAYERS
    store, _ = reference_taps(net, tap)
    net(x)
    p = reg.penalty()
    assert p.shape == () and p.requires_grad
    assert p.item() == pytest.approx(numpy_penalty(store, "nas"), rel=1e-5)
    for name, m in reg.last_nas().items():
        assert not m.requires_grad
        np.testing.assert_allclose(m.numpy(), nas(store[name].double().numpy(), axis_of(name)),
                                   atol=1e-5)
    assert reg.last_nas()["0"].shape == (7, 6, 6) and reg.last_nas()["7"].shape == (7,)


def test_preact_differs_from_linear_with_batchnorm(x):
    net = make_net()
    lin, pre = NASReg(net, layers=["0"]), NASReg(net, layers=["0"], tap="preact")
    net(x)
    assert abs(lin.penalty().item() - pre.penalty().item()) > 1e-3


def test_sparsityreg_value_and_lambda(x):
    net = make_net()
    reg = SparsityReg(net, layers="^[03]$")
    assert reg.layers == ["0", "3"]
    store, _ = reference_taps(net, "linear")
    net(x)
    store = {k: store[k] for k in reg.layers}
    assert reg.penalty().item() == pytest.approx(numpy_penalty(store, "entropy", lam=0.001), rel=1e-5)


def test_exclude_bias(x):
    net = make_net()
    reg = NASReg(net, layers=["3"], exclude_bias=True, lam=0.5)
    store, _ = reference_taps(net, "linear")
    net(x)
    b = net[3].bias.detach().reshape(1, -1, 1, 1)
    assert reg.penalty().item() == pytest.approx(
        numpy_penalty({"3": store["3"] - b}, "nas", lam=0.5), rel=1e-5)


@pytest.mark.parametrize("tap", ["linear", "preact"])
def test_inplace_relu_same_penalty_and_gradient(x, tap):
    results = []
    for inplace in (False, True):
        net = make_net(inplace=inplace)
        store, _ = reference_taps(net, tap)
        reg = NASReg(net, tap=tap) + SparsityReg(net, lam=0.3, tap=tap)
        out = net(x)
        p = reg.penalty()
        ref = numpy_penalty(store, "nas") + numpy_penalty(store, "entropy", lam=0.3)
        assert p.item() == pytest.approx(ref, rel=1e-5)
        (p + out.sum()).backward()
        results.append((p.item(), [q.grad.clone() for q in net.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1)


class _PenaltyOf(nn.Module):
    """forward(x) = reg.penalty() after net(x): lets functional_call swap weights for gradcheck."""

    def __init__(self, net, reg):
        super().__init__()
        self.net, self.reg = net, reg

    def forward(self, x):
        self.net(x)
        return self.reg.penalty()


@pytest.mark.parametrize("make_reg", [
    lambda n: NASReg(n, tap="preact"),
    lambda n: NASReg(n, exclude_bias=True),
    lambda n: SparsityReg(n, lam=0.1),
    lambda n: DecorrReg(n, kappa={"0": 1.0, "3": 0.5, "7": 2.0}),
    lambda n: DecorrReg(n, centring="pearson", reduction="square"),
    lambda n: DecorrReg(n, reduction="abs"),
])
def test_gradients_match_finite_differences(make_reg):
    net = make_net(dtype=torch.float64).eval()  # BatchNorm in eval: the function is per-sample
    wrapper = _PenaltyOf(net, make_reg(net))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w0 = net[0].weight.detach().clone().requires_grad_(True)
    w7 = net[7].weight.detach().clone().requires_grad_(True)

    def f(x, w0, w7):
        return torch.func.functional_call(wrapper, {"net.0.weight": w0, "net.7.weight": w7}, (x,))

    assert torch.autograd.gradcheck(f, (x, w0, w7), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_decorr_value():
    net = make_net()
    for centring in ("paper", "pearson"):
        for reduction, g in (("signed", lambda v: v), ("abs", np.abs), ("square", np.square)):
            reg = DecorrReg(net, kappa=0.7, centring=centring, reduction=reduction)
            ref = sum(0.7 * g(lower_triangle(filter_correlations(
                net.get_submodule(n).weight.detach().numpy(), centring))).sum() for n in LAYERS)
            assert reg.penalty().item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    for name, c in reg.correlations().items():
        np.testing.assert_allclose(
            c.numpy(), filter_correlations(net.get_submodule(name).weight.detach().numpy(), "pearson"),
            atol=1e-6)


def test_autocast_computes_in_float32(x):
    net = make_net()
    reg = NASReg(net)
    store, _ = reference_taps(net, "linear")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
    assert store["0"].dtype == torch.bfloat16
    p = reg.penalty()
    assert p.dtype == torch.float32
    assert p.item() == pytest.approx(numpy_penalty({k: v.float() for k, v in store.items()}, "nas"),
                                     rel=1e-5)


def test_ddp_is_unwrapped(x, tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        net = make_net()
        ddp = nn.parallel.DistributedDataParallel(net)
        reg = NASReg(ddp, layers=["0", "3"])
        assert reg.layers == ["0", "3"]
        store, _ = reference_taps(net, "linear")
        ddp(x)
        ref = numpy_penalty({k: store[k] for k in ("0", "3")}, "nas")
        assert reg.penalty().item() == pytest.approx(ref, rel=1e-5)
    finally:
        dist.destroy_process_group()


def test_monitor_and_errors(x):
    net = make_net()
    mon = NASMonitor(net, layers=["3"], tap="preact")
    with pytest.raises(RuntimeError, match="has not run"):
        mon.last_nas()
    store, _ = reference_taps(net, "preact")
    with torch.no_grad():
        net(x)
    np.testing.assert_allclose(mon.last_nas()["3"].numpy(), nas(store["3"].numpy(), 1), atol=1e-6)
    mon.remove()
    with pytest.raises(ValueError, match="not Conv/Linear"):
        NASReg(net, layers=["1"])
    with pytest.raises(ValueError, match="no module"):
        NASReg(net, layers=["fc"])

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    with pytest.raises(ValueError, match="no activation module follows"):
        NASReg(Functional(), tap="preact")

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b, self.c = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.c(self.act(self.b(self.act(self.a(x)))))

    reg = NASReg(Shared(), layers=["a"], tap="preact")
    with pytest.raises(RuntimeError, match="ambiguous"):
        reg._capture.model(torch.zeros(2, 3))


# -- short trainings on sklearn digits -------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target)


def _train(digits, make_reg, steps=60, seed=0):
    x, y = digits
    net = make_net(seed=seed)
    reg = make_reg(net) if make_reg else None
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, 1500, (64,), generator=g)
        loss = F.cross_entropy(net(x[idx]), y[idx] % 3)
        if reg is not None:
            loss = loss + reg.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, reg


def test_nasreg_training_lowers_median_nas(digits):
    medians = []
    for make_reg in (None, lambda n: NASReg(n, lam={name: 20.0 for name in LAYERS})):
        net, reg = _train(digits, make_reg)
        if reg is not None:
            reg.remove()
        mon = NASMonitor(net, layers=LAYERS)
        net.eval()
        with torch.no_grad():
            net(digits[0][1500:])
        medians.append({k: float(v.median()) for k, v in mon.last_nas().items()})
    for name in LAYERS:
        assert medians[1][name] < medians[0][name], (name, medians)


def test_decorrreg_training_lowers_mean_abs_correlation(digits):
    means = []
    for make_reg in (None, lambda n: DecorrReg(n, layers=["3"], kappa=1.0, reduction="square")):
        net, _ = _train(digits, make_reg)
        c = filter_correlations(net[3].weight.detach().numpy())
        means.append(np.abs(lower_triangle(c)).mean())
    assert means[1] < means[0], means


def test_entropy_reference_values_and_large_inputs():
    from nasprobe_torch.taps import entropy as t_entropy

    rows = [[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0], [0.5, -1.0, 2.0, 3.0]]
    a = np.array(rows)
    h64 = t_entropy(torch.tensor(a), 1)
    assert h64.dtype == torch.float64  # the clamp included
    np.testing.assert_allclose(h64.numpy(), entropy(a, 1), rtol=0, atol=1e-12)
    big = torch.tensor([[1e4, -1e4, 9999.0, 0.0], [-1e4, -1e4, -1e4, -1e4]], requires_grad=True)
    h = t_entropy(big, 1)
    h.sum().backward()
    assert torch.isfinite(h).all() and torch.isfinite(big.grad).all()
    np.testing.assert_allclose(h.detach().numpy(), entropy(big.detach().double().numpy(), 1), atol=1e-6)


def test_filter_correlations_keep_float64():
    from nasprobe_torch.regularizers import filter_correlations as t_corr

    f = np.random.default_rng(3).normal(size=(6, 10))
    for centring in ("paper", "pearson"):
        c = t_corr(torch.tensor(f), centring)
        assert c.dtype == torch.float64
        np.testing.assert_allclose(c.numpy(), filter_correlations(f, centring), rtol=0, atol=1e-12)
