"""A tiny Hugging Face run for the adapter contract test (tests/core/test_adapters.py)."""

from __future__ import annotations

from pathlib import Path

from nasprobe.contract import SourceOptions


def tiny_run(folder: Path) -> SourceOptions:
    """Two Trainer checkpoints (``checkpoint-1/``, ``checkpoint-2/``) of a tiny GPT-2."""
    from tests.hf.conftest import save_trainer_run

    save_trainer_run(folder, "gpt2", steps=(1, 2))
    return SourceOptions()
