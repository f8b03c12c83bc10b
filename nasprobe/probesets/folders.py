"""Probe sets from a folder of image files (PNG/JPEG), read lazily one batch at a time.

The rules for labels, layout and resizing are those of :mod:`nasprobe.probesets`.

Security: Pillow picks a decoder from a file's content, not its name, and some of its decoders
hand the file to other programs (EPS runs Ghostscript where installed) or parse rarely used
formats. Only the PNG and JPEG decoders are ever used here (:data:`DECODERS`), whatever a
file is called, and an image over :data:`MAX_PIXELS` pixels is refused from its header, before
any pixel is decoded (Pillow's own decompression-bomb error is reported the same way).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nasprobe.errors import ProbeSetError

from .layout import IMAGE_SUFFIXES, MODES, Layout, check_labels, fits, format_dims

__all__ = ["FolderSource", "folder_labels", "folder_source", "open_image", "DECODERS",
           "MAX_PIXELS"]

#: The only Pillow decoders used, whatever a file's content claims.
DECODERS = ("PNG", "JPEG")

#: Largest image accepted (width × height): 40 megapixels, far beyond any probe image.
MAX_PIXELS = 40_000_000


def open_image(data, name) -> Image.Image:
    """``Image.open`` restricted to :data:`DECODERS`, with the size checked from the header.

    Args:
        data: a path or a binary file object.
        name: the file, for messages.

    Raises:
        ProbeSetError: not a PNG/JPEG (whatever its name), unreadable, or too many pixels.
    """
    try:
        im = Image.open(data, formats=DECODERS)
    except Image.DecompressionBombError as e:
        raise ProbeSetError(name, f"image too large to decode safely: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise ProbeSetError(name, f"not a readable PNG or JPEG image ({e})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise ProbeSetError(name, f"image of {w}x{h} pixels is over the limit of "
                                  f"{MAX_PIXELS:,} pixels; refused")
    return im


@dataclass
class FolderSource:
    """Image files, decoded, converted and resized one batch at a time."""

    root: Path
    files: list[str]  # relative posix paths, sorted
    mode: str  # Pillow mode: L, RGB or RGBA
    size: tuple[int, int] | None  # (W, H) to resize to, or None
    layout: Layout
    shape: tuple  # per-sample shape in the model's layout

    @property
    def count(self) -> int:
        """Number of images."""
        return len(self.files)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` as a new float32 array ``(n, *shape)`` in [0, 1]."""
        images = []
        for name in self.files[start:stop]:
            try:
                with open_image(self.root / name, self.root / name) as im:
                    im = im.convert(self.mode)
                    if self.size is not None and im.size != self.size:
                        im = im.resize(self.size, Image.Resampling.BILINEAR)
                    images.append(np.asarray(im))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise ProbeSetError(self.root / name, f"cannot read the image: {e}") from e
        if not images:
            return np.zeros((0, *self.shape), np.float32)
        x = np.stack(images)  # (n, H, W) for L, (n, H, W, C) otherwise
        if self.layout.kind != "flat" and x.ndim == 3:
            x = x[..., None]
        if self.layout.kind == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        x = np.array(x.reshape(len(x), *self.shape), dtype=np.float32, order="C")
        x /= np.float32(255)
        return x


def folder_labels(root: Path, files: list[str], h) -> np.ndarray | None:
    """Labels of a folder's images by the rules of the module docstring; hashes labels.csv."""
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        depths = {name.count("/") for name in files}
        if depths == {0}:
            return None
        if depths != {1}:
            raise ProbeSetError(root, "images must all lie in the folder, or all in class "
                                      "sub-folders CLASS/image, unless labels.csv names them")
        values = [name.split("/")[0] for name in files]
    else:
        data = csv_path.read_bytes()
        h.update(f"labels.csv:{len(data)}\n".encode() + data)
        lines = data.decode("utf-8-sig").splitlines()
        rows = [[c.strip() for c in r] for r in csv.reader(lines) if "".join(r).strip()]
        table: dict[str, str] = {}
        for i, row in enumerate(rows):
            if i == 0 and row[0] not in files:
                continue  # header
            if len(row) < 2 or row[0] in table:
                raise ProbeSetError(csv_path, f"bad or repeated row {row}: expected filename,label")
            table[row[0]] = row[1]
        missing, extra = sorted(set(files) - set(table)), sorted(set(table) - set(files))
        if missing or extra:
            raise ProbeSetError(csv_path, "labels.csv does not match the images: " + "; ".join(
                f"{what} {names[:5]}" for what, names in (("no label for", missing),
                                                           ("no image for", extra)) if names))
        values = [table[name] for name in files]
        if all(re.fullmatch(r"-?[0-9]+", v) for v in values):
            return check_labels(csv_path, np.array([int(v) for v in values]), len(files))
    index = {c: i for i, c in enumerate(sorted(set(values)))}
    return np.array([index[v] for v in values], np.int64)


def folder_source(root: Path, layout: Layout, resize: bool, h
                   ) -> tuple[FolderSource, np.ndarray | None]:
    """Scan, hash and check (headers only) a folder of images; pixels are read later."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise ProbeSetError(root, f"probe folder has no images ({', '.join(IMAGE_SUFFIXES)})")
    channels = 1 if layout.kind == "flat" else layout.dims[0 if layout.kind == "NCHW" else 2] or 3
    if channels not in MODES or len(layout.dims) > 2 and layout.kind == "flat":
        raise ProbeSetError(root, f"image files cannot feed the model input {format_dims(layout.dims)}")
    hw = (None, None) if len(layout.dims) == 1 else (
        layout.dims[1:] if layout.kind == "NCHW" else layout.dims[:2])
    target = (hw[1], hw[0]) if resize and None not in hw else None  # Pillow sizes are (W, H)
    first = None
    for name in files:
        data = (root / name).read_bytes()
        h.update(f"{name}:{len(data)}\n".encode() + data)
        with open_image(io.BytesIO(data), root / name) as im:  # reads the header only
            size = im.size
        first = first or size
        if target is None and not (size == first and fits(size[::-1], hw) and (
                len(layout.dims) != 1 or layout.dims[0] in (None, size[0] * size[1]))):
            raise ProbeSetError(root / name, f"image shape {(size[1], size[0], channels)} "
                                f"(H, W, C) does not fit the model input {format_dims(layout.dims)}"
                                f"; the first image is {first[1]}x{first[0]}"
                                + ("" if resize else "; resize is off"))
    w, ht = target or first
    shape = {"NCHW": (channels, ht, w), "NHWC": (ht, w, channels)}.get(
        layout.kind, (ht, w) if len(layout.dims) == 2 else (ht * w,))
    labels = folder_labels(root, files, h)
    return FolderSource(root, files, MODES[channels], target, layout, shape), labels


