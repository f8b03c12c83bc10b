"""Probe sets: the images every checkpoint is run on (docs/cli.md, ``--probe PROBE``).

Sources. ``.npy``: one image array, memory-mapped above 16 MiB (read whole below). ``.npz``:
images ``x`` and optional labels ``y`` (``(N,)``, ``(N, 1)`` or one-hot ``(N, K)`` integers);
uncompressed members (``np.savez``) over 16 MiB are memory-mapped, others read whole.
Folder: PNG/JPEG files (hidden ones ignored), sorted by relative path, decoded one batch at a
time; labels by the first rule that applies:
(1) ``labels.csv`` in the folder, rows ``filename,label`` (relative path; optional header):
integers as they are, else the sorted distinct names -> 0..K-1; (2) images all in sub-folders
``CLASS/img.png``: sorted CLASS names -> 0..K-1; (3) images all at the top: no labels.

Model layout, from the ONNX input shape (batch axis first; symbolic dims None or str). Rank 4:
NCHW when dims[1] is 1, 3 or 4 and dims[3] is not, NHWC in the opposite case, else NCHW (the
ONNX convention); ``channels_last`` overrides. Other ranks ("flat", no channel axis): the probe
must have the model's sample shape, except that grayscale ``(N, H, W)`` or single-channel 4-D
probes are flattened for ``(N, H*W)`` and single-channel 4-D ones squeezed for ``(N, H, W)``.

Token models (an integer ONNX input, e.g. transformers' ``input_ids``): the probe is an integer
``.npy`` array or ``.npz`` ``x`` of shape ``(N, T)``, fed unchanged in the model's integer type
(never scaled like uint8 images, never normalised).

Preprocessing of images, in order: layout (transpose NCHW <-> NHWC; add the channel axis of a grayscale
``(N, H, W)`` probe for a 1-channel model); integers to [0, 1] (uint8 / 255, uint16 / 65535,
bool 0/1; other integer types refused); ``(x - mean) / std`` per channel. Arrays are never
resized; folder images are converted to L/RGB/RGBA to match the channels and resized (Pillow,
bilinear) to the model's H x W when ``resize`` is true.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from nasprobe.errors import ProbeSetError

from .arrays import array_source, check_finite, hash_file, is_mapped, load_arrays, token_source
from .layout import Layout, check_labels, model_layout

__all__ = ["ProbeSet", "ProbeSource", "load_probe_set"]

_HASH_TAG = b"nasprobe-probeset-v1\n"


class ProbeSource(Protocol):
    """Where a :class:`ProbeSet` reads its examples from, one slice at a time: an array
    (:class:`~nasprobe.probesets.arrays.ArraySource`), a folder of images
    (:class:`~nasprobe.probesets.folders.FolderSource`) or a tokenised text
    (:class:`~nasprobe.probesets.text.TextSource`)."""

    @property
    def count(self) -> int:
        """Number of examples."""

    @property
    def shape(self) -> tuple[int, ...]:
        """One example's shape in the model's layout (e.g. ``(3, 32, 32)``, ``(T,)``)."""

    def read(self, start: int, stop: int) -> np.ndarray:
        """Examples ``start:stop`` as a new array ``(n, *shape)``: float32 scaled to [0, 1] for
        images (not normalised), token ids in the model's integer type."""


def _vector(path: Path, name: str, value, channels: int) -> np.ndarray:
    """``mean`` or ``std`` as ``(channels,)`` float64; None gives 0 or 1."""
    v = np.atleast_1d(np.asarray(float(name == "std") if value is None else value, np.float64))
    if v.ndim != 1 or len(v) not in (1, channels):
        raise ProbeSetError(path, f"{name} has shape {v.shape}: expected one value or ({channels},)")
    if not np.isfinite(v).all() or (name == "std" and (v <= 0).any()):
        raise ProbeSetError(path, f"{name} {v.tolist()} must be finite (and std > 0)")
    return np.broadcast_to(v, (channels,)).copy()


@dataclass(eq=False)
class ProbeSet:
    """A loaded probe set of ``size`` images from ``path``, read lazily, batch by batch.

    ``labels``: ``(N,)`` int64 class indices or None. ``shape``: per-sample shape in the model's
    ``layout`` ("NCHW", "NHWC", "flat", or "tokens": integer ids ``(T,)``), e.g.
    ``(3, 32, 32)``. ``digest``: the sha256 hex digest of the data (the .npy bytes of ``x`` and
    ``y``, so ``.npy`` and ``.npz`` hash alike; for a folder the sorted relative names, image
    bytes and labels.csv) and of the preprocessing (layout, shape, mean, std); settings that
    give the same arrays (mean None or 0) give the same hash. While a large file is hashed in
    the background (``load_probe_set(background=True)``) it is a ``Future`` of that digest:
    read :attr:`sha256`, which waits for it.
    ``mask``: for a text probe (:mod:`.text`), ``(N, T)`` bool, False on padding.
    ``source``: what the examples are read from (:class:`ProbeSource`); :func:`load_probe_set`
    and :func:`~nasprobe.probesets.text.load_text_probe` make it.
    """

    path: Path
    size: int
    digest: str | Future
    labels: np.ndarray | None
    shape: tuple[int, ...] = ()
    layout: str = "NCHW"
    mask: np.ndarray | None = field(default=None, repr=False)
    source: ProbeSource | None = field(default=None, repr=False)
    _mean: np.ndarray | None = field(default=None, repr=False)  # broadcastable to a batch
    _std: np.ndarray | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        """The probe set's sha256 hex digest (see the class docstring). Waits for a hash still
        running in the background.

        Raises:
            ProbeSetError: the background hash or check found the file unreadable, or an
                image not finite (naming the file and the image).
        """
        if isinstance(self.digest, Future):
            self.digest = self.digest.result()
        return self.digest

    def wait(self) -> None:
        """Wait for the background hash and check of a large ``.npy`` file
        (``load_probe_set(background=True)``); raises what they found (see :attr:`sha256`)."""
        self.sha256  # noqa: B018 (resolving the digest is the wait)

    @property
    def memory_mapped(self) -> bool:
        """Whether the images are read from the file batch by batch (an ``.npy`` file or an
        uncompressed ``.npz`` member over 16 MiB, memory-mapped) rather than held in memory
        whole."""
        return isinstance(getattr(self.source, "array", None), np.memmap)

    def batches(self, batch_size: int, limit: int | None = None
                ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Yield ``(start, x, y)`` over the first ``limit`` images (all when None), in order.

        ``x`` is a new float32 array ``(n, *shape)`` in the model's layout, preprocessed; ``y``
        the ``(n,)`` int64 labels or None; ``n = batch_size`` except in the last batch. Only one
        batch of pixels is in memory at a time.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        stop = self.size if limit is None else max(0, min(int(limit), self.size))
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, stop)
            y = None if self.labels is None else self.labels[start:end]
            yield start, self.read(start, end), y

    def first(self, n: int) -> np.ndarray:
        """The first ``min(n, size)`` images, float32 ``(n, *shape)``, as in :meth:`batches`."""
        return self.read(0, max(0, min(int(n), self.size)))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` (``0 <= start <= stop <= size``), as in :meth:`batches`."""
        x = self.source.read(start, stop)
        if self._mean is not None:
            x -= self._mean
            x /= self._std
        return x


def load_probe_set(path, input_shape: Sequence, *, mean=None, std=None, resize: bool = True,
                   channels_last: bool | None = None, input_dtype=None,
                   background: bool = False) -> ProbeSet:
    """Open a probe set (.npy, .npz or image folder) and fit it to a model input.

    Args:
        path: the source (see the module docstring).
        input_shape: the model's ONNX input shape with the batch axis, e.g. ``(None, 3, 32, 32)``;
            dims may be None or str (symbolic).
        mean, std: one float, or one per channel; ``x = (x - mean) / std`` after scaling
            integers to [0, 1]. None means 0 and 1. Models without a channel axis take one float.
        resize: resize folder images to the model's H x W (arrays are never resized).
        channels_last: force NHWC (True) or NCHW (False) for a 4-D input.
        input_dtype: the model input's numpy dtype (default float32); an integer dtype means
            token ids: an integer ``.npy``/``.npz`` array ``(N, T)`` fed unchanged, no
            ``mean``/``std``.
        background: hash a memory-mapped ``.npy`` of images (over 16 MiB) and check that its
            values are finite on a thread, while the caller goes on (a probe job builds its
            model meanwhile): the set's :attr:`ProbeSet.sha256` (or :meth:`ProbeSet.wait`)
            waits for them and raises what they found. Everything else is checked here.

    Raises:
        ProbeSetError: naming the file and the fault (expected and given shape for misfits).
    """
    path = Path(path)
    tokens = input_dtype is not None and np.dtype(input_dtype).kind in "iu"
    layout = (Layout("flat", tuple(int(d) if isinstance(d, (int, np.integer)) and d > 0 else None
                                   for d in input_shape[1:]))
              if tokens else model_layout(path, input_shape, channels_last))
    h = hashlib.sha256(_HASH_TAG)
    later = False  # the hash and check of a large .npy left to a thread (background)
    if tokens and (mean is not None or std is not None):
        raise ProbeSetError(path, "--mean/--std do not apply to token ids")
    if tokens and (path.is_dir() or path.suffix.lower() not in (".npy", ".npz")):
        raise ProbeSetError(path, "the model takes token ids: give them as an integer .npy "
                                  "array (N, T) or as x in an .npz")
    if path.is_dir():
        from .folders import folder_source  # Pillow is imported only for image folders

        source, labels = folder_source(path, layout, resize, h)
    elif not path.exists():
        raise ProbeSetError(path, "no such probe file or folder")
    elif path.suffix.lower() in (".npy", ".npz"):
        later = background and not tokens and is_mapped(path)
        x, y = load_arrays(path, None if later else h)
        source = (token_source(path, x, layout, np.dtype(input_dtype)) if tokens
                  else array_source(path, x, layout, check=not later))
        labels = None if y is None else check_labels(path, y, len(x))
    else:
        raise ProbeSetError(path, "unsupported probe set: expected .npy, .npz or a folder of images")
    n = source.count
    channels = {"NCHW": source.shape[0], "NHWC": source.shape[-1]}.get(layout.kind, 1)
    mean_v, std_v = (_vector(path, k, v, channels) for k, v in (("mean", mean), ("std", std)))
    settings = {"layout": layout.kind, "shape": list(source.shape), "mean": mean_v.tolist(),
                "std": std_v.tolist()}
    if tokens:
        settings["tokens"] = str(np.dtype(input_dtype))
    if later:
        pool = ThreadPoolExecutor(1, thread_name_prefix="nasprobe-probe-hash")
        digest = pool.submit(_hash_and_check, h, path, x, json.dumps(settings).encode())
        pool.shutdown(wait=False)  # its thread ends with the hash
    else:
        h.update(json.dumps(settings).encode())
        digest = h.hexdigest()
    plain = not mean_v.any() and (std_v == 1).all()
    bshape = {"NCHW": (1, channels, 1, 1), "NHWC": (1, 1, 1, channels)}.get(layout.kind, (1,))
    m32, s32 = (None if plain else v.astype(np.float32).reshape(bshape) for v in (mean_v, std_v))
    return ProbeSet(path=path, size=n, digest=digest, labels=labels, shape=source.shape,
                    layout="tokens" if tokens else layout.kind, source=source, _mean=m32, _std=s32)


def _hash_and_check(h, path: Path, x: np.ndarray, settings: bytes) -> str:
    """The digest of a memory-mapped ``.npy`` (``h`` holds the tag), after checking its images."""
    hash_file(h, "x", path)
    h.update(settings)
    check_finite(path, x)
    return h.hexdigest()
