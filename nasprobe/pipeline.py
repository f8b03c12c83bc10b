"""The batch loop's two helpers: run onnxruntime on the next batch while the host works on the
current one, and size host-mode sub-batches so that raw tap tensors fit a memory budget.

onnxruntime releases the GIL while a session runs, and so does the compiled NAS kernel
(:mod:`nasprobe.kernels`): with :func:`prefetched` the NAS maps and statistics of batch ``k``
are computed while onnxruntime already runs batch ``k + 1``. Two batches of outputs are then
alive at once, which :func:`sub_batch_size` accounts for.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["HOST_TAP_BUDGET", "IN_FLIGHT", "tap_bytes_per_image", "sub_batch_size",
           "prefetched"]

T = TypeVar("T")
R = TypeVar("R")

#: Bytes of raw tap tensors that host-mode NAS may hold at once (all batches in flight).
HOST_TAP_BUDGET = 512 * 2**20
#: Batches whose outputs are alive at once under :func:`prefetched`.
IN_FLIGHT = 2


def tap_bytes_per_image(shapes: Iterable[tuple[int, ...]], itemsize: int = 4) -> int:
    """Bytes one image adds to the raw tap tensors, from each tap's shape without the batch
    axis (e.g. ``(D, H, W)``) and the element size (float32: 4)."""
    return sum(math.prod(s) for s in shapes) * itemsize


def sub_batch_size(batch_size: int, per_image: int, budget: int = HOST_TAP_BUDGET,
                   in_flight: int = IN_FLIGHT) -> int:
    """Images per onnxruntime run: ``batch_size``, or fewer so that ``in_flight`` runs of
    ``per_image`` bytes per image stay within ``budget`` bytes (at least one image)."""
    if per_image <= 0:
        return batch_size
    return max(1, min(batch_size, budget // (in_flight * per_image)))


def prefetched(items: Iterable[T], run: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """Yield ``(item, run(item))`` in order, ``run`` of the next item already running on a
    worker thread while the caller handles the current one.

    An exception of ``run`` is raised where its result is yielded; a caller that stops early
    waits for the one run still in flight.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="nasprobe-run") as pool:
        pending = None
        for item in items:
            future = pool.submit(run, item)
            if pending is not None:
                done = pending
                pending = None
                yield done[0], done[1].result()
                del done
            pending = (item, future)
        if pending is not None:
            yield pending[0], pending[1].result()
