"""Forward-hook capture of a PyTorch model's taps, reduced to entropy maps on the fly.

A *tap* (docs/measures.md) is a layer's pre-activation tensor with a channel axis of size ``D``:

* ``tap="linear"``: the output of the ``nn.Conv*``/``nn.ConvTranspose*``/``nn.Linear`` module
  itself (bias included; ``exclude_bias=True`` subtracts it), captured by a forward hook.
* ``tap="preact"``: the input of the nonlinearity that follows the layer (after BatchNorm
  where there is one). **Rule:** the first activation module (a module from
  ``torch.nn.modules.activation``, e.g. ``nn.ReLU``, ``nn.GELU``) that comes after the layer
  in ``model.named_modules()`` order and before the next Conv/Linear module. A layer with no
  such module (functional ``F.relu`` in ``forward``) is an error at construction; an activation
  module that is shared (called without its layer having run just before) is an error at
  forward time.

The channel axis is ``dim=1`` for convolutions (NCHW, any number of spatial dims) and the last
dim for ``nn.Linear`` on ``(N, ..., D)``. Every other non-batch axis is a location.

The entropy map is computed **inside the hook**, from a float32 copy of the tap (float64
stays float64), so in-place activations (``nn.ReLU(inplace=True)``) that later overwrite the
module's output neither change the captured values nor break autograd; only the
``(N, *locations)`` entropy map (D times smaller than the tap) is kept. Autocast is disabled
for that computation (float16/bfloat16 taps are measured in float32).
``DistributedDataParallel``/``DataParallel`` wrappers are unwrapped (``.module``) so module
paths are those of the bare model.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["entropy", "unwrap", "select_layers", "TapCapture", "LINEAR_TYPES"]

#: Module types whose outputs are taps (the linear operators of docs/measures.md).
LINEAR_TYPES = (nn.modules.conv._ConvNd, nn.Linear)

_ACTIVATION_TYPES = tuple(
    obj for name, obj in vars(nn.modules.activation).items()
    if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == nn.modules.activation.__name__
    and obj is not nn.MultiheadAttention
)


def entropy(a: torch.Tensor, axis: int = 1, *, dim: int | None = None) -> torch.Tensor:
    """Softmax entropy ``H`` (nats) of ``a`` along ``axis``; differentiable, stable for |a| ~ 1e4.

    ``H = logsumexp(z) - Σ softmax(z)·z`` with ``z = a - max(a)`` (the shift changes nothing
    mathematically and keeps float32 accurate for large inputs).

    Args:
        a: any float tensor with the channel axis ``axis`` of size ``D``.
        axis: the channel axis; default 1, where PyTorch keeps channels (``(N, C, H, W)``, and
            ``(N, D)`` for ``nn.Linear``). The same argument as ``nasprobe.entropy`` and the
            Keras and JAX adapters' ``entropy``.
        dim: the old name of ``axis`` (deprecated).

    Returns:
        ``a``'s shape without ``axis``, values in ``[0, ln D]``, same dtype as ``a``.
    """
    if dim is not None:
        warnings.warn("entropy(a, dim=...) is deprecated: use axis=", DeprecationWarning,
                      stacklevel=2)
        axis = dim
    dim = axis
    z = a - a.detach().amax(dim=dim, keepdim=True)
    lse = torch.logsumexp(z, dim=dim, keepdim=True)
    p = torch.exp(z - lse)
    h = lse.squeeze(dim) - (p * z).sum(dim=dim)
    return torch.clamp_min(h, 0.0)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside ``DistributedDataParallel``/``DataParallel`` (``.module``), else ``model``."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def select_layers(model: nn.Module, layers=None, types=LINEAR_TYPES) -> list[str]:
    """Module paths of the tapped layers, in ``named_modules()`` order.

    Args:
        model: the (unwrapped) model.
        layers: ``None`` — every Conv/Linear module but the last one (the prediction layer);
            a list of module paths (each must exist); or a regex string matched with
            ``re.search`` against the paths of the Conv/Linear modules (all of them, the last
            included).
        types: module types that count as layers.

    Raises:
        ValueError: an unknown path, a path that is not a Conv/Linear module, or no match.
    """
    modules = dict(model.named_modules())
    linear = [name for name, m in modules.items() if isinstance(m, types)]
    if layers is None:
        chosen = linear[:-1]
    elif isinstance(layers, str):
        chosen = [name for name in linear if re.search(layers, name)]
    else:
        chosen = list(layers)
        for name in chosen:
            if name not in modules:
                raise ValueError(f"no module {name!r} in the model (have {sorted(modules)[:20]}...)")
            if not isinstance(modules[name], types):
                raise ValueError(f"module {name!r} is a {type(modules[name]).__name__}, not Conv/Linear")
    if not chosen:
        raise ValueError(f"no layer selected by {layers!r} among {linear}")
    return chosen


def _following_activation(model: nn.Module, layer: str) -> str:
    """Path of the activation module that follows ``layer`` (see the module docstring's rule)."""
    names = [(n, m) for n, m in model.named_modules() if n]
    idx = [n for n, _ in names].index(layer)
    for name, mod in names[idx + 1:]:
        if isinstance(mod, LINEAR_TYPES):
            break
        if isinstance(mod, _ACTIVATION_TYPES):
            return name
    raise ValueError(
        f"tap='preact': no activation module follows {layer!r} before the next Conv/Linear "
        "module (functional activations such as F.relu cannot be hooked); use tap='linear'")


@dataclass
class _Record:
    """The last capture of one layer: entropy map ``h`` (N, *locations) and channel count ``d``."""
    h: torch.Tensor
    d: int

    @property
    def locations(self) -> int:
        """Number of locations ``r`` (product of the non-batch, non-channel dims)."""
        return math.prod(self.h.shape[1:])

    def nas(self) -> torch.Tensor:
        """NAS map ``1 - exp(H)/D`` (N, *locations), detached."""
        return 1.0 - torch.exp(self.h.detach()) / self.d


class TapCapture:
    """Hooks that keep, for each layer, the entropy map of its tap in the last forward pass.

    Args:
        model: a ``nn.Module`` (DDP/DataParallel are unwrapped).
        layers: see :func:`select_layers`.
        tap: ``"linear"`` or ``"preact"`` (module docstring).
        exclude_bias: subtract the layer's bias from the tap (only meaningful for ``"linear"``).
        differentiable: keep the autograd graph (regularisers) or detach (monitoring).

    Attributes:
        layers: the tapped layers' module paths (str), in ``named_modules()`` order.

    After a forward pass, ``records[layer]`` is a :class:`_Record` and :meth:`last_nas` gives
    the NAS maps. Layers called several times per forward pass keep the last call. Use
    :meth:`remove` to detach the hooks.
    """

    def __init__(self, model: nn.Module, layers=None, tap: str = "linear",
                 exclude_bias: bool = False, differentiable: bool = True):
        if tap not in ("linear", "preact"):
            raise ValueError(f"tap must be 'linear' or 'preact', not {tap!r}")
        self.model = unwrap(model)
        self.layers = select_layers(self.model, layers)
        self.tap = tap
        self.exclude_bias = exclude_bias
        self.differentiable = differentiable
        self.records: dict[str, _Record] = {}
        self._handles = []
        self._armed: dict[str, bool] = {}
        modules = dict(self.model.named_modules())
        targets: dict[str, str] = {}
        for name in self.layers:
            layer = modules[name]
            dim = 1 if isinstance(layer, nn.modules.conv._ConvNd) else -1
            if tap == "linear":
                self._handles.append(layer.register_forward_hook(self._output_hook(name, layer, dim)))
                continue
            act = _following_activation(self.model, name)
            if act in targets:
                raise ValueError(f"tap='preact': layers {targets[act]!r} and {name!r} are both "
                                 f"followed by activation {act!r}; the tap is ambiguous")
            targets[act] = name
            self._armed[name] = False
            self._handles.append(layer.register_forward_hook(self._arm_hook(name)))
            self._handles.append(modules[act].register_forward_pre_hook(
                self._input_hook(name, act, layer, dim)))

    # -- hooks -------------------------------------------------------------------------------
    def _store(self, name: str, t: torch.Tensor, layer: nn.Module, dim: int) -> None:
        keep_graph = self.differentiable and torch.is_grad_enabled() and t.requires_grad
        with torch.autocast(device_type=t.device.type, enabled=False):
            dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
            a = t.to(dtype, copy=True) if keep_graph else t.detach().to(dtype)
            if self.exclude_bias and getattr(layer, "bias", None) is not None:
                b = layer.bias if keep_graph else layer.bias.detach()
                shape = [1] * a.dim()
                shape[dim] = -1
                a = a - b.to(dtype).reshape(shape)
            dim_ = dim % a.dim()
            h = entropy(a, axis=dim_)
        self.records[name] = _Record(h, a.shape[dim_])

    def _output_hook(self, name, layer, dim):
        def hook(module, inputs, output):
            self._store(name, output, layer, dim)
        return hook

    def _arm_hook(self, name):
        def hook(module, inputs, output):
            self._armed[name] = True
        return hook

    def _input_hook(self, name, act, layer, dim):
        def hook(module, inputs):
            if not self._armed[name]:
                raise RuntimeError(
                    f"tap='preact': activation {act!r} ran without {name!r} running just before "
                    "it (a shared activation module?); the tap is ambiguous, use tap='linear'")
            self._armed[name] = False
            self._store(name, inputs[0], layer, dim)
        return hook

    # -- access ------------------------------------------------------------------------------
    def record(self, name: str) -> _Record:
        """The last capture of ``name``; raises ``RuntimeError`` before the first forward pass."""
        try:
            return self.records[name]
        except KeyError:
            raise RuntimeError(f"layer {name!r} has not run yet: call the model first") from None

    def last_nas(self) -> dict[str, torch.Tensor]:
        """``{layer: NAS map (N, *locations)}`` of the last forward pass, detached, float32."""
        return {name: self.record(name).nas() for name in self.layers}

    def remove(self) -> None:
        """Remove all hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []
