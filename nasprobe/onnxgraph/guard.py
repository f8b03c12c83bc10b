"""Third-party ONNX graphs are prepared at arm's length (docs/onnx.md, *Hostile graphs*).

Two defences, both before :func:`nasprobe.onnxgraph.prepare.prepare_model` rewrites a graph:

* **Inlining is counted first.** Local functions that call each other twice per level double
  the graph at every level: a 1.5 kB file becomes a million nodes (26 s, 2 GB). The nodes
  inlining would produce are counted from the function table (linear in the file's size) and
  a graph of more than :data:`MAX_INLINED_NODES` is refused, as is one that would grow by
  more than :data:`MAX_INLINED_GROWTH` bytes (a constant in a function body is copied into
  every call) or a function that calls itself.
* **Native steps are rehearsed in a child process.** Inlining, opset conversion and shape
  inference are C++ code in onnx: a hostile graph can crash it (a segmentation fault, an abort
  on ``std::bad_alloc``) or exhaust memory, which no ``try`` catches and which would end the
  whole job, or a Dask worker, with the work of its other runs. The steps are run first on the
  graph without its large weights (as :func:`nasprobe.onnxgraph.index.shape_view` makes it), in
  a child process with at most :data:`GUARD_MEMORY` more bytes of address space and
  :data:`GUARD_SECONDS` seconds; only when that child finishes are they run on the model itself.
  The child is a fork of this process while it runs no other thread (onnx is already imported:
  milliseconds), else a fresh interpreter (about 0.2 s of CPU). A child that dies becomes a
  :class:`~nasprobe.errors.GraphError` naming the file and the step. A Python exception in a
  step (the converter's usual "cannot upgrade") is left to the real run, which reports it as
  before.
"""

from __future__ import annotations

import faulthandler
import functools
import hashlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import warnings

import onnx

from nasprobe.errors import GraphError

__all__ = ["MAX_INLINED_NODES", "MAX_INLINED_GROWTH", "GUARD_MEMORY", "GUARD_SECONDS",
           "inlined_size", "check_inlining", "rehearse", "forking_is_safe",
           "warm_schemas"]

#: The most nodes a graph may have once its local functions are inlined: several times the
#: largest graphs exported in practice (a 7B-parameter transformer has some 10,000), while a
#: 65,000-node graph already took 35 s and 0.5 GB to probe.
MAX_INLINED_NODES = 100_000
#: The most bytes inlining may add to the graph's nodes (a function holding a large constant
#: copies it into every call).
MAX_INLINED_GROWTH = 512 << 20
#: Address space (bytes) the rehearsing child may use, and the seconds it may take.
GUARD_MEMORY = 4 << 30
GUARD_SECONDS = 300
_MEMORY_EXIT = 3
#: Digests of the views (and steps) rehearsed without harm in this process: the same graph is
#: not rehearsed twice (each rehearsal starts a Python process: about 0.2 s of CPU).
_PASSED: set[bytes] = set()


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def inlined_size(model: onnx.ModelProto, source: str = "model") -> tuple[int, int]:
    """The number of nodes ``model``'s graph (subgraphs included) has once every call of a
    local function is replaced by the function's body, and those nodes' serialised bytes
    (constants in a function body are copied into every call), counted without inlining.

    Raises:
        GraphError: a local function that calls itself, directly or through others.
    """
    funcs = {(f.domain, f.name, getattr(f, "overload", "")): f for f in model.functions}
    sizes: dict[tuple, tuple[int, int]] = {}
    active: set[tuple] = set()

    def nodes(seq) -> tuple[int, int]:
        count = size = 0
        for n in seq:
            key = (n.domain, n.op_type, getattr(n, "overload", ""))
            if key in funcs:
                c, b = function(key)
            else:
                c, b = 1, n.ByteSize()
            for g in _subgraphs(n):
                sub = nodes(g.node)
                c, b = c + sub[0], b + sub[1]
            count, size = count + c, size + b
        return count, size

    def function(key: tuple) -> tuple[int, int]:
        if key not in sizes:
            if key in active:
                raise GraphError(source, f"local function {key[0]}:{key[1]} calls itself; "
                                 "it cannot be inlined")
            active.add(key)
            sizes[key] = nodes(funcs[key].node)
            active.discard(key)
        return sizes[key]

    return nodes(model.graph.node)


def check_inlining(model: onnx.ModelProto, source: str) -> int:
    """The inlined node count of ``model`` (:func:`inlined_size`), refused above
    :data:`MAX_INLINED_NODES` nodes or when inlining would add more than
    :data:`MAX_INLINED_GROWTH` bytes to the graph's nodes.

    Raises:
        GraphError: naming ``source``, the count or size and the bound.
    """
    count, size = inlined_size(model, source)
    why = "functions calling others several times per level grow exponentially"
    if count > MAX_INLINED_NODES:
        raise GraphError(source, f"its {len(model.functions)} local functions would inline to "
                         f"{count} nodes (more than {MAX_INLINED_NODES}; {why}); refused")
    growth = size - sum(n.ByteSize() for n in model.graph.node)
    if growth > MAX_INLINED_GROWTH:
        raise GraphError(source, f"its {len(model.functions)} local functions would inline to "
                         f"{size} bytes of nodes ({growth >> 20} MiB more than the file's "
                         f"graph, over {MAX_INLINED_GROWTH >> 20} MiB; {why}); refused")
    return count


def rehearse(model: onnx.ModelProto, source: str, *, inline: bool, upgrade_to: int | None
             ) -> None:
    """Run onnx's native preparation steps on ``model``'s weightless view in a child process.

    The child is a fork of this process when :func:`forking_is_safe`, else a fresh
    interpreter in isolated mode (``-I``: the current folder and ``PYTHON*`` variables cannot
    put another onnx in its way) that imports exactly the modules this process would (its
    ``sys.path`` is passed on, without the current folder). A child that cannot start or import
    onnx is not the file's fault: a warning says the steps ran unguarded.

    Args:
        model: the graph as read from ``source``.
        source: the file, named in errors.
        inline: rehearse ``onnx.inliner.inline_local_functions``.
        upgrade_to: rehearse ``onnx.version_converter.convert_version`` to this opset (None:
            no conversion). Shape inference is always rehearsed, after the other steps.

    Raises:
        GraphError: the child died (signal, abort), ran out of its memory or time.
    """
    from .index import shape_view

    args = [sys.executable, "-I", "-c", _CHILD, str(GUARD_MEMORY), "inline" if inline else "-",
            str(upgrade_to or 0)]
    view = shape_view(model).SerializeToString()
    key = hashlib.sha256(view + " ".join(args[4:]).encode()).digest()
    if key in _PASSED:
        return
    path = [p for p in sys.path if isinstance(p, str) and os.path.isabs(p)]  # never the cwd
    env = {**os.environ, _PATH_ENV: json.dumps(path)}
    try:
        if forking_is_safe():
            warm_schemas()  # once per process: the child inherits the table
            returncode, err = _forked(view, inline, upgrade_to or 0)
        else:
            proc = subprocess.run(args, input=view, capture_output=True, timeout=GUARD_SECONDS,
                                  env=env)
            returncode, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        raise GraphError(source, f"preparing the graph took more than {GUARD_SECONDS} s "
                         "(inlining, opset conversion, shape inference); refused") from None
    except OSError as exc:
        return _unguarded(source, f"cannot start a process ({exc})")
    lines = err.decode(errors="replace").strip().splitlines()
    steps = [s.removeprefix("step: ") for s in lines if s.startswith("step: ")]
    if returncode == 0:
        if len(_PASSED) >= 64:
            _PASSED.clear()
        _PASSED.add(key)
        return
    if returncode == _MEMORY_EXIT:
        why = f"ran out of memory (over {GUARD_MEMORY >> 20} MiB)"
    elif returncode < 0:
        try:
            why = f"crashed onnx ({signal.Signals(-returncode).name})"
        except ValueError:
            why = f"crashed onnx (signal {-returncode})"
    elif not steps:  # failed before the first step: the environment, not the file
        return _unguarded(source, (lines or [f"exit {returncode}"])[-1][:200])
    else:
        why = f"crashed onnx (exit {returncode}: {(lines or [''])[-1][:200]})"
    step = steps[-1] if steps else "starting"
    raise GraphError(source, f"{step} {why}; the graph is malformed or hostile")


@functools.cache
def warm_schemas() -> None:
    """Have onnx build its table of operator schemas, which it does on first use (about 9 ms),
    the first time this is called in this process. Every forked rehearsal paid that again, and
    so did this process's own first shape inference after it (finding the taps): built before
    the fork, the child inherits the table (a VanillaNet-m rehearsal's child: 17-25 → 5-7 ms;
    the taps: 14 → 5 ms)."""
    onnx.defs.get_schema("Relu")


def forking_is_safe() -> bool:
    """Whether the rehearsal may fork this process instead of starting a new interpreter: on
    POSIX, while this process runs no other Python thread (a lock another thread holds at the
    fork would stay held in the child). A fork costs milliseconds; a new interpreter that
    imports onnx costs about 0.2 s of CPU per architecture."""
    return hasattr(os, "fork") and threading.active_count() == 1


def _address_space() -> int:
    """Bytes of address space this process has mapped (``VmSize``), 0 where unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _forked(view: bytes, inline: bool, target: int) -> tuple[int, bytes]:
    """The rehearsal in a forked child (onnx is already imported here): ``(exit status as
    :mod:`subprocess` reports it, the child's step lines)``. The child may map
    :data:`GUARD_MEMORY` bytes beyond what this process has mapped, for :data:`GUARD_SECONDS`.

    Raises:
        subprocess.TimeoutExpired: the child took longer (it has been killed).
        OSError: the fork failed.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 70
        try:
            os.close(read)
            faulthandler.disable()  # a crash is reported by the parent, not dumped here
            try:
                limit = _address_space() + GUARD_MEMORY
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            except (ValueError, OSError):
                pass  # no address-space limit on this platform
            status = _rehearse_here(view, inline, target, write)
        finally:
            os._exit(status)
    os.close(write)
    out = b""
    deadline = time.monotonic() + GUARD_SECONDS
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired("rehearsal", GUARD_SECONDS)
            chunk = os.read(read, 65536)
            if not chunk:
                break
            out += chunk
    finally:
        os.close(read)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


class _OutOfMemoryError(Exception):
    """A step of the forked rehearsal ran out of its address space."""


def _rehearse_here(view: bytes, inline: bool, target: int, fd: int) -> int:
    """The steps themselves, in the forked child; each step's name is written to ``fd`` before
    it starts. Returns the child's exit status: 0, or :data:`_MEMORY_EXIT`."""
    from onnx import inliner, shape_inference, version_converter

    warnings.simplefilter("ignore")

    def step(name, func, m):
        os.write(fd, f"step: {name}\n".encode())
        try:
            return func(m)
        except MemoryError:
            raise _OutOfMemoryError from None
        except Exception:  # noqa: BLE001 - reported by the real run, in the parent
            return m

    try:
        model = onnx.ModelProto.FromString(view)
        if inline:
            model = step("inlining local functions", inliner.inline_local_functions, model)
        if target:
            model = step(f"converting to opset {target}",
                         lambda m: version_converter.convert_version(m, target), model)
        step("inferring shapes", lambda m: shape_inference.infer_shapes(m, strict_mode=False),
             model)
    except _OutOfMemoryError:
        return _MEMORY_EXIT
    return 0


def _unguarded(source: str, why: str) -> None:
    warnings.warn(f"{source}: onnx's preparation steps could not be rehearsed in a separate "
                  f"process ({why}); they run unguarded", RuntimeWarning, stacklevel=3)


#: The environment variable that passes this process's ``sys.path`` to the child.
_PATH_ENV = "NASPROBE_GUARD_SYS_PATH"
#: The child's program: onnx only, so that it starts as fast as Python and onnx allow.
_CHILD = f"""
import json, os, sys
memory, inline, target = int(sys.argv[1]), sys.argv[2] == "inline", int(sys.argv[3])
sys.path[:] = json.loads(os.environ["{_PATH_ENV}"])
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
except (ImportError, ValueError, OSError):
    pass  # no address-space limit on this platform
import warnings
warnings.simplefilter("ignore")
import onnx
from onnx import inliner, shape_inference, version_converter

def step(name, func, m):
    print("step: " + name, file=sys.stderr, flush=True)
    try:
        return func(m)
    except MemoryError:
        os._exit({_MEMORY_EXIT})
    except Exception:  # reported by the real run, in the parent
        return m

model = onnx.ModelProto.FromString(sys.stdin.buffer.read())
if inline:
    model = step("inlining local functions", inliner.inline_local_functions, model)
if target:
    model = step("converting to opset %d" % target,
                 lambda m: version_converter.convert_version(m, target), model)
step("inferring shapes", lambda m: shape_inference.infer_shapes(m, strict_mode=False), model)
os._exit(0)
"""
