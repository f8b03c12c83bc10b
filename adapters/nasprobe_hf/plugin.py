"""The Hugging Face adapter as the core's registry sees it (entry point ``nasprobe.adapters:hf``).

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nasprobe.contract import BaseAdapter, Checkpoint, CheckpointSource, SourceOptions

from .folders import is_final_model, is_pretrained_folder, is_weight_file

__all__ = ["HFAdapter", "adapter"]


class HFAdapter(BaseAdapter):
    """transformers checkpoints: ``save_pretrained`` folders (``config.json`` + safetensors),
    such as the ``checkpoint-N/`` folders the ``Trainer`` writes."""

    name = "hf"
    extensions = (".safetensors",)  # its weights; the checkpoint itself is their folder
    extra = "hf"
    requires = ("torch", "onnxscript", "transformers", "safetensors")

    def claims(self, path: Path) -> bool:
        """A ``save_pretrained`` folder, or its ``model.safetensors`` (its shard index, or a
        pickled ``pytorch_model.bin``) beside a ``config.json``."""
        path = Path(path)
        return is_pretrained_folder(path) if path.is_dir() else is_weight_file(path)

    def companions(self, files: Sequence[Path]) -> set[Path]:
        """The final model a ``Trainer`` saves beside its ``checkpoint-N/`` folders: left out
        (it has no step; the last checkpoint usually holds the same weights)."""
        return {Path(f) for f in files if is_final_model(Path(f))}

    def make_source(self, checkpoints: list[Checkpoint], options: SourceOptions
                    ) -> CheckpointSource:
        """A :class:`~nasprobe_hf.source.HFSource` (only ``options.trust_pickle`` applies)."""
        from .source import make_source

        return make_source(checkpoints, options)


#: The instance the entry point names.
adapter = HFAdapter()
