"""Without an onnxruntime extra (``pip install nasprobe`` alone) the package imports, and
``nasprobe probe`` exits 2 with a message naming the extras ``cpu`` and ``gpu`` instead of an
ImportError traceback. Simulated in a subprocess in which ``import onnxruntime`` fails."""

import subprocess
import sys

import pytest

from nasprobe import __version__
from nasprobe.errors import MissingExtraError

# `sys.modules[name] = None` makes every `import name` raise ModuleNotFoundError, as when the
# distribution is not installed.
RUN_WITHOUT = """
import sys
sys.modules[sys.argv[1]] = None
from nasprobe.cli import main
sys.argv = ["nasprobe", *sys.argv[2:]]
main()
"""


def nasprobe_without(module, *args, cwd):
    return subprocess.run([sys.executable, "-c", RUN_WITHOUT, module, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_probe_without_onnxruntime_names_the_extras(conv_run, labelled_probe, tmp_path):
    folder, _, _ = conv_run
    out = tmp_path / "nas.zarr"
    res = nasprobe_without("onnxruntime", "probe", str(folder), "--probe", str(labelled_probe),
                           "--out", str(out), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "ImportError" not in res.stderr
    assert "onnxruntime is not installed" in res.stderr
    assert "nasprobe[cpu]" in res.stderr and "nasprobe[gpu]" in res.stderr
    assert res.stdout == ""


def test_help_and_version_without_onnxruntime(tmp_path):
    res = nasprobe_without("onnxruntime", "--version", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"nasprobe, version {__version__}"
    res = nasprobe_without("onnxruntime", "probe", "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "--probe" in res.stdout


def test_demo_without_torch_names_the_torch_extra(tmp_path):
    res = nasprobe_without("torch", "demo", "--out", str(tmp_path / "demo"), "--epochs", "2",
                           cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "nasprobe[torch]" in res.stderr


@pytest.mark.parametrize("name, extras", [("onnxruntime", ("cpu", "gpu")),
                                          ("onnxruntime.capi", ("cpu", "gpu")),
                                          ("distributed", ("dask",)), ("h5py", ("keras",))])
def test_missing_extra_from_import(name, extras):
    err = MissingExtraError.from_import(ModuleNotFoundError(f"No module named {name!r}", name=name))
    assert err is not None and err.extras == extras


def test_other_import_errors_keep_their_traceback():
    assert MissingExtraError.from_import(ModuleNotFoundError("x", name="nasprobe.nothing")) is None
    assert MissingExtraError.from_import(ImportError("cannot import name 'x'")) is None
