"""Execution providers: CUDA when onnxruntime has it, CPU otherwise with a clear notice."""

import numpy as np
import onnxruntime as ort
import pytest

from nasprobe import runtime
from nasprobe.errors import CheckpointError, NasprobeError
from nasprobe.graph import build_probe_graph, find_taps
from tests.core import onnx_models as om


def test_cuda_request_falls_back_to_cpu_with_a_notice(monkeypatch, capsys):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    runtime._NOTICED.clear()
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
