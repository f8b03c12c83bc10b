"""Running a probe job's (run, epoch) tasks on Dask (``--workers N`` / ``--scheduler ADDRESS``).

dask and distributed are an optional extra: they are imported only here, only when asked for.
The coordinator (:func:`nasprobe.probe`) creates the job's group for each run first; each task
then rebuilds its run's tapped model on its worker (cached per worker, see :mod:`nasprobe.job.tasks`)
and writes only its own epoch's chunks, so no locks are needed (docs/store-design.md); workers
need no shared disk when the store is on object storage. A worker process that dies mid-task
(killed, out of memory) costs only that task: the scheduler gives it to another worker (up to
``distributed.scheduler.allowed-failures`` times), and the commit marker, created last, keeps a
half-written epoch invisible. Exceptions raised by a task are retried ``retries``
times.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable, Iterator, Sequence

from nasprobe.errors import NasprobeError, install_hint

from .tasks import EpochTask, Outcome, run_epoch

__all__ = ["dask_client", "run_on_dask", "RETRIES"]

#: Retries of a task that raised (a dying worker is rescheduled by the scheduler itself).
RETRIES = 2


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise NasprobeError("--workers and --scheduler need dask and distributed: "
                            f"{install_hint('distributed')} ({exc})") from exc
    return distributed


def _dashboard(client) -> str:
    try:
        import bokeh  # noqa: F401  (distributed serves its dashboard with bokeh)
    except ImportError:
        return "unavailable (pip install bokeh)"
    return client.dashboard_link or "unavailable"


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler=None) -> Iterator:
    """A ``distributed.Client``: on a new local cluster of ``workers`` processes (one thread
    each), or on the scheduler at ``scheduler`` (``tcp://HOST:PORT``, or a ``Client``, used
    as is). Prints the dashboard link to stderr; a local cluster is closed on exit."""
    distributed = _distributed()
    if scheduler is not None and not isinstance(scheduler, str):
        yield scheduler
        return
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise NasprobeError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
        with client:
            print(f"nasprobe: Dask scheduler {scheduler}, dashboard {_dashboard(client)}",
                  file=sys.stderr)
            yield client
        return
    if workers is None or workers < 1:
        raise NasprobeError(f"--workers must be at least 1, not {workers}")
    with distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        with distributed.Client(cluster) as client:
            print(f"nasprobe: local Dask cluster of {workers} worker processes, dashboard "
                  f"{_dashboard(client)}", file=sys.stderr)
            yield client


def _match_worker_threads(dask_worker) -> int:
    """On a Dask worker (``client.run`` passes it): limit onnxruntime sessions and the host NAS
    kernel to the worker's thread count, and let its sessions share one CPU arena (a worker
    process probes epoch after epoch)."""
    from nasprobe.measures.kernels import set_threads

    from .arena import share_cpu_arena
    from .runtime import set_intra_op_threads

    n = dask_worker.state.nthreads
    set_intra_op_threads(n)
    set_threads(n)
    share_cpu_arena()
    return n


def run_on_dask(client, tasks: Sequence[EpochTask], handle: Callable[[Outcome], None],
                retries: int = RETRIES) -> None:
    """Submit one :func:`nasprobe.job.tasks.run_epoch` per task and pass each
    :class:`~nasprobe.job.tasks.Outcome` to ``handle`` as it completes.

    ``handle`` stops the job by raising (``--on-error fail``): the remaining tasks are then
    cancelled (slots already being written are either committed whole or stay invisible). A
    task whose worker died more than the scheduler allows is reported as a ``crashed`` outcome
    naming its checkpoint.
    """
    distributed = _distributed()
    # Each worker's onnxruntime uses the worker's own threads, not every core of the machine.
    client.run(_match_worker_threads)
    futures = {}
    for task in tasks:
        fut = client.submit(run_epoch, task, retries=retries, pure=False,
                            key=f"nasprobe-{task.spec.run}-{task.epoch}-{task.writer.job}")
        futures[fut] = (task.spec.run, task.epoch, str(task.path))
    pending = distributed.as_completed(list(futures))
    try:
        for fut in pending:
            run, epoch, path = futures.pop(fut)
            try:
                outcome = fut.result()
            except distributed.KilledWorker as exc:
                outcome = Outcome(run, epoch, path, "crashed", "the worker probing it died "
                                  f"repeatedly (a crash or out of memory): {exc}")
            fut.release()
            handle(outcome)
    finally:
        if futures:
            client.cancel(list(futures))
