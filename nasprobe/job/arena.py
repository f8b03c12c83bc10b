"""The process's shared onnxruntime CPU arena: whether new sessions draw on one memory arena
registered for the process (``nasprobe probe``, Dask workers) or each keep their own (the
Python API's default)."""

from __future__ import annotations

__all__ = ["share_cpu_arena", "shared_cpu_arena"]

_ARENA: bool | None = None  # whether shared_cpu_arena() registered the process's CPU arena
_SHARE_ARENA = False  # share_cpu_arena()


def share_cpu_arena(on: bool = True) -> None:
    """Let this process's CPU sessions share one onnxruntime memory arena (on) or each keep
    their own (off, the default of the Python API).

    Each epoch gets a new session (new weights); with its own arena, each maps its working
    memory afresh and faults every page in again. With the shared arena the second epoch on reuses the memory of the
    first, but the arena keeps its largest working set until the process ends. ``nasprobe
    probe`` (a process that ends with the job) and Dask worker processes turn it on; a notebook
    that calls :func:`nasprobe.probe` keeps the default, and its memory is freed with each
    session.
    """
    global _SHARE_ARENA
    _SHARE_ARENA = bool(on)


def shared_cpu_arena() -> bool:
    """Whether new CPU sessions use the process's shared arena: :func:`share_cpu_arena` was
    turned on and the arena is registered (once per process; it grows by what is asked, not
    to the next power of two). False where onnxruntime cannot register one (then sessions keep
    their own arenas)."""
    global _ARENA
    if not _SHARE_ARENA:
        return False
    if _ARENA is None:
        import onnxruntime as ort

        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                     ort.OrtMemType.DEFAULT)
            # max memory: no limit, extend strategy 1: kSameAsRequested, chunk sizes: defaults
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
            _ARENA = True
        except Exception:  # noqa: BLE001 - an onnxruntime without the API, or a refusal
            _ARENA = False
    return _ARENA
