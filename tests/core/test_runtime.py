"""Execution providers: CUDA when onnxruntime has it, CPU otherwise with a clear notice."""

import numpy as np
import onnxruntime as ort
import pytest

from nasprobe.errors import CheckpointError, NasprobeError
from nasprobe.job import arena, runtime, weights
from nasprobe.onnxgraph.nas_graph import build_probe_graph
from nasprobe.onnxgraph.taps import find_taps
from tests.core import onnx_models as om
from tests.core.conftest import ORT_LOG


def test_cuda_request_falls_back_to_cpu_with_a_notice(monkeypatch, capsys):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    runtime.forget_notices()
    assert runtime.select_providers("cuda") == ["CPUExecutionProvider"]
    err = capsys.readouterr().err
    assert "CUDA was requested" in err and "running on CPU" in err and "nasprobe[gpu]" in err
    assert runtime.select_providers("auto") == ["CPUExecutionProvider"]
    assert capsys.readouterr().err == ""  # auto falls back silently; the provider is recorded


def test_cuda_is_chosen_when_onnxruntime_offers_it(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runtime.select_providers("auto")[0] == "CUDAExecutionProvider"
    assert runtime.select_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(NasprobeError, match="--device"):
        runtime.select_providers("tpu")


def test_session_reports_the_provider_that_ran_and_checks_weights():
    model, _ = om.conv1d_net(np.random.default_rng(0))
    tapped = runtime.TappedModel(build_probe_graph(model, find_taps(model)), device="cpu")
    sess = tapped.session()
    assert tapped.provider == "CPUExecutionProvider" == sess.get_providers()[0]
    assert tapped.input_shape == (None, 2, 9)
    with pytest.raises(CheckpointError, match=r"e7\.onnx: tensor 'w' has shape \(1, 2\)"):
        tapped.session({"w": np.zeros((1, 2), np.float32)}, "e7.onnx")
    with pytest.raises(CheckpointError, match="'zz' is not part of the architecture"):
        tapped.session({"zz": np.zeros(1, np.float32)}, "e7.onnx")


def test_short_reason_names_the_missing_library():
    assert runtime.short_reason(ORT_LOG) == \
        "libcublasLt.so.13: cannot open shared object file: No such file or directory"
    warn_only = ORT_LOG.split("\x1b[m")[1]
    assert runtime.short_reason(warn_only) == \
        "Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 13.*"
    assert runtime.short_reason("") == "onnxruntime gave no reason"
    # onnxruntime-gpu's Python layer print()s a box when TensorRT cannot start
    trt = ("*************** EP Error ***************\nEP Error /onnxruntime_src/onnxruntime/python/"
           "onnxruntime_pybind_state.cc:729 void onnxruntime::python::RegisterTensorRTPlugins"
           "AsCustomOps(PySessionOptions&, const onnxruntime::ProviderOptions&) Please install "
           "TensorRT libraries as mentioned in the GPU requirements page, make sure they're in "
           "the PATH or LD_LIBRARY_PATH, and that your GPU is supported.\n when using "
           "['TensorrtExecutionProvider', 'CPUExecutionProvider']\nFalling back to "
           "['CPUExecutionProvider'] and retrying.\n****************************************\n")
    assert runtime.short_reason(trt) == \
        "Please install TensorRT libraries as mentioned in the GPU requirements page"


def test_a_failed_cuda_start_runs_on_cpu_with_one_short_notice(broken_cuda, capfd):
    model, _ = om.conv1d_net(np.random.default_rng(0))
    tapped = runtime.TappedModel(build_probe_graph(model, find_taps(model)), device="cuda")
    assert tapped.providers[0] == runtime.CUDA
    for _ in range(3):
        sess = tapped.session()
    assert sess.get_providers()[0] == tapped.provider == runtime.CPU
    assert tapped.fallback.startswith("libcublasLt.so.13")
    assert broken_cuda == [[runtime.CUDA, runtime.CPU], [runtime.CPU], [runtime.CPU]]
    err = capfd.readouterr().err
    assert err == ("nasprobe: CUDA could not start (libcublasLt.so.13: cannot open shared "
                   "object file: No such file or directory); running on CPU\n")


def test_preload_dlls_is_called_once_before_a_cuda_session(broken_cuda, monkeypatch):
    calls = []
    monkeypatch.setattr(ort, "preload_dlls", lambda: calls.append(1), raising=False)
    monkeypatch.setattr(runtime, "_PRELOADED", False)
    model, _ = om.conv1d_net(np.random.default_rng(0))
    runtime.TappedModel(build_probe_graph(model, find_taps(model)), device="cpu").session()
    assert calls == []  # a CPU session needs no CUDA libraries
    for _ in range(2):
        runtime.TappedModel(build_probe_graph(model, find_taps(model)), device="cuda").session()
    assert calls == [1]


def test_probe_on_failed_cuda_computes_nas_on_the_host_and_matches_cpu(
        broken_cuda, conv_run, labelled_probe, tmp_path, capfd):
    import nasprobe

    folder, _, _ = conv_run
    cpu = nasprobe.probe([folder], probe=labelled_probe, out=tmp_path / "cpu.zarr",
                         device="cpu", progress=False)
    capfd.readouterr()
    gpu = nasprobe.probe([folder], probe=labelled_probe, out=tmp_path / "gpu.zarr",
                         device="cuda", progress=False)
    err = capfd.readouterr().err
    assert err.count("nasprobe: CUDA could not start") == 1 and "onnxruntime" not in err
    a, b = nasprobe.open_store(cpu).to_dataset(), nasprobe.open_store(gpu).to_dataset()
    import json

    prov = json.loads(b.attrs["runs"])["vanilla"]
    assert prov["provider"] == runtime.CPU and prov["nas_on"] == "host"
    for var in ["nas_median", "nas_mean", "nas_min", "nas_max", "entropy_mean",
                "nas_quantile", "loss"]:
        np.testing.assert_allclose(b[var].values, a[var].values, atol=1e-6, err_msg=var)
    np.testing.assert_array_equal(b.nas_hist.values, a.nas_hist.values)


def test_a_cuda_start_that_raises_falls_back_to_cpu(monkeypatch, capfd):
    real = ort.InferenceSession

    def session(model, options=None, providers=None, **kw):
        if providers and providers[0] == runtime.CUDA:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected\nmore")
        return real(model, options, providers=providers, **kw)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [runtime.CUDA, runtime.CPU])
    monkeypatch.setattr(ort, "InferenceSession", session)
    runtime.forget_notices()
    model, _ = om.conv1d_net(np.random.default_rng(0))
    tapped = runtime.TappedModel(build_probe_graph(model, find_taps(model)), device="auto")
    assert tapped.session().get_providers()[0] == runtime.CPU
    assert tapped.fallback == "CUDA failure 100: no CUDA-capable device is detected"
    assert capfd.readouterr().err.count("nasprobe: CUDA could not start") == 1


def _config(opts, key):
    try:
        return opts.get_session_config_entry(key)
    except RuntimeError:  # no such key
        return None


def test_cpu_sessions_share_one_arena_when_asked_and_give_what_an_own_arena_gives():
    """With share_cpu_arena() (the command line, Dask workers) every epoch's CPU session draws
    on the process's one registered arena, its pages faulted in once per process, not once per
    epoch; without it (the Python API's default) each session has its own, freed with it. The
    outputs are the same, and a stream's share of threads is what the session gets."""
    model, _ = om.conv_bn_relu_net(np.random.default_rng(0))
    graph = build_probe_graph(model, find_taps(model))
    tm = runtime.TappedModel(graph, device="cpu")
    x = np.random.default_rng(1).normal(0, 1, (5, 3, 8, 8)).astype(np.float32)
    own = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    want = own.run(None, {tm.input_name: x})
    try:
        for shared in (False, True):
            arena.share_cpu_arena(shared)
            assert arena.shared_cpu_arena() is shared
            for threads in (None, 1):
                sess = tm.session(threads=threads)
                opts = sess.get_session_options()
                assert _config(opts, "session.use_env_allocators") == ("1" if shared else None)
                if threads:
                    assert opts.intra_op_num_threads == threads
                for a, b in zip(sess.run(None, {tm.input_name: x}), want):
                    np.testing.assert_array_equal(a, b)
    finally:
        arena.share_cpu_arena(False)


def test_the_probe_command_shares_the_arena_and_the_python_api_does_not(tmp_path):
    """`nasprobe probe` ends with its job, so its sessions share one arena; nasprobe.probe()
    in a long-lived process (a notebook) leaves each session its own, freed with it."""
    from click.testing import CliRunner

    import nasprobe
    from nasprobe.cli import main
    from tests.core.conftest import write_runs

    probe = write_runs(tmp_path, ["a"], 5, seed=1, probe_seed=2)
    arena.share_cpu_arena(False)
    try:
        nasprobe.probe([tmp_path / "a"], probe=probe, out=tmp_path / "api.zarr", progress=False)
        assert arena.shared_cpu_arena() is False
        result = CliRunner().invoke(main, ["probe", str(tmp_path / "a"), "--probe", str(probe),
                                           "--out", str(tmp_path / "cli.zarr")])
        assert result.exit_code == 0, result.output
        assert arena.shared_cpu_arena() is True
    finally:
        arena.share_cpu_arena(False)


@pytest.mark.parametrize("min_bytes", [0, 4096])
def test_swapped_weights_give_the_outputs_of_a_model_holding_them(monkeypatch, min_bytes):
    """Weights supplied per session against a model built with them: every tensor an external
    initializer (``min_bytes`` 0), or these small ones written into the graph (the default)."""
    from onnx import TensorProto, helper, numpy_helper

    monkeypatch.setattr(weights, "EXTERNAL_MIN_BYTES", min_bytes)

    def net(w, b, s):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
                 helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Mul", ["r", "s"], ["y"])]
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
            initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
                         numpy_helper.from_array(s, "s")])  # s is 0-d
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        return model

    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    first = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32),
             np.array(0.5, np.float32)]
    tapped = runtime.TappedModel(net(*first), device="cpu")
    for epoch in range(3):
        w, b = rng.normal(size=(3, 4)), rng.normal(size=4)  # float64: cast to the graph's float32
        s = np.array(1.5 + epoch)
        sess = tapped.session({"w": w, "b": b, "s": s})
        assert len(sess._nasprobe_weights) == (3 if min_bytes == 0 else 0)
        expected = ort.InferenceSession(
            net(w.astype(np.float32), b.astype(np.float32), s.astype(np.float32)).SerializeToString(),
            providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], expected)
    partial = tapped.session({"b": b.astype(np.float32)})  # w and s stay the graph's own
    expected = ort.InferenceSession(net(first[0], b.astype(np.float32), first[2]).SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(partial.run(None, {"x": x})[0], expected)
    np.testing.assert_array_equal(tapped.session().run(None, {"x": x})[0], ort.InferenceSession(
        net(*first).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])


def test_bfloat16_weights_are_baked_into_the_graph():
    """onnxruntime makes no OrtValue of bfloat16: such weights go into a copy of the graph."""
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper

    def net(w):
        graph = helper.make_graph(
            [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "wf"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
            initializer=[numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        return model

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    tapped = runtime.TappedModel(net(np.ones(3, ml_dtypes.bfloat16)), device="cpu")
    w = np.array([0.5, -2.0, 3.0])
    got = tapped.session({"w": w}).run(None, {"x": x})[0]
    expected = ort.InferenceSession(net(w.astype(ml_dtypes.bfloat16)).SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, expected)


def test_large_tensors_are_external_and_small_ones_written_into_the_graph():
    """WeightPlacer: a tensor of EXTERNAL_MIN_BYTES or more becomes a placeholder handed over
    as an OrtValue; a smaller one is written into the serialised graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    big, small = np.ones((32, 32), np.float32), np.ones(32, np.float32)  # 4,096 and 128 bytes
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        initializer=[numpy_helper.from_array(big, "w"), numpy_helper.from_array(small, "b")])
    placer = weights.WeightPlacer(helper.make_model(graph))
    placed = placer.place({"w": big * 2, "b": small * 3})
    assert placed.names == ["w"] and len(placed.values) == 1
    inits = {t.name: t for t in onnx.load_from_string(placed.model).graph.initializer}
    assert inits["w"].data_location == TensorProto.EXTERNAL and not inits["w"].raw_data
    np.testing.assert_array_equal(numpy_helper.to_array(inits["b"]), small * 3)
    assert placer.baked({"w": big * 2}).names == []


def test_a_graph_refused_with_external_initializers_is_loaded_with_them_written_in(monkeypatch):
    """A shape input handed over as an external initializer makes onnxruntime refuse the graph
    (shape inference reads it at load time): the session is made again with every array
    written into the graph, and computes what a model holding them computes."""
    from onnx import TensorProto, helper, numpy_helper

    def net(w, shape):
        graph = helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["xr"]),
             helper.make_node("MatMul", ["xr", "w"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
            initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(shape, "shape")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        return model

    monkeypatch.setattr(weights, "EXTERNAL_MIN_BYTES", 0)  # the shape tensor too
    rng = np.random.default_rng(3)
    shape = np.array([-1, 6], np.int64)
    tapped = runtime.TappedModel(net(np.zeros((6, 4), np.float32), shape), device="cpu")
    assert tapped.placer.place({"shape": shape}).names == ["shape"]
    x = rng.normal(size=(5, 2, 3)).astype(np.float32)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    sess = tapped.session({"w": w, "shape": shape})
    assert sess._nasprobe_weights == []  # made the second way
    expected = ort.InferenceSession(net(w, shape).SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], expected)
