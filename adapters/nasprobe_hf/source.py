"""``HFSource``: one run of ``save_pretrained`` folders as an ONNX architecture plus per-step weights."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import transformers

from nasprobe.contract import Checkpoint, SourceOptions, TokenizedText
from nasprobe.errors import CheckpointError, NasprobeError
from nasprobe_torch.source import ExportedSource

from .export import ModelInput, export_pretrained
from .folders import checkpoint_folder
from .loading import load_model
from .tokens import fingerprint, tokenize

__all__ = ["HFSource", "make_source"]


class HFSource(ExportedSource):
    """The checkpoints of one transformers run as a ``nasprobe.contract.CheckpointSource``.

    ``architecture()`` loads the first checkpoint with transformers and exports it once;
    ``weights(ckpt)`` loads each checkpoint the same way and returns the graph's initializers.
    Checkpoint numbers are training steps: :attr:`provenance` says so (``epoch_unit``), and
    names the model class, transformers' version and, for a vision transformer, its patch grid.

    ``tokenize(lines, max_length)`` (the contract's optional hook,
    ``nasprobe.contract.Tokenizing``) tokenises a text probe with the first checkpoint's own
    tokenizer (:mod:`nasprobe_hf.tokens`); from then on :meth:`weights` refuses a checkpoint
    whose tokenizer files differ from the first's.
    """

    framework = "hf"

    def __init__(self, checkpoints: Sequence[Checkpoint], trust_pickle: bool = False):
        """See :func:`make_source`."""
        if not checkpoints:
            raise NasprobeError("no checkpoints given")
        self.checkpoints = list(checkpoints)
        self.trust_pickle = bool(trust_pickle)
        self._exported = None
        self._input: ModelInput | None = None
        self._tokenizer: str | None = None  # fingerprint of the files that tokenised the probe
        self.provenance: dict = {"epoch_unit": "step",
                                 "transformers": transformers.__version__}

    def _build(self):
        first = checkpoint_folder(self.checkpoints[0].path)
        model = load_model(first, self.trust_pickle)
        try:
            exported, spec = export_pretrained(model, str(first))
        except ValueError as exc:
            raise CheckpointError(first, str(exc)) from None
        self._input = spec
        self.provenance.update(model_class=type(model).__name__,
                               model_type=str(model.config.model_type),
                               input=spec.name)
        if spec.patch_grid is not None:
            self.provenance["patch_grid"] = list(spec.patch_grid)
        return exported

    def tokenize(self, lines: Sequence[str], max_length: int | None) -> TokenizedText:
        """Tokenise a text probe with the first checkpoint's tokenizer (see
        :func:`nasprobe_hf.tokens.tokenize`; ``ValueError`` says what is wrong)."""
        self.exported()
        first = checkpoint_folder(self.checkpoints[0].path)
        out = tokenize(first, lines, max_length, self._input)
        self._tokenizer = fingerprint(first)
        self.provenance["tokenizer"] = out.tokenizer
        return out

    def weights(self, checkpoint: Checkpoint) -> dict[str, np.ndarray]:
        """The graph's weight initializers for one checkpoint (loaded by ``from_pretrained``).

        Returns:
            initializer name → float32 array in the graph's layout (an ``nn.Linear`` weight
            transposed to ``(D_in, D_out)``, a ``Conv1D`` weight as stored, ``(D_in, D_out)``).

        Raises:
            CheckpointError: see :func:`nasprobe_hf.loading.load_model`; a checkpoint of
                another architecture than the run's first; after :meth:`tokenize`, one whose
                tokenizer files differ from the first checkpoint's.
        """
        exported = self.exported()
        folder = checkpoint_folder(checkpoint.path)
        if self._tokenizer is not None and fingerprint(folder) != self._tokenizer:
            raise CheckpointError(folder, "its tokenizer files differ from those of the run's "
                                  "first checkpoint, whose tokenizer tokenised the probe text; "
                                  "probe it as a run of its own (or --on-error skip)")
        state = load_model(folder, self.trust_pickle).state_dict()
        out: dict[str, np.ndarray] = {}
        for name, (key, perm) in exported.layout.items():
            if key not in state:
                raise CheckpointError(folder, f"tensor {key!r} is missing (another "
                                      "architecture than the run's first checkpoint?)")
            tensor = state[key].detach()
            array = (tensor.to(torch.float32) if tensor.is_floating_point() else tensor).numpy()
            out[name] = np.ascontiguousarray(array if perm is None else array.transpose(perm))
        return out


def make_source(checkpoints: Sequence[Checkpoint], options: SourceOptions = SourceOptions()
                ) -> HFSource:
    """The :class:`HFSource` of one run's checkpoint folders (sorted by step).

    Args:
        checkpoints: ``save_pretrained`` folders (or a weight file in each).
        options: only ``trust_pickle`` is used (``--model`` and ``--input-shape`` are not:
            ``config.json`` gives both).
    """
    if options.model is not None:
        raise NasprobeError("--model does not apply to Hugging Face folders: config.json "
                            "names the architecture")
    return HFSource(checkpoints, trust_pickle=options.trust_pickle)
