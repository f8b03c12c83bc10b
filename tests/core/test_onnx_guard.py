"""Hostile ONNX graphs end as exit 2 naming the file, never as a dead process (docs/onnx.md).

* Local functions that call each other twice per level double the graph per level: the nodes
  inlining would produce are counted first (the count is checked against onnx's own inliner)
  and a graph over the bound is refused in well under a second, before anything is inlined.
* A constant in a function body is copied into every call: the bytes inlining would add are
  bounded too.
* Inlining, opset conversion and shape inference are rehearsed in a child process: a child
  that runs out of its memory (here a bound lowered for the test) is reported with the step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, inliner, numpy_helper

from nasprobe.errors import GraphError
from nasprobe.onnxgraph import guard as onnx_guard
from tests.hostile import assert_refused, probe, write_probe

D = "local"
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid(D, 1)]


def doubling(levels: int, calls: int = 2, const_floats: int = 0) -> onnx.ModelProto:
    """Conv, then ``f<levels>``: each ``f<i>`` calls ``f<i-1>`` ``calls`` times in a chain;
    ``f0`` is a Relu (beside a constant of ``const_floats`` zeros, when given)."""
    body = [helper.make_node("Relu", ["x"], ["y"])]
    if const_floats:
        zeros = numpy_helper.from_array(np.zeros((const_floats,), np.float32))
        body.insert(0, helper.make_node("Constant", [], ["k"], value=zeros))
    funcs = [helper.make_function(D, "f0", ["x"], ["y"], body, OPSETS[:1])]
    for i in range(1, levels + 1):
        names = ["x"] + [f"t{j}" for j in range(calls - 1)] + ["y"]
        nodes = [helper.make_node(f"f{i - 1}", [names[j]], [names[j + 1]], domain=D)
                 for j in range(calls)]
        funcs.append(helper.make_function(D, f"f{i}", ["x"], ["y"], nodes, OPSETS))
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3))
                                .astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node(f"f{levels}", ["c"], ["out"], domain=D)], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=OPSETS, functions=funcs)


def _run(tmp_path, model) -> tuple:
    run = tmp_path / "run"
    run.mkdir()
    path = run / "epoch_001.onnx"
    onnx.save(model, str(path))
    return path, probe(run, "--probe", write_probe(tmp_path / "p.npz"), "--out",
                       tmp_path / "s.zarr")


@pytest.mark.parametrize("levels,calls,floats", [(0, 1, 0), (3, 2, 0), (6, 2, 0), (4, 3, 0),
                                                 (5, 2, 1000)])
def test_the_count_is_what_onnx_inlines(levels, calls, floats):
    model = doubling(levels, calls, floats)
    count, size = onnx_guard.inlined_size(model)
    inlined = inliner.inline_local_functions(model)
    assert count == len(inlined.graph.node) == 1 + calls ** levels * (1 + bool(floats))
    # bytes: the inliner's copies are a little larger (it prefixes the names it copies)
    real = sum(n.ByteSize() for n in inlined.graph.node)
    assert 0.5 * real <= size <= real


def test_exponential_functions_are_refused_before_inlining(tmp_path):
    model = doubling(17)  # 1.7 kB: 131,073 nodes once inlined
    assert model.ByteSize() < 4000
    start = time.perf_counter()
    path, res = _run(tmp_path, model)
    assert_refused(res, path, "18 local functions would inline to 131073 nodes",
                   f"more than {onnx_guard.MAX_INLINED_NODES}")
    assert time.perf_counter() - start < 30  # onnx's inliner alone: ~2 s, the probe minutes
    assert not (tmp_path / "s.zarr").exists()


def test_copied_constants_are_bounded(tmp_path):
    model = doubling(10, const_floats=1 << 18)  # a 1 MiB constant, called 1024 times
    path, res = _run(tmp_path, model)
    assert_refused(res, path, "would inline to", "MiB more than the file's graph",
                   f"over {onnx_guard.MAX_INLINED_GROWTH >> 20} MiB")


def test_a_function_calling_itself_is_refused():
    model = doubling(2)
    model.functions[0].node[0].op_type, model.functions[0].node[0].domain = "f2", D
    with pytest.raises(GraphError, match="local function local:f2 calls itself"):
        onnx_guard.inlined_size(model, "m.onnx")


@pytest.mark.parametrize("fork", [True, False])
def test_a_blowup_in_a_native_step_is_exit_2_naming_the_step(tmp_path, monkeypatch, fork):
    """3 MiB copied 128 times: under the growth bound, over the child's (lowered) memory, in a
    forked child and in a fresh interpreter alike."""
    monkeypatch.setattr(onnx_guard, "GUARD_MEMORY", 200 << 20)
    monkeypatch.setattr(onnx_guard, "forking_is_safe", lambda: fork)
    path, res = _run(tmp_path, doubling(7, const_floats=3 << 18))
    assert_refused(res, path, "inlining local functions", "the graph is malformed or hostile")
    assert "ran out of memory (over 200 MiB)" in res.stderr or "crashed onnx" in res.stderr


@pytest.mark.parametrize("fork", [True, False])
def test_a_rehearsal_out_of_time_is_exit_2(tmp_path, monkeypatch, fork):
    monkeypatch.setattr(onnx_guard, "GUARD_SECONDS", 0.001)
    monkeypatch.setattr(onnx_guard, "forking_is_safe", lambda: fork)
    path, res = _run(tmp_path, doubling(1, const_floats=7 + fork))  # no earlier test rehearsed it
    assert_refused(res, path, "preparing the graph took more than 0.001 s")


def test_ordinary_functions_are_inlined_and_probed(tmp_path):
    path, res = _run(tmp_path, doubling(3))
    assert res.exit_code == 0, (res.output, res.stderr)


def test_a_module_in_the_current_folder_cannot_stand_in_for_onnx(tmp_path, monkeypatch):
    """The child runs isolated: an ``onnx`` package in the folder nasprobe runs from is never
    what it imports (it would otherwise fail, or run that code)."""
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "__init__.py").write_text("raise SystemExit(7)\n")
    monkeypatch.setattr(onnx_guard, "forking_is_safe", lambda: False)  # a fresh interpreter
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    model = doubling(2, const_floats=11)  # a graph no other test rehearsed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnx_guard.rehearse(model, "m.onnx", inline=True, upgrade_to=None)


def test_a_child_that_cannot_start_is_a_warning_not_the_files_fault(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_guard, "forking_is_safe", lambda: False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.warns(RuntimeWarning, match="m.onnx: onnx's preparation steps could not be "
                      "rehearsed in a separate process .*; they run unguarded"):
        onnx_guard.rehearse(doubling(2, const_floats=13), "m.onnx", inline=True, upgrade_to=None)


def test_a_fork_is_used_only_while_no_other_thread_runs():
    assert onnx_guard.forking_is_safe() == (threading.active_count() == 1)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert not onnx_guard.forking_is_safe()
    finally:
        stop.set()
        other.join()


def test_a_crash_in_the_forked_child_is_exit_2_naming_the_step(tmp_path, monkeypatch):
    """A native crash (here a SIGSEGV sent to the child mid-step) ends the child, not the job."""
    import onnx.shape_inference

    def crash(*a, **k):
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", crash)  # the child's copy too
    monkeypatch.setattr(onnx_guard, "forking_is_safe", lambda: True)
    with pytest.raises(GraphError, match=r"m\.onnx: inferring shapes crashed onnx \(SIGSEGV\)"):
        onnx_guard.rehearse(doubling(2, const_floats=17), "m.onnx", inline=True, upgrade_to=None)
