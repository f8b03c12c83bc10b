"""Training-time regularisers of the papers for PyTorch (docs/measures.md, "Regularisers").

=============  =====================================  ==========================================
NASReg         ``L = -Σ_i λ_i Σ_k mean_n ρ_{n,k}^i``  2021 paper Eq. 7; ``λ_i = 1/r_i`` ("auto")
SparsityReg    ``L = -Σ_i λ_i Σ_k mean_n H_{n,k}^i``  2020 paper Eq. 5; ``λ_i = 0.001``
DecorrReg      ``L =  Σ_i κ_i Σ_{d<e} c_de^i``        2020 paper Eq. 6-7; weights only
=============  =====================================  ==========================================

``ρ`` is the perplexity (in ``[1, D]``) and ``H`` the entropy (nats) of the softmax over the
``D`` channels of layer ``i``'s tap at location ``k`` (``r_i`` locations); the batch term is
the mean over the ``N`` samples of the last forward pass. ``c`` is the filter correlation
matrix of the layer's weights (:func:`filter_correlations`).

Usage::

    reg = NASReg(model) + DecorrReg(model, kappa=0.1)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y) + reg.penalty()
        loss.backward()

Activation regularisers hook the model when constructed (see :mod:`nasprobe_torch.taps` for
the tap rules, in-place activations, autocast and DDP); call :meth:`remove` to unhook.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nasprobe.contract import per_layer
from nasprobe_torch.taps import TapCapture, select_layers, unwrap

__all__ = ["NASReg", "SparsityReg", "DecorrReg", "NASMonitor", "RegSum", "filter_correlations"]


class _Reg:
    """Base: ``penalty()`` and addition of regularisers."""

    def penalty(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self) -> torch.Tensor:
        return self.penalty()

    def __add__(self, other: _Reg) -> RegSum:
        return RegSum([self, other])

    def remove(self) -> None:
        """Remove hooks (nothing for weight-only regularisers)."""


class RegSum(_Reg):
    """Several regularisers whose penalties add up (what ``reg_a + reg_b`` returns)."""

    def __init__(self, regs):
        self.regs = []
        for r in regs:
            self.regs.extend(r.regs if isinstance(r, RegSum) else [r])

    def penalty(self) -> torch.Tensor:
        """Sum of the members' penalties (scalar tensor)."""
        return sum((r.penalty() for r in self.regs[1:]), self.regs[0].penalty())

    def remove(self) -> None:
        """Remove every member's hooks."""
        for r in self.regs:
            r.remove()


class NASMonitor:
    """NAS maps of a model's taps, without a penalty (detached; cheap).

    The same methods as the Keras adapter's ``NASMonitor``: :meth:`last_nas` reads the maps of
    the last forward pass (here: any forward pass of the model, the hooks stay until
    :meth:`remove`); :meth:`measure` runs probe inputs and returns their maps.

    Args:
        model: the model (DDP unwrapped).
        layers: module paths, a regex, or ``None`` (every Conv/Linear but the last).
        tap: ``"linear"`` or ``"preact"``.
        exclude_bias: subtract the bias from the tap.

    Attributes:
        layers: the tapped module paths (str).
    """

    def __init__(self, model: nn.Module, layers=None, tap: str = "linear", exclude_bias: bool = False):
        self.model = unwrap(model)
        self._capture = TapCapture(model, layers, tap, exclude_bias, differentiable=False)
        self.layers = self._capture.layers

    def last_nas(self) -> dict[str, torch.Tensor]:
        """``{layer: NAS map}``, each ``(N, *locations)`` float32 in ``[0, 1 - 1/D]``, detached."""
        return self._capture.last_nas()

    def measure(self, x, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """NAS maps of probe inputs ``x`` ``(P, ...)`` (tensor or array, moved to the model's
        device and dtype), ``batch_size`` per forward pass (default all), in eval mode under
        ``no_grad`` (the model's train mode is restored).

        Returns:
            ``{layer: NAS maps (P, *locations)}``, float32 numpy.
        """
        x = torch.as_tensor(x)
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        if param is not None and x.is_floating_point():
            x = x.to(param.dtype)
        batch_size = batch_size or max(len(x), 1)
        maps: dict[str, list] = {name: [] for name in self.layers}
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                for i in range(0, len(x), batch_size):
                    self.model(x[i:i + batch_size].to(device))
                    for name, m in self.last_nas().items():
                        maps[name].append(m.cpu().numpy())
        finally:
            self.model.train(was_training)
        return {name: np.concatenate(v).astype(np.float32) for name, v in maps.items()}

    def remove(self) -> None:
        """Remove the hooks."""
        self._capture.remove()


class _ActivationReg(_Reg):
    """Common part of NASReg and SparsityReg: hooks, per-layer λ, batch mean."""

    def __init__(self, model, layers, lam, tap, exclude_bias):
        self._capture = TapCapture(model, layers, tap, exclude_bias, differentiable=True)
        self.layers = self._capture.layers
        self.lam = per_layer(lam, self.layers, "lam")

    def _term(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def lambdas(self) -> dict[str, float]:
        """The λ_i in use; ``"auto"`` resolves to ``1/r_i`` from the last forward pass."""
        out = {}
        for name in self.layers:
            lam = self.lam[name]
            out[name] = 1.0 / self._capture.record(name).locations if lam == "auto" else float(lam)
        return out

    def penalty(self) -> torch.Tensor:
        """``-Σ_i λ_i Σ_k mean_n f(H_{n,k}^i)`` for the last forward pass; scalar, differentiable."""
        lams = self.lambdas()
        total = None
        for name in self.layers:
            h = self._capture.record(name).h
            term = -lams[name] * self._term(h).reshape(h.shape[0], -1).sum(dim=1).mean()
            total = term if total is None else total + term
        return total

    def last_nas(self) -> dict[str, torch.Tensor]:
        """``{layer: NAS map (N, *locations)}`` of the last forward pass, detached."""
        return self._capture.last_nas()

    def remove(self) -> None:
        """Remove the hooks."""
        self._capture.remove()


class NASReg(_ActivationReg):
    """Perplexity regulariser (2021 paper): rewards dense activations, lowering NAS.

    Args:
        model: the model to hook (``nn.Module``; DDP/DataParallel are unwrapped).
        layers: module paths, a regex (``re.search``), or ``None`` = every Conv/Linear module
            but the last.
        lam: ``"auto"`` (``λ_i = 1/r_i``, ``r_i`` locations of layer ``i``), a float for all
            layers, or ``{layer: float | "auto"}``.
        tap: ``"linear"`` (module output) or ``"preact"`` (input of the next activation).
        exclude_bias: subtract the bias from the tap.
    """

    def __init__(self, model: nn.Module, layers=None, lam="auto", tap: str = "linear",
                 exclude_bias: bool = False):
        super().__init__(model, layers, lam, tap, exclude_bias)

    def _term(self, h):
        return torch.exp(h)


class SparsityReg(_ActivationReg):
    """Entropy regulariser (2020 paper Eq. 5); arguments as :class:`NASReg`, ``lam=0.001``."""

    def __init__(self, model: nn.Module, layers=None, lam=0.001, tap: str = "linear",
                 exclude_bias: bool = False):
        super().__init__(model, layers, lam, tap, exclude_bias)

    def _term(self, h):
        return h


def _filters(module: nn.Module) -> torch.Tensor:
    """The module's weights as ``(D, K)``: one flattened filter per output channel."""
    w = module.weight
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        if module.groups != 1:
            raise ValueError("DecorrReg: grouped ConvTranspose is not supported")
        w = w.transpose(0, 1)  # (in, out, ...) -> (out, in, ...)
    return w.reshape(w.shape[0], -1)


def filter_correlations(f: torch.Tensor, centring: str = "paper") -> torch.Tensor:
    """Differentiable filter correlation matrix ``(D, D)`` of filters ``f`` ``(D, K)``.

    Same definition as :func:`nasprobe.measures.correlation.filter_correlations`: ``"paper"`` centres by
    the layer's mean filter, ``"pearson"`` by each filter's own mean; zero-norm filters give 0.
    Not clipped to ``[-1, 1]`` (clipping would cut gradients); computed in float32 or float64.
    """
    if f.dtype != torch.float64:
        f = f.float()
    if centring == "paper":
        u = f - f.mean(dim=0, keepdim=True)
    elif centring == "pearson":
        u = f - f.mean(dim=1, keepdim=True)
    else:
        raise ValueError(f"centring must be 'paper' or 'pearson', not {centring!r}")
    norm = torch.linalg.vector_norm(u, dim=1)
    nonzero = norm > 0
    safe = torch.where(nonzero, norm, torch.ones_like(norm))
    c = (u @ u.T) / (safe[:, None] * safe[None, :])
    mask = nonzero[:, None] & nonzero[None, :]
    return torch.where(mask, c, torch.zeros_like(c))


class DecorrReg(_Reg):
    """Filter-decorrelation regulariser (2020 paper Eq. 6-7); needs no forward pass.

    Args:
        model: the model (DDP unwrapped).
        layers: module paths, a regex, or ``None`` = every Conv/Linear module but the last.
        kappa: κ for all layers, or ``{layer: float}``.
        centring: ``"paper"`` (mean filter, default) or ``"pearson"``.
        reduction: how each ``c_de`` (``d < e``) enters the sum: ``"signed"`` (the paper),
            ``"abs"`` (``|c_de|``) or ``"square"`` (``c_de²``).
    """

    def __init__(self, model: nn.Module, layers=None, kappa=1.0, centring: str = "paper",
                 reduction: str = "signed"):
        if reduction not in ("signed", "abs", "square"):
            raise ValueError(f"reduction must be 'signed', 'abs' or 'square', not {reduction!r}")
        if centring not in ("paper", "pearson"):
            raise ValueError(f"centring must be 'paper' or 'pearson', not {centring!r}")
        self.model = unwrap(model)
        self.layers = select_layers(self.model, layers)
        self.kappa = per_layer(kappa, self.layers, "kappa")
        self.centring = centring
        self.reduction = reduction
        self._modules = {name: self.model.get_submodule(name) for name in self.layers}

    def correlations(self) -> dict[str, torch.Tensor]:
        """``{layer: c (D, D)}`` of the current weights, detached."""
        return {name: filter_correlations(_filters(m).detach(), self.centring)
                for name, m in self._modules.items()}

    def penalty(self) -> torch.Tensor:
        """``Σ_i κ_i Σ_{d<e} g(c_de^i)`` with ``g`` the reduction; scalar, differentiable."""
        total = None
        for name, module in self._modules.items():
            c = filter_correlations(_filters(module), self.centring)
            i, j = torch.tril_indices(c.shape[0], c.shape[0], offset=-1, device=c.device)
            v = c[i, j]
            if self.reduction == "abs":
                v = v.abs()
            elif self.reduction == "square":
                v = v * v
            term = float(self.kappa[name]) * v.sum()
            total = term if total is None else total + term
        return total
