"""The PyTorch adapter as the core's registry sees it (entry point ``nasprobe.adapters:torch``).

Importing this module imports neither torch nor the rest of the adapter.
"""

from __future__ import annotations

from pathlib import Path

from nasprobe.contract import BaseAdapter, Checkpoint, CheckpointSource, SourceOptions

__all__ = ["TorchAdapter", "adapter"]


class TorchAdapter(BaseAdapter):
    """PyTorch checkpoints: state dicts, Lightning ``.ckpt``, safetensors, TorchScript, ``.pt2``."""

    name = "torch"
    extensions = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pt2", ".tar")
    extra = "torch"
    requires = ("torch", "onnxscript")
    input_layout = "C,H,W"

    def make_source(self, checkpoints: list[Checkpoint], options: SourceOptions
                    ) -> CheckpointSource:
        """A :class:`~nasprobe_torch.source.TorchSource` (``options.input_shape`` is C,H,W)."""
        from .source import make_source

        return make_source(checkpoints, options)

    def train_demo(self, folder: Path, *, epochs: int, seed: int) -> dict:
        """VanillaNet-s trained on 150 of scikit-learn's digits (16x16) with Adam until it
        overfits; see :func:`nasprobe_torch.digits.train_digits`."""
        from .digits import train_digits

        return {**train_digits(folder, epochs=epochs, seed=seed), "input_shape": (1, 16, 16)}


#: The instance the entry point names.
adapter = TorchAdapter()
