"""``nasprobe doctor``: versions, providers that really start, the C kernel."""

import re

from click.testing import CliRunner

from nasprobe import cpus, kernels
from nasprobe.cli import main
from nasprobe.job import pipeline


def _lines(result) -> dict[str, str]:
    assert result.exit_code == 0, result.output
    out = {}
    for line in result.output.splitlines():
        label, _, text = line.strip().partition("  ")
        out[label] = text.strip()
    return out


def test_doctor_on_this_machine_with_the_real_packages():
    import numpy
    import onnxruntime

    got = _lines(CliRunner().invoke(main, ["doctor"]))
    assert re.match(r"\d+\.\d+", got["nasprobe"])
    assert got["python"].startswith(".".join(map(str, __import__("sys").version_info[:2])))
    assert f"onnxruntime {onnxruntime.__version__}" in got["onnxruntime"]
    assert got["CPUExecutionProvider"] == "works"
    assert kernels.available() and got["C kernel"].startswith("built, ")
    path, isa = got["C kernel"][len("built, "):].rsplit(", ", 1)
    assert path.endswith(".so") and "ckernels" in path and isa == kernels.simd()
    streams, threads = pipeline.cpu_streams(cpus.usable_cpus())
    assert re.fullmatch(rf"{streams} streams? of {threads} threads? \(\d+ usable CPUs?\)",
                        got["CPU probe epochs"])
    assert got["numpy"] == f"numpy {numpy.__version__}"
    assert got["torch"].startswith("torch 2.") and got["keras"].startswith("keras 3.")
    assert got["dask"].startswith("dask ") and "distributed" in got["dask"]
    import transformers

    assert got["hf"].startswith(f"transformers {transformers.__version__}, safetensors ")


def test_doctor_shows_listed_but_broken_cuda_with_its_reason_in_one_line(broken_cuda,
                                                                         monkeypatch):
    monkeypatch.setattr(kernels, "ckernels", None)
    result = CliRunner().invoke(main, ["doctor"])
    got = _lines(result)
    assert got["CUDAExecutionProvider"] == (
        "listed, does not start: libcublasLt.so.13: cannot open shared object file: "
        "No such file or directory")
    assert got["CPUExecutionProvider"] == "works"
    assert got["C kernel"].startswith("not built")
    assert "onnxruntime:Default" not in result.output and "\x1b[" not in result.output


def test_doctor_shows_working_cuda(monkeypatch):
    import onnxruntime as ort

    real = ort.InferenceSession

    class CudaSession:
        """A session that reports CUDA as the provider that runs it."""

        def __init__(self, model, options=None, providers=None, **kw):
            self._s = real(model, options, providers=["CPUExecutionProvider"])
            self._p = providers

        def get_providers(self):
            return self._p

        def run(self, *a, **kw):
            return self._s.run(*a, **kw)

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", CudaSession)
    monkeypatch.setattr(ort, "preload_dlls", lambda: None, raising=False)
    got = _lines(CliRunner().invoke(main, ["doctor"]))
    assert got["CUDAExecutionProvider"] == "works"
