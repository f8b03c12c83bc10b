"""Fixtures for the core tests: folders of per-epoch ONNX checkpoints and probe sets."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from nasprobe.job import runtime
from tests.core import onnx_models as om


def write_run(folder, builder, names, seed=0, scale=1.0):
    """Save one ONNX file per name in ``folder``: same graph, new weights per file."""
    rng = np.random.default_rng(seed)
    model, expected = builder(rng)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        m = model if i == 0 else om.reweighted(model, rng, scale=scale)
        onnx.save(m, str(folder / name))
        paths.append(folder / name)
    return paths, expected


def write_runs(root, names, last, seed, probe_seed):
    """Run folders ``root/<name>`` of the conv/BN/relu/gemm model, epochs 1, 2 and
    ``last + i`` for the i-th name (weights seeded ``seed + i``), and ``root/probe.npz``: 16
    labelled 3×8×8 images from ``probe_seed``. Returns the probe set's path."""
    for i, name in enumerate(names):
        write_run(root / name, om.conv_bn_relu_net,
                  [f"epoch_{e:03d}.onnx" for e in (1, 2, last + i)], seed=seed + i)
    rng = np.random.default_rng(probe_seed)
    probe = root / "probe.npz"
    np.savez(probe, x=rng.normal(0, 1, (16, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 16))
    return probe


@pytest.fixture
def conv_run(tmp_path):
    """A run folder of 3 epochs (init, 1, 2) of the conv/BN/relu/gemm model."""
    paths, expected = write_run(tmp_path / "vanilla", om.conv_bn_relu_net,
                                ["init.onnx", "epoch_001.onnx", "epoch_002.onnx"])
    return tmp_path / "vanilla", paths, expected


@pytest.fixture
def labelled_probe(tmp_path):
    """21 probe images (3, 8, 8) with labels in 0..3, as an .npz."""
    rng = np.random.default_rng(42)
    path = tmp_path / "probe.npz"
    np.savez(path, x=rng.normal(0, 1, (21, 3, 8, 8)).astype(np.float32),
             y=rng.integers(0, 4, 21))
    return path


# onnxruntime-gpu on a machine without CUDA libraries: CUDA is listed, a session asked for it
# logs a multi-line colour-coded complaint to file descriptor 2 and runs on CPU.
ORT_LOG = (
    "\x1b[1;31m2026-11-29 18:00:00.1 [E:onnxruntime:Default, provider_bridge_ort.cc:2195 "
    "TryGetProviderInfo_CUDA] /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:"
    "1778 onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : "
    "FAIL : Failed to load library libonnxruntime_providers_cuda.so with error: "
    "libcublasLt.so.13: cannot open shared object file: No such file or directory\n\x1b[m"
    "\x1b[0;93m2026-11-29 18:00:00.1 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:1013 "
    "CreateExecutionProviderFactoryInstance] Failed to create CUDAExecutionProvider. Require "
    "cuDNN 9.* and CUDA 13.*. Please install all dependencies as mentioned in the GPU "
    "requirements page, make sure they're in the PATH, and that your GPU is supported.\n\x1b[m")


@pytest.fixture
def broken_cuda(monkeypatch):
    """onnxruntime patched to list CUDA and fail to start it, as onnxruntime-gpu does here."""
    real = ort.InferenceSession
    calls = []

    def session(model, options=None, providers=None, **kw):
        calls.append(list(providers or []))
        if providers and providers[0] == runtime.CUDA:
            os.write(2, ORT_LOG.encode())
            providers = providers[1:]
        return real(model, options, providers=providers, **kw)

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: [runtime.CUDA, runtime.CPU])
    monkeypatch.setattr(ort, "InferenceSession", session)
    runtime.forget_notices()
    return calls


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto in server mode) on a free local port, for the whole
    session; the AWS_* variables point boto/s3fs at it (fake credentials, no network)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"the moto server did not start (see {log.name})") from None
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A new, empty bucket on the moto server: its ``s3://`` URL."""
    import uuid

    import fsspec

    name = f"nasprobe-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"
