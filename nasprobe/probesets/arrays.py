"""Probe arrays: ``.npy`` files and ``.npz`` members, read into memory when small
(:data:`RESIDENT_BYTES`), else opened memory-mapped where they can be; checked, and adapted
one slice at a time to a model's input (the rules are in :mod:`nasprobe.probesets.probeset`'s
docstring).

A compressed ``.npz`` member is inflated whole, so it is bounded (:data:`MAX_INFLATED_BYTES`)
and its header checked before it is; a stored member must hold the bytes its header announces.
"""

from __future__ import annotations

import io
import math
import mmap
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nasprobe.errors import ProbeSetError

from .layout import CHANNELS, Layout, fits, format_dims

__all__ = ["ArraySource", "array_source", "check_finite", "token_source", "load_arrays",
           "is_mapped", "hash_file", "MAX_INFLATED_BYTES", "RESIDENT_BYTES", "HASH_WINDOW"]

_CHUNK_BYTES = 1 << 24  # 16 MiB: the finiteness check reads at most this much at once
#: The largest compressed ``.npz`` member (its size once inflated, in bytes) that is read: a
#: compressed member is inflated whole into memory, so a small file could otherwise claim
#: gigabytes (a "zip bomb"). Uncompressed members (``np.savez``) are memory-mapped, unbounded.
MAX_INFLATED_BYTES = 1 << 30
#: A ``.npy`` file or uncompressed ``.npz`` member of at most this many bytes (16 MiB) is read
#: into memory once, as it is hashed; a larger one is memory-mapped and read batch by batch,
#: so that a probe job's memory does not grow with its probe set. (Reading a batch of a
#: mapping costs about 0.1 ms more, paid per batch and epoch: most of an epoch's reading for a
#: small model over many checkpoints.)
RESIDENT_BYTES = 1 << 24
#: Bytes of a file :func:`hash_file` maps and hashes at once (64 MiB; a multiple of
#: ``mmap.ALLOCATIONGRANULARITY``).
HASH_WINDOW = 1 << 26

_OPS = {"expand": np.expand_dims, "squeeze": np.squeeze, "transpose": np.transpose,
        "flatten": lambda a, _: a.reshape(a.shape[0], -1)}


def _adapt(a: np.ndarray, steps: tuple) -> np.ndarray:
    for op, arg in steps:
        a = _OPS[op](a, arg)
    return a


@dataclass
class ArraySource:
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


def array_source(path: Path, x: np.ndarray, layout: Layout, check: bool = True) -> ArraySource:
    """Images ``x`` ``(N, ...)`` fitted to a model input of ``layout``.

    Args:
        path: the probe file, for messages.
        x: the images, in memory or memory-mapped; uint8/uint16 (scaled to [0, 1] on read),
            bool or float.
        layout: the model input's layout (:func:`~nasprobe.probesets.layout.model_layout`).
        check: check here that float images are finite (:func:`check_finite`); False leaves
            that to the caller.

    Raises:
        ProbeSetError: another dtype, no image, a shape that fits no adaptation, or a
            non-finite value (naming the image).
    """
    kind = x.dtype.kind
    if kind not in "biuf" or (kind in "iu" and not (kind == "u" and x.dtype.itemsize <= 2)):
        raise ProbeSetError(path, f"probe images have dtype {x.dtype}: expected uint8 (scaled "
                                  "to [0, 1]), uint16, bool or float")
    if x.ndim >= 1 and len(x) == 0:
        raise ProbeSetError(path, f"probe set is empty (shape {x.shape})")
    steps, shape = _plan_array(path, x.shape, layout)
    if check:
        check_finite(path, x)
    divisor = float(np.iinfo(x.dtype).max) if kind == "u" else None
    return ArraySource(x, steps, divisor, tuple(int(s) for s in shape))


def check_finite(path: Path, x: np.ndarray) -> None:
    """Check that the images ``x`` ``(N, ...)`` hold no NaN or infinity, reading a bounded
    slice (16 MiB) at a time; only float arrays are read.

    Raises:
        ProbeSetError: naming ``path`` and the first image with a non-finite value.
    """
    if x.dtype.kind != "f":  # only floats can hold NaN or inf
        return
    step = max(1, _CHUNK_BYTES // max(1, x[:1].nbytes))
    for start in range(0, len(x), step):
        chunk = np.asarray(x[start:start + step])
        bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        if bad.any():
            raise ProbeSetError(path, f"probe image {start + int(np.argmax(bad))} has "
                                      "non-finite values (NaN or inf)")


def token_source(path: Path, x: np.ndarray, layout: Layout, dtype: np.dtype) -> ArraySource:
    """Token ids ``(N, T)`` for a model whose input is integer: fed unchanged, never scaled.

    Args:
        path: the probe file, for messages.
        x: integer token ids ``(N, T)``.
        layout: the model input's ``flat`` layout (``T`` may be None: any length).
        dtype: the model input's integer dtype; :meth:`ArraySource.read` returns it.

    Raises:
        ProbeSetError: a non-integer array, no row, a shape that does not fit, or an id that is
            negative or does not fit ``dtype``.
    """
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
    return ArraySource(x, (), None, tuple(int(s) for s in x.shape[1:]), np.dtype(dtype))


def _hash_header(h, name: str, size: int) -> None:
    """What precedes an array's bytes in a probe set's hash: its name and size in bytes."""
    h.update(f"{name}:{size}\n".encode())


def _hash_stream(h, name: str, size: int, stream) -> None:
    _hash_header(h, name, size)
    while chunk := stream.read(1 << 20):
        h.update(chunk)


def is_mapped(path: Path) -> bool:
    """Whether :func:`load_arrays` memory-maps ``path``: a ``.npy`` file over
    :data:`RESIDENT_BYTES`."""
    return path.suffix.lower() == ".npy" and path.stat().st_size > RESIDENT_BYTES


def hash_file(h, name: str, path: Path) -> None:
    """Hash the file ``path`` into ``h`` (a hashlib object) as :func:`load_arrays` hashes its
    array ``name``. The file is hashed through memory maps of :data:`HASH_WINDOW` bytes, one
    call each, during which hashlib releases the GIL: on a thread it runs beside the caller's
    Python work, and no more than a window of the file is mapped at once.

    Raises:
        ProbeSetError: naming the file, when it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            _hash_header(h, name, size)
            for start in range(0, size, HASH_WINDOW):
                with mmap.mmap(f.fileno(), min(HASH_WINDOW, size - start),
                               access=mmap.ACCESS_READ, offset=start) as m:
                    h.update(m)
    except (OSError, ValueError) as e:
        raise ProbeSetError(path, f"cannot read the probe array ({e.__class__.__name__}: "
                                  f"{str(e)[:300]})") from e


def _npz_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """A ``.npz`` member: memory-mapped when stored uncompressed, else read whole.

    The ``.npy`` header is read from the member itself (never past its end), and a stored
    member must hold exactly the bytes its header announces: a member cut short would
    otherwise be mapped over the next member's bytes and read as images.
    """
    fmt = np.lib.format
    if info.compress_type == zipfile.ZIP_STORED and info.file_size > RESIDENT_BYTES:
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


def load_arrays(path: Path, h) -> tuple[np.ndarray, np.ndarray | None]:
    """Open a .npy/.npz source as ``(x, y)``, hashing the .npy bytes of ``x`` and ``y`` into
    ``h`` (a hashlib object), so that a ``.npy`` and an ``.npz`` of the same arrays hash alike.
    With ``h`` None a memory-mapped ``.npy`` (:func:`is_mapped`) is not hashed: the caller
    hashes it with :func:`hash_file`, which gives the same digest.

    Raises:
        ProbeSetError: naming the file: no ``x`` in an ``.npz``, a damaged or truncated file or
            member, a compressed member over :data:`MAX_INFLATED_BYTES`.
    """
    try:
        if path.suffix.lower() == ".npy":
            size = path.stat().st_size
            if size <= RESIDENT_BYTES:  # one read: hashed, then parsed
                data = path.read_bytes()
                _hash_stream(h, "x", len(data), io.BytesIO(data))
                return np.load(io.BytesIO(data), allow_pickle=False), None
            try:
                x = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError:  # empty arrays cannot be mapped; object arrays fail again here
                x = np.load(path, allow_pickle=False)
            if h is not None:
                hash_file(h, "x", path)
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
