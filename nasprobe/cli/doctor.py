"""``nasprobe doctor``: what a bug report needs, in a few lines.

nasprobe and Python; the onnxruntime package (``onnxruntime`` or ``onnxruntime-gpu``) and its
version; each execution provider it lists and whether a session on it really starts (the
reason in one line when not); the compiled NAS kernel and the checkout it was built in; the
frameworks (torch, keras, jax, transformers for Hugging Face folders) and Dask that are
installed. Versions come from package metadata, so no framework is imported.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import click

from nasprobe._version import __version__
from nasprobe.errors import install_hint

__all__ = ["doctor", "report", "provider_status"]

#: packages whose versions are shown, by line
_STACK = [("numpy", ["numpy"]), ("onnx", ["onnx"]), ("xarray / zarr", ["xarray", "zarr"]),
          ("torch", ["torch"]), ("keras", ["keras"]), ("jax", ["jax", "jaxlib"]),
          ("hf", ["transformers", "safetensors"]), ("dask", ["dask", "distributed"])]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tiny_model() -> bytes:
    """A one-node ONNX model (y = x + x) to start sessions with."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "doctor", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def provider_status() -> list[tuple[str, str | None]]:
    """Each provider onnxruntime lists, with None when a session on it starts and runs, else
    one line saying why not. Sessions fall back to CPU silently, so what runs is read back."""
    import numpy as np
    import onnxruntime as ort

    from nasprobe.job.runtime import CPU, new_session

    model = _tiny_model()
    out = []
    for p in ort.get_available_providers():
        try:
            sess, reason = new_session(model, [p] if p == CPU else [p, CPU])
            if reason is None:
                sess.run(None, {"x": np.ones(1, np.float32)})
        except Exception as exc:  # noqa: BLE001 - any failure is the answer
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        out.append((p, reason))
    return out


def _kernel_line() -> str:
    from nasprobe.measures import kernels

    if not kernels.available():
        return ("not built (no C compiler at install time?): host NAS falls back to numpy, "
                "--nas-on auto keeps NAS in the graph")
    return f"built, {kernels.extension_file()}, {kernels.simd()}"


def _streams_line() -> str:
    from nasprobe.cpus import usable_cpus
    from nasprobe.job.pipeline import cpu_streams

    cpus = usable_cpus()
    streams, threads = cpu_streams(cpus)
    return (f"{streams} stream{'s' if streams > 1 else ''} of {threads} thread"
            f"{'s' if threads > 1 else ''} ({cpus} usable CPU{'s' if cpus > 1 else ''})")


def report() -> list[tuple[str, str]]:
    """``(label, text)`` lines of ``nasprobe doctor``."""
    lines = [("nasprobe", f"{__version__} ({Path(__file__).resolve().parents[1]})"),
             ("python", f"{platform.python_version()} ({sys.executable}), "
                        f"{platform.system()} {platform.machine()}")]
    ort_dists = [(d, _version(d)) for d in ("onnxruntime", "onnxruntime-gpu")]
    ort_dists = [f"{d} {v}" for d, v in ort_dists if v]
    try:
        import onnxruntime as ort
    except ImportError:
        lines.append(("onnxruntime", f"not installed: {install_hint('onnxruntime')}"))
    else:
        lines.append(("onnxruntime", f"{', '.join(ort_dists) or 'unknown package'} "
                                     f"(imports as {ort.__version__})"))
        if len(ort_dists) > 1:
            lines.append(("  warning", "both onnxruntime and onnxruntime-gpu are installed; "
                                       "they share one module: uninstall one"))
        for p, reason in provider_status():
            lines.append((f"  {p}", "works" if reason is None
                          else f"listed, does not start: {reason}"))
    lines.append(("C kernel", _kernel_line()))
    lines.append(("CPU probe epochs", _streams_line()))
    for label, dists in _STACK:
        found = [f"{d} {v}" for d in dists if (v := _version(d))]
        lines.append((label, ", ".join(found) if found else "not installed"))
    return lines


@click.command("doctor")
def doctor() -> None:
    """Print versions, execution providers (tried, not just listed) and the C kernel: what a
    bug report needs."""
    lines = report()
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        click.echo(f"{label:<{width}}  {text}")
