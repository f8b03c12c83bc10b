"""The package as users install it, not as the editable install of the test suite sees it.

Builds the sdist and the wheel with ``python -m build`` (the wheel from the sdist) out of a
copy of the repository's files, checks their metadata with ``twine check --strict`` and their
contents, then, in a new virtual environment outside the clone and from a folder outside it:

1. the wheel alone (no onnxruntime): ``import nasprobe`` works, ``nasprobe --version`` prints
   the package's version, ``nasprobe probe`` exits 2 naming the extras ``cpu`` and ``gpu``;
2. with the ``cpu`` extra: probe a small folder of ONNX checkpoints, ``info``, draw a figure,
   write the report;
3. with the ``torch`` extra: ``nasprobe demo --epochs 2``;
4. the sdist, built by pip on install: the C kernel compiles from it (``kernels.available()``).

Versions are pinned by ``requirements-dev.lock`` as pip constraints (the versions the suite is
run with; unpinned, pip would pick another torch build). One test, run in order: each step
needs the one before. Takes about a minute or two; the installs dominate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import onnx

import nasprobe
from tests.core import onnx_models as om

ROOT = Path(__file__).resolve().parents[2]


def run(args, *, cwd, env=None, ok=True, timeout=900):
    """Run a command; with ``ok`` fail the test with its output unless it exits 0."""
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    if ok:
        assert res.returncode == 0, f"{args}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


def repository_files() -> list[str]:
    """What the repository holds (tracked, or new and not ignored), as paths relative to it."""
    out = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    return [p for p in out.stdout.split("\0") if p and (ROOT / p).is_file()]


def package_dirs(files: list[str]) -> set[str]:
    """Import paths of every package of the source tree: nasprobe and its sub-packages, and
    each adapter under adapters/ (by folder: whatever has an __init__.py)."""
    found = set()
    for f in files:
        p = Path(f)
        if p.name != "__init__.py":
            continue
        parts = p.parent.parts
        if parts[0] == "adapters":
            parts = parts[1:]
        if parts and parts[0].startswith("nasprobe"):
            found.add("/".join(parts))
    return found


def write_onnx_run(folder: Path) -> Path:
    """Three epochs of a small Conv/BN/ReLU/Gemm network and a labelled probe set."""
    rng = np.random.default_rng(0)
    model, _ = om.conv_bn_relu_net(rng)
    run_dir = folder / "run"
    run_dir.mkdir(parents=True)
    for i, name in enumerate(["init.onnx", "epoch_001.onnx", "epoch_002.onnx"]):
        onnx.save(model if i == 0 else om.reweighted(model, rng), str(run_dir / name))
    np.savez(folder / "probe.npz", x=rng.normal(0, 1, (12, 3, 8, 8)).astype(np.float32),
             y=rng.integers(0, 4, 12))
    return run_dir


def test_built_package_installs_and_works(tmp_path):
    files = repository_files()
    src = tmp_path / "src"
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)

    # Build: the sdist, and the wheel from the sdist.
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, src], cwd=tmp_path)
    sdist, = dist.glob("nasprobe-*.tar.gz")
    wheel, = dist.glob("nasprobe-*.whl")
    version = nasprobe.__version__
    assert sdist.name == f"nasprobe-{version}.tar.gz"
    assert wheel.name.startswith(f"nasprobe-{version}-")
    run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], cwd=tmp_path)

    # What they hold: every package of the tree, the built kernel in the wheel, its C source
    # and the documentation in the sdist, the license in both.
    packages = package_dirs(files)
    assert {"nasprobe", "nasprobe/plots", "nasprobe/store", "nasprobe/job", "nasprobe_torch",
            "nasprobe_keras"} <= packages
    in_wheel = zipfile.ZipFile(wheel).namelist()
    for pkg in packages:
        assert f"{pkg}/__init__.py" in in_wheel, f"{pkg} is missing from the wheel"
    in_tree = [f.removeprefix("adapters/") for f in files if f.endswith(".py")]
    py_files = {f for f in in_tree if Path(f).parent.as_posix() in packages}
    assert py_files <= set(in_wheel), sorted(py_files - set(in_wheel))
    assert any(n.startswith("nasprobe/measures/ckernels.") and n.endswith(".so") for n in in_wheel)
    assert not any(n.endswith(".c") for n in in_wheel)
    assert f"nasprobe-{version}.dist-info/licenses/LICENSE" in in_wheel
    metadata = zipfile.ZipFile(wheel).read(f"nasprobe-{version}.dist-info/METADATA").decode()
    for line in ["License-Expression: MIT", "License-File: LICENSE", "Classifier: ",
                 "Project-URL: ", "Provides-Extra: cpu", "Provides-Extra: gpu"]:
        assert line in metadata, line
    in_sdist = {m.name.split("/", 1)[1] for m in tarfile.open(sdist).getmembers() if m.isfile()}
    for name in ["nasprobe/measures/ckernels.c", "nasprobe/measures/nas_kernels.c",
                 "nasprobe/measures/ckernels.h", "setup.py", "pyproject.toml", "LICENSE", "README.md",
                 "docs/README.md", "docs/measures.md", "docs/cli.md", "docs/store.md"]:
        assert name in in_sdist, name
    sources = {f for f in files if f.endswith(".py") and f.startswith(("nasprobe/", "adapters/"))}
    assert sources <= in_sdist, sorted(sources - in_sdist)

    # A new environment and a working folder, both outside the clone; nothing of the dev
    # environment leaks in (no PYTHONPATH, no site packages of another venv).
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    assert ROOT not in work.parents and ROOT not in venv.parents
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PIP_CONSTRAINT=str(ROOT / "requirements-dev.lock"), PIP_NO_INPUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    python, cli = venv / "bin" / "python", venv / "bin" / "nasprobe"

    def pip(*args):  # --no-compile: byte-compiling torch's files would double the time
        run([python, "-m", "pip", "install", "-q", "--no-compile", *args], cwd=work, env=env)

    # 1. The wheel without any extra: imports, tells its version, and asks for an extra.
    pip(wheel)
    res = run([python, "-c", "import nasprobe; print(nasprobe.__version__, nasprobe.__file__)"],
              cwd=work, env=env)
    got_version, location = res.stdout.split()
    assert got_version == version and Path(location).is_relative_to(venv)
    res = run([cli, "--version"], cwd=work, env=env)
    assert res.stdout.strip() == f"nasprobe, version {version}"
    assert run([python, "-c", "import importlib.util as u; print(u.find_spec('onnxruntime'))"],
               cwd=work, env=env).stdout.strip() == "None"
    run_dir = write_onnx_run(work / "data")
    probe_args = [cli, "probe", run_dir, "--probe", work / "data" / "probe.npz",
                  "--out", work / "nas.zarr", "--run", "onnx"]
    res = run(probe_args, cwd=work, env=env, ok=False)
    assert res.returncode == 2, res.stderr
    assert "nasprobe[cpu]" in res.stderr and "nasprobe[gpu]" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (work / "nas.zarr").exists()

    # 2. With the cpu extra: probe, info, a figure, the report.
    pip(f"{wheel}[cpu]")
    run(probe_args, cwd=work, env=env)
    info = run([cli, "info", work / "nas.zarr"], cwd=work, env=env).stdout
    assert "onnx: 3 epochs (-1..2)" in info and "conv1" in info
    run([cli, "plot", work / "nas.zarr", "--kind", "line", "--out", work / "line.png"],
        cwd=work, env=env)
    assert (work / "line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run([cli, "report", work / "nas.zarr", "--out", work / "report.html"], cwd=work, env=env)
    assert "data:image/png;base64" in (work / "report.html").read_text(encoding="utf-8")
    ds = nasprobe.open_store(work / "nas.zarr").to_dataset()  # read back by the dev install
    assert list(ds.epoch.values) == [-1, 1, 2] and list(ds.run.values) == ["onnx"]
    assert np.isfinite(ds.nas_median.values).all()

    # 3. With the torch extra: the demo, end to end.
    pip(f"{wheel}[torch]")
    run([cli, "demo", "--epochs", "2", "--out", work / "demo"], cwd=work, env=env)
    assert (work / "demo" / "report.html").is_file()
    demo = nasprobe.open_store(work / "demo" / "nas.zarr").to_dataset()
    assert list(demo.epoch.values) == [-1, 0, 1]

    # 4. From the sdist: pip builds it, compiling the C kernel from the shipped source.
    pip("--force-reinstall", "--no-deps", sdist)
    direct = run([python, "-c", "import importlib.metadata as m; "
                  "print(m.distribution('nasprobe').read_text('direct_url.json'))"],
                 cwd=work, env=env).stdout
    assert json.loads(direct)["url"].endswith(sdist.name)
    res = run([python, "-c", "import nasprobe.measures.kernels as k, nasprobe.measures.ckernels as c; "
               "print(k.available(), c.__file__)"], cwd=work, env=env)
    available, so = res.stdout.split()
    assert available == "True" and Path(so).is_relative_to(venv)
