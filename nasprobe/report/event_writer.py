"""TensorBoard event files: scalars and NAS heatmaps at integer steps, without TensorFlow.

The one writer nasprobe uses, after probing (``nasprobe tensorboard``, :mod:`nasprobe.report.tensorboard`)
and during training (the torch and Keras live-NAS callbacks). Events are written with
TensorBoard's own ``EventFileWriter`` and protocol buffers; this needs the ``tensorboard``
package (``pip install 'nasprobe[tensorboard]'``), imported when a writer is opened.

Heatmaps are NAS maps coloured with viridis on the fixed range [0, 1] (NaN locations
transparent). A map of shape ``(y, x)`` is an ``y × x`` image, a ``(t,)`` map a ``1 × t``
strip, a map without spatial dims one pixel, a map with more spatial dims (``(z, y, x)`` of a
Conv3d) its ``y × x`` slices side by side, in order; every image is enlarged by an integer factor
``k = max(1, 128 // longest side)`` (nearest neighbour) so that TensorBoard shows it at a
readable size.
"""

from __future__ import annotations

import io
import os
import time
from typing import Mapping

import numpy as np

from nasprobe.errors import NasprobeError, install_hint

__all__ = ["EventWriter", "LogdirError", "heatmap_rgba", "heatmap_scale", "png_bytes",
           "tensorboard_protos", "EVENT_FILE_PREFIX"]

#: Name prefix of TensorBoard event files.
EVENT_FILE_PREFIX = "events.out.tfevents"


class LogdirError(NasprobeError):
    """A TensorBoard log folder that cannot be written."""


def heatmap_scale(shape: tuple[int, ...]) -> int:
    """Integer enlargement factor for a heatmap of ``shape`` (rows, cols): the longest side
    becomes at least 128 pixels (or stays as it is when already longer)."""
    return max(1, 128 // max(shape))


def heatmap_rgba(nas_map: np.ndarray) -> np.ndarray:
    """Viridis colours of a NAS map on [0, 1], enlarged by :func:`heatmap_scale`.

    Args:
        nas_map: shape ``(y, x)``, ``(t,)``, ``()`` or ``(..., y, x)`` (NAS, NaN = no value);
            with more than 2 dims the ``y × x`` slices are placed side by side (C order).

    Returns:
        uint8 RGBA of shape ``(rows * k, cols * k, 4)``; NaN pixels are transparent.
    """
    import matplotlib

    values = np.asarray(nas_map, dtype=np.float64)
    values = values.reshape((1,) * (2 - values.ndim) + values.shape) if values.ndim < 2 else values
    if values.ndim > 2:  # (..., y, x) → (y, n * x): the slices in a row
        rows, cols = values.shape[-2:]
        values = values.reshape(-1, rows, cols).transpose(1, 0, 2).reshape(rows, -1)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    rgba = cmap(np.ma.masked_invalid(np.clip(values, 0.0, 1.0)), bytes=True)
    k = heatmap_scale(values.shape)
    return np.repeat(np.repeat(rgba, k, axis=0), k, axis=1)


def png_bytes(rgba: np.ndarray) -> bytes:
    """A uint8 ``(H, W, 4)`` RGBA image encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba, dtype=np.uint8), mode="RGBA").save(
        buffer, format="PNG")
    return buffer.getvalue()


def tensorboard_protos():
    """``(event_pb2, summary_pb2, EventFileWriter)`` from the ``tensorboard`` package.

    Raises:
        LogdirError: the package is not installed (the message names the extra).
    """
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise LogdirError("writing TensorBoard event files needs the 'tensorboard' package: "
                          f"{install_hint('tensorboard')}") from None
    return event_pb2, summary_pb2, EventFileWriter


class EventWriter:
    """One TensorBoard event file in ``logdir`` (created), written step by step; its name
    ends with ``filename_suffix``.

    Use as a context manager, or call :meth:`close`. Example::

        with EventWriter("tb/run1") as w:
            w.write(epoch, scalars={"nas_median/conv1": 0.4},
                    images={"nas_heatmap/conv1": heatmap_rgba(mean_map)})

    Raises:
        LogdirError: the ``tensorboard`` package is missing, or ``logdir`` cannot be created.
    """

    def __init__(self, logdir: str | os.PathLike, filename_suffix: str = ""):
        event_pb2, summary_pb2, EventFileWriter = tensorboard_protos()
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self.logdir = os.fspath(logdir)
        try:
            os.makedirs(self.logdir, exist_ok=True)
        except OSError as exc:
            raise LogdirError(f"{self.logdir}: cannot create the log folder ({exc})") from exc
        self._writer = EventFileWriter(self.logdir, filename_suffix=filename_suffix)

    def write(self, step: int, scalars: Mapping[str, float] | None = None,
              images: Mapping[str, np.ndarray] | None = None,
              wall_time: float | None = None) -> bool:
        """Write one event at ``step``: scalars by tag (non-finite values are left out) and
        uint8 RGBA images ``(H, W, 4)`` by tag. Returns whether anything was written."""
        summary = self._summary_pb2.Summary
        values = [summary.Value(tag=tag, simple_value=float(v))
                  for tag, v in (scalars or {}).items() if np.isfinite(v)]
        for tag, rgba in (images or {}).items():
            image = summary.Image(height=int(rgba.shape[0]), width=int(rgba.shape[1]),
                                  colorspace=4, encoded_image_string=png_bytes(rgba))
            values.append(summary.Value(tag=tag, image=image))
        if not values:
            return False
        self._writer.add_event(self._event_pb2.Event(
            wall_time=time.time() if wall_time is None else wall_time, step=int(step),
            summary=summary(value=values)))
        return True

    def flush(self) -> None:
        """Write buffered events to disk."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
