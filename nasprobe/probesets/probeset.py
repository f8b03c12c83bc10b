"""Probe sets: the images every checkpoint is run on (docs/cli.md, ``--probe PROBE``).

Sources. ``.npy``: one image array, memory-mapped. ``.npz``: images ``x`` and optional labels
``y`` (``(N,)``, ``(N, 1)`` or one-hot ``(N, K)`` integers); uncompressed members (``np.savez``)
are memory-mapped, compressed ones read whole. Folder: PNG/JPEG files (hidden ones ignored),
sorted by relative path, decoded one batch at a time; labels by the first rule that applies:
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
import math
import mmap
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from nasprobe.errors import ProbeSetError

from .layout import CHANNELS, Layout, check_labels, fits, format_dims, model_layout

if TYPE_CHECKING:
    from .folders import FolderSource

__all__ = ["ProbeSet", "load_probe_set"]

_HASH_TAG = b"nasprobe-probeset-v1\n"
_CHUNK_BYTES = 1 << 24  # 16 MiB: the finiteness check reads at most this much at once
#: The largest compressed ``.npz`` member (its size once inflated, in bytes) that is read: a
#: compressed member is inflated whole into memory, so a small file could otherwise claim
#: gigabytes (a "zip bomb"). Uncompressed members (``np.savez``) are memory-mapped, unbounded.
MAX_INFLATED_BYTES = 1 << 30

_OPS = {"expand": np.expand_dims, "squeeze": np.squeeze, "transpose": np.transpose,
        "flatten": lambda a, _: a.reshape(a.shape[0], -1)}


def _adapt(a: np.ndarray, steps: tuple) -> np.ndarray:
    for op, arg in steps:
        a = _OPS[op](a, arg)
    return a


@dataclass
class _ArraySource:
    """Images from an in-memory or memory-mapped ``array``, adapted one slice at a time."""

    array: np.ndarray
    steps: tuple  # ((op, arg), ...) from _OPS: the probe's layout -> the model's
    divisor: float | None  # integer images are divided by it (255 for uint8)
    shape: tuple  # per-sample shape after adaptation
    dtype: np.dtype = np.dtype(np.float32)  # what read() returns (token ids: the model's ints)

    @property
    def count(self) -> int:
        """Number of images."""
        return len(self.array)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` as a new float32 array ``(n, *shape)``, scaled, not normalised
        (token ids: unchanged, in the model's integer type).

        A memory-mapped array's pages are released after the copy, so that the resident
        memory of a probe job does not grow with the probe file (the OS page cache keeps them).
        """
        a = np.array(_adapt(self.array[start:stop], self.steps), dtype=self.dtype, order="C")
        _release(self.array)
        if self.divisor is not None:
            a /= np.float32(self.divisor)
        return a


def _release(array: np.ndarray) -> None:
    """Drop this process's resident pages of the mapping behind ``array``, if it is one."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            base.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - platform without madvise
            pass


def _candidates(shape: tuple, layout: Layout) -> list[tuple]:
    """Adaptations (step tuples) to try for a probe array of ``shape``, most literal first."""
    rank = len(shape)
    if layout.kind != "flat":
        perm = (0, 3, 1, 2) if layout.kind == "NCHW" else (0, 2, 3, 1)
        return {3: [(("expand", 1 if layout.kind == "NCHW" else 3),)],
                4: [(), (("transpose", perm),)]}.get(rank, [])
    cands: list[tuple] = [()] if rank == len(layout.dims) + 1 else []
    squeezes = [(("squeeze", ax),) for ax in (1, 3) if rank == 4 and shape[ax] == 1]
    if len(layout.dims) == 2:
        cands += squeezes
    elif len(layout.dims) == 1:
        flat = (("flatten", None),)
        cands += [flat] if rank == 3 else [s + flat for s in squeezes]
    return cands


def _plan_array(path: Path, shape: tuple, layout: Layout) -> tuple[tuple, tuple]:
    """Choose the adaptation of a probe array; return (steps, per-sample shape) or raise."""
    one = np.broadcast_to(np.zeros((), np.uint8), (1,) + tuple(shape[1:]))
    fitting = [(steps, out) for steps in _candidates(shape, layout)
               if fits(out := _adapt(one, steps).shape[1:], layout.dims)]
    if not fitting:
        raise ProbeSetError(path, f"probe shape {tuple(shape)} does not fit the model input "
                            f"{format_dims(layout.dims)}" + (" (arrays are never resized)"
                            if len(shape) == len(layout.dims) + 1 else ""))
    if len(fitting) > 1 and layout.kind != "flat":  # both fit: trust the probe's channel axis
        other = (3, 1) if layout.kind == "NCHW" else (1, 3)  # its channel axis if transposed
        if shape[other[0]] in CHANNELS and shape[other[1]] not in CHANNELS:
            return fitting[1]
    return fitting[0]


def _array_source(path: Path, x: np.ndarray, layout: Layout) -> _ArraySource:
    kind = x.dtype.kind
    if kind not in "biuf" or (kind in "iu" and not (kind == "u" and x.dtype.itemsize <= 2)):
        raise ProbeSetError(path, f"probe images have dtype {x.dtype}: expected uint8 (scaled "
                                  "to [0, 1]), uint16, bool or float")
    if x.ndim >= 1 and len(x) == 0:
        raise ProbeSetError(path, f"probe set is empty (shape {x.shape})")
    steps, shape = _plan_array(path, x.shape, layout)
    if kind == "f":  # only floats can hold NaN or inf
        step = max(1, _CHUNK_BYTES // max(1, x[:1].nbytes))
        for start in range(0, len(x), step):
            chunk = np.asarray(x[start:start + step])
            bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
            if bad.any():
                raise ProbeSetError(path, f"probe image {start + int(np.argmax(bad))} has "
                                          "non-finite values (NaN or inf)")
    divisor = float(np.iinfo(x.dtype).max) if kind == "u" else None
    return _ArraySource(x, steps, divisor, tuple(int(s) for s in shape))


def _token_source(path: Path, x: np.ndarray, layout: Layout, dtype: np.dtype) -> _ArraySource:
    """Token ids ``(N, T)`` for a model whose input is integer: fed unchanged, never scaled."""
    if x.dtype.kind not in "iu":
        raise ProbeSetError(path, f"the model takes integer token ids, but the probe array has "
                                  f"dtype {x.dtype}: expected an integer array (N, T)")
    if x.ndim >= 1 and len(x) == 0:
        raise ProbeSetError(path, f"probe set is empty (shape {x.shape})")
    if not fits(x.shape[1:], layout.dims):
        raise ProbeSetError(path, f"probe shape {tuple(x.shape)} does not fit the model input "
                                  f"{format_dims(layout.dims)} (token ids, one row per example)")
    step = max(1, _CHUNK_BYTES // max(1, x[:1].nbytes))
    info = np.iinfo(dtype)
    for start in range(0, len(x), step):
        chunk = np.asarray(x[start:start + step])
        if chunk.size and (chunk.min() < 0 or chunk.max() > info.max):
            raise ProbeSetError(path, "token ids must be non-negative (and fit the model's "
                                      f"{dtype}); found {int(chunk.min())}..{int(chunk.max())}")
    return _ArraySource(x, (), None, tuple(int(s) for s in x.shape[1:]), np.dtype(dtype))


def _hash_stream(h, name: str, size: int, stream) -> None:
    h.update(f"{name}:{size}\n".encode())
    while chunk := stream.read(1 << 20):
        h.update(chunk)


def _npz_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """A ``.npz`` member: memory-mapped when stored uncompressed, else read whole.

    The ``.npy`` header is read from the member itself (never past its end), and a stored
    member must hold exactly the bytes its header announces: a member cut short would
    otherwise be mapped over the next member's bytes and read as images.
    """
    fmt = np.lib.format
    if info.compress_type == zipfile.ZIP_STORED:
        with zf.open(info) as m:
            version = fmt.read_magic(m)
            if version in ((1, 0), (2, 0)):
                shape, fortran, dtype = getattr(fmt, f"read_array_header_{version[0]}_0")(m)
                header = m.tell()
            else:
                shape, dtype = (), None
        if dtype is not None and not dtype.hasobject and int(np.prod(shape)) > 0:
            need = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if need != info.file_size:
                raise ProbeSetError(path, f"member {info.filename} is truncated or damaged: "
                                    f"its header announces {need} bytes, the member holds "
                                    f"{info.file_size}")
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                head = f.read(30)  # the zip local file header; its name and extra field follow
            start = info.header_offset + 30 + sum(struct.unpack("<HH", head[26:30]))
            return np.memmap(path, dtype=dtype, mode="r", offset=start + header, shape=shape,
                             order="F" if fortran else "C")
    _check_inflated(path, zf, info)
    with zf.open(info) as f:
        return fmt.read_array(f, allow_pickle=False)


def _check_inflated(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Refuse a compressed member before inflating it: its size from the zip directory must not
    exceed :data:`MAX_INFLATED_BYTES`, and its ``.npy`` header (the first bytes, inflated alone)
    must announce exactly that many bytes (zipfile stops at the directory's size, numpy would
    allocate what the header announces)."""
    if info.file_size > MAX_INFLATED_BYTES:
        raise ProbeSetError(path, f"member {info.filename} is compressed and would inflate to "
                            f"{info.file_size} bytes ({info.compress_size} stored), more than "
                            f"the {MAX_INFLATED_BYTES} read into memory; save the probe set "
                            "uncompressed (np.savez, memory-mapped) or as .npy")
    fmt = np.lib.format
    with zf.open(info) as m:
        version = fmt.read_magic(m)
        if version not in ((1, 0), (2, 0)):
            return  # numpy refuses it with its own message
        shape, _, dtype = getattr(fmt, f"read_array_header_{version[0]}_0")(m)
        header = m.tell()
    if dtype.hasobject:
        return  # refused by read_array (allow_pickle=False)
    need = header + math.prod(shape) * dtype.itemsize
    if need != info.file_size:
        raise ProbeSetError(path, f"member {info.filename} is truncated or damaged: its header "
                            f"announces {need} bytes, the member holds {info.file_size}")


def _load_arrays(path: Path, h) -> tuple[np.ndarray, np.ndarray | None]:
    """Open a .npy/.npz source as (x, y), hashing the .npy bytes of ``x`` and ``y`` into ``h``."""
    try:
        if path.suffix.lower() == ".npy":
            try:
                x = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError:  # empty arrays cannot be mapped; object arrays fail again here
                x = np.load(path, allow_pickle=False)
            with open(path, "rb") as f:
                _hash_stream(h, "x", path.stat().st_size, f)
            return x, None
        with zipfile.ZipFile(path) as zf:
            members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
            if "x" not in members:
                raise ProbeSetError(path, f"no array 'x' in the .npz (keys found: "
                                          f"{sorted(members)}); expected images x, labels y")
            arrays = {}
            for key in ("x", "y"):
                if key in members:
                    arrays[key] = _npz_member(path, zf, members[key])
                    with zf.open(members[key]) as f:
                        _hash_stream(h, key, members[key].file_size, f)
            return arrays["x"], arrays.get("y")
    except ProbeSetError:
        raise
    except Exception as e:  # numpy/zipfile raise many kinds on a damaged file (TokenError...)
        raise ProbeSetError(path, f"cannot read the probe array ({e.__class__.__name__}: "
                                  f"{str(e)[:300]})") from e


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
    ``(3, 32, 32)``. ``sha256``: hex digest of the data (the .npy bytes of ``x`` and ``y``, so
    ``.npy`` and ``.npz`` hash alike; for a folder the
    sorted relative names, image bytes and labels.csv) and of the preprocessing (layout, shape,
    mean, std); settings that give the same arrays (mean None or 0) give the same hash.
    ``mask``: for a text probe (:mod:`.text`), ``(N, T)`` bool, False on padding.
    """

    path: Path
    size: int
    sha256: str
    labels: np.ndarray | None
    shape: tuple[int, ...] = ()
    layout: str = "NCHW"
    mask: np.ndarray | None = field(default=None, repr=False)
    _source: _ArraySource | FolderSource | None = field(default=None, repr=False)
    _mean: np.ndarray | None = field(default=None, repr=False)  # broadcastable to a batch
    _std: np.ndarray | None = field(default=None, repr=False)

    @property
    def memory_mapped(self) -> bool:
        """Whether the images are read from the file batch by batch (an ``.npy`` file or an
        uncompressed ``.npz`` member, memory-mapped) rather than held in memory whole."""
        return isinstance(getattr(self._source, "array", None), np.memmap)

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
        x = self._source.read(start, stop)
        if self._mean is not None:
            x -= self._mean
            x /= self._std
        return x


def load_probe_set(path, input_shape: Sequence, *, mean=None, std=None, resize: bool = True,
                   channels_last: bool | None = None, input_dtype=None) -> ProbeSet:
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

    Raises:
        ProbeSetError: naming the file and the fault (expected and given shape for misfits).
    """
    path = Path(path)
    tokens = input_dtype is not None and np.dtype(input_dtype).kind in "iu"
    layout = (Layout("flat", tuple(int(d) if isinstance(d, (int, np.integer)) and d > 0 else None
                                   for d in input_shape[1:]))
              if tokens else model_layout(path, input_shape, channels_last))
    h = hashlib.sha256(_HASH_TAG)
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
        x, y = _load_arrays(path, h)
        source = (_token_source(path, x, layout, np.dtype(input_dtype)) if tokens
                  else _array_source(path, x, layout))
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
    h.update(json.dumps(settings).encode())
    plain = not mean_v.any() and (std_v == 1).all()
    bshape = {"NCHW": (1, channels, 1, 1), "NHWC": (1, 1, 1, channels)}.get(layout.kind, (1,))
    m32, s32 = (None if plain else v.astype(np.float32).reshape(bshape) for v in (mean_v, std_v))
    return ProbeSet(path=path, size=n, sha256=h.hexdigest(), labels=labels, shape=source.shape,
                    layout="tokens" if tokens else layout.kind, _source=source, _mean=m32, _std=s32)
