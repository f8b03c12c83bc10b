"""nasprobe: Neural Activation Sparsity of saved training checkpoints.

Public API: :func:`probe` (checkpoints → store), :func:`open_store` (store → xarray.DataTree),
and the pure measures :func:`nas`, :func:`entropy`, :func:`perplexity`.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("nasprobe")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

from .measures import entropy, nas, perplexity  # noqa: E402
from .store import open_store  # noqa: E402
from .probe import probe  # noqa: E402
from . import analysis  # noqa: E402,F401  (registers the ``.nas`` accessor)

__all__ = ["probe", "open_store", "nas", "entropy", "perplexity", "__version__"]
