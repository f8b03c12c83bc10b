"""onnxruntime's blocked channel layout (NCHWc) of CPU tensors, as tap outputs may come in it.

On x86 CPUs onnxruntime computes convolutions with the channels in blocks of ``size`` (16 with
AVX-512, 8 with AVX2): in memory a tensor ``(N, C, H, W)`` is ``(N, Cp / size, H, W, size)``,
``Cp`` being ``C`` rounded up to ``size`` (the lanes past ``C`` are padding). A session
returns such a tensor with the shape ``(N, Cp, H, W)``.
:func:`nasprobe.measures.kernels.nas_map_blocked` takes NAS of it as it is; :func:`unblock`
gives the ordinary layout, for everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Block", "unblock"]


@dataclass(frozen=True)
class Block:
    """A tensor in blocked layout: ``channels`` real ones in blocks of ``size``."""

    channels: int
    size: int

    @property
    def padded(self) -> int:
        """``channels`` rounded up to a whole number of blocks: the tensor's axis 1."""
        return -(-self.channels // self.size) * self.size


def unblock(a: np.ndarray, block: Block) -> np.ndarray:
    """The ``(N, C, *spatial)`` tensor of a blocked session output ``a`` (``(N, Cp, *spatial)``
    in memory as ``(N, Cp / size, *spatial, size)``), float32, C-contiguous.

    Raises:
        ValueError: ``a``'s axis 1 is not ``block.padded``.
    """
    a = np.asarray(a)
    if a.ndim < 3 or a.shape[1] != block.padded:
        raise ValueError(f"a blocked tensor of {block.channels} channels in blocks of "
                         f"{block.size} has shape (N, {block.padded}, ...), not {a.shape}")
    n, cp, *spatial = a.shape
    x = np.ascontiguousarray(a).reshape(n, cp // block.size, *spatial, block.size)
    x = np.moveaxis(x, -1, 2).reshape(n, cp, *spatial)
    return np.ascontiguousarray(x[:, :block.channels])
