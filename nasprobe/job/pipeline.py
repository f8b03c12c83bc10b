"""The batch loop's helpers: run batches on worker threads while the caller folds finished
ones, split the CPU into streams, size host-mode sub-batches so that raw tap tensors fit a
memory budget, and decide when a job probes several short epochs at once.

onnxruntime releases the GIL while a session runs, and so does the compiled NAS kernel
(:mod:`nasprobe.measures.kernels`). On CPU a probe epoch runs as several *streams*
(:func:`cpu_streams`): each worker thread takes whole batches through one shared session
(onnxruntime's ``run`` may be called from several threads at once) and the NAS kernel, with
few threads each, instead of one batch at a time spread over every core: no core waits at the
end of each operator for the others (the README's *Speed* section has the measurements).
:func:`prefetched` keeps the workers busy and hands results back in order; the batches in
flight at once are what :func:`sub_batch_size` accounts for.

An epoch of few batches leaves streams idle: while its last batches finish, while the next
checkpoint is opened and its session made, and while its statistics are summarised. A job of
several such epochs (:func:`epochs_at_once`) runs whole epochs side by side instead, one stream
each, every epoch's batches in its own thread, and commits them in order.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["HOST_TAP_BUDGET", "IN_FLIGHT", "MAX_STREAMS", "SHORT_EPOCH_RUNS", "SIDE_BY_SIDE_WEIGHTS",
           "tap_bytes_per_image", "sub_batch_size", "cpu_streams", "epochs_at_once",
           "prefetched", "worker_pool", "one_blas_thread", "PROCESS_LOCK"]

T = TypeVar("T")
R = TypeVar("R")

#: Bytes of raw tap tensors that host-mode NAS may hold at once (all batches in flight).
HOST_TAP_BUDGET = 512 * 2**20
#: Batches whose outputs are alive at once under :func:`prefetched` with one worker.
IN_FLIGHT = 2
#: Most streams :func:`cpu_streams` splits the CPU into.
MAX_STREAMS = 4
#: Most onnxruntime runs of a *short* epoch, whose job probes several epochs at once
#: (:func:`epochs_at_once`).
SHORT_EPOCH_RUNS = 8
#: Bytes of checkpoint weights that the epochs probed beside the first may hold in all
#: (:func:`epochs_at_once`).
SIDE_BY_SIDE_WEIGHTS = 512 * 2**20


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


def cpu_streams(cores: int) -> tuple[int, int]:
    """How a probe epoch on ``cores`` CPU cores is split: ``(streams, threads)``, each stream a
    worker thread running whole batches with ``threads`` onnxruntime and NAS-kernel threads.

    As many streams as cores, up to :data:`MAX_STREAMS` (more would multiply the memory of the
    batches in flight for little gain), choosing among 2..MAX_STREAMS the split that leaves
    the fewest cores idle (ties: more streams): 1 core → (1, 1), 2 → (2, 1), 6 → (3, 2),
    16 → (4, 4).
    """
    cores = max(1, int(cores))
    if cores < 2:
        return 1, 1
    best = max(range(2, min(cores, MAX_STREAMS) + 1),
               key=lambda s: (s * (cores // s), s))
    return best, cores // best


def epochs_at_once(epochs: int, runs: int, streams: int, weight_bytes: int = 0) -> int:
    """How many epochs a serial probe job on CPU probes at once: ``streams`` (from
    :func:`cpu_streams`), at most ``epochs`` (the epochs left to probe), when each epoch takes
    at most :data:`SHORT_EPOCH_RUNS` onnxruntime ``runs``; else 1 (one epoch at a time, its
    batches split into ``streams`` streams).

    Each epoch probed at once holds its checkpoint's weights (``weight_bytes``), a session and
    statistics: the epochs beyond the first may hold :data:`SIDE_BY_SIDE_WEIGHTS` bytes of
    weights in all, so that a large model is probed one epoch at a time, as before.

    On the README's 100-checkpoint job (4 runs of 64 images per epoch, 2 streams) two epochs
    at once took 1.78 s where one epoch of two streams took 2.17 s (docs/speed.md)."""
    if streams < 2 or epochs < 2 or runs > SHORT_EPOCH_RUNS:
        return 1
    return min(streams, epochs, 1 + SIDE_BY_SIDE_WEIGHTS // max(1, int(weight_bytes)))


#: Worker pools (:func:`worker_pool`), one per (calling thread, role, size): kept for the
#: process, so that each epoch does not start and join its threads again (a probe job runs one
#: :func:`prefetched` per epoch; a Dask worker thread gets pools of its own).
_POOLS: dict[tuple[int, str, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


#: Held by a probe job's threads while they change or use what the whole process shares:
#: warnings filters and ``sys.stdout``/``sys.stderr`` (swapped by ``warnings.catch_warnings``
#: and ``contextlib.redirect_*`` for every thread at once), a checkpoint source (which need not
#: be thread-safe: :class:`nasprobe.contract.CheckpointSource`) and the run-context caches. The
#: job's main thread reports each epoch under it, so that a warning it gives is never lost to a
#: filter another thread set for a moment.
PROCESS_LOCK = threading.RLock()


def _forget_pools() -> None:
    """In a forked child: the parent's pool threads do not exist there, so start afresh (and a
    lock another thread of the parent held would never be released there)."""
    global _POOLS_LOCK, PROCESS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()
    PROCESS_LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def worker_pool(workers: int, role: str = "run") -> ThreadPoolExecutor:
    """A pool of ``workers`` threads for the calling thread's ``role`` (``"run"``: the batches
    of :func:`prefetched`; ``"corr"``: an epoch's weight correlations), made on first use and
    kept for the process: an epoch reuses the threads of the last one instead of starting its
    own (starting and joining a thread per epoch took about 1 ms on a 2-core machine)."""
    key = (threading.get_ident(), role, workers)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix=f"nasprobe-{role}")
        return _POOLS[key]


def prefetched(items: Iterable[T], run: Callable[[T], R], workers: int = 1
               ) -> Iterator[tuple[T, R]]:
    """Yield ``(item, run(item))`` in the order of ``items``, ``run`` working on the next
    ``workers`` items on worker threads while the caller handles the current one; with
    ``workers=0``, in the caller's thread, one item at a time.

    At most ``workers + 1`` results are alive at once (``workers`` running, one with the
    caller). An exception of ``run`` is raised where its result is yielded; a caller that
    stops early waits for the runs still in flight. The worker threads are kept for the next
    call from the same thread.
    """
    if workers < 1:
        for item in items:
            yield item, run(item)
        return
    pool = worker_pool(workers)
    pending: deque = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(run, item)))
            if len(pending) > workers:
                done = pending.popleft()
                yield done[0], done[1].result()
                del done
        while pending:
            done = pending.popleft()
            yield done[0], done[1].result()
            del done
    finally:  # stopped early (an exception, or the caller closed the generator)
        wait([f for _, f in pending])
        pending.clear()


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread (threadpoolctl), for every thread of
    the process; a serial probe job runs its epochs in it (:mod:`nasprobe.job.probe_job`),
    entered once, in the main thread. numpy's OpenBLAS (0.3.31, pthreads) takes the thread
    count set from the main thread for all threads, but one set from another thread does not
    limit even that thread's own products (measured: 1.94 CPU seconds per second under a limit
    set in a worker thread, 1.21 under one set in the main thread); and setting it anew per
    epoch cost more system time than it saved (100 tiny checkpoints: 2.48 -> 2.56 s).

    The weight correlations' matrix products are a probe job's only BLAS calls. Left to
    itself, OpenBLAS runs them on every core and its threads then spin, waiting for more
    work, while onnxruntime's streams need those cores: on the README's 100-checkpoint job
    the spinning was 4 % of the process's CPU time. On one thread the largest product of the
    README's table job (256 filters of 8,192 weights) takes 11 ms instead of 7.

    Each call looks anew at the BLAS libraries loaded (1.4 ms): one found once per process
    would miss a BLAS that a later import (scipy, torch) brings."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
