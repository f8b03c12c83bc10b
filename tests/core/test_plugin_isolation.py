"""A broken plug-in never breaks nasprobe: not ``--help``, not ``info``, not an ONNX probe.

Two made-up plug-ins are installed for real (a ``*.dist-info`` with ``entry_points.txt`` on
``PYTHONPATH``), so that the command line finds them as it finds any installed package:
``exits`` calls ``sys.exit`` when imported, ``crashy`` imports but raises from ``claims()`` and
``companions()``. Each command runs in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.hostile import make_store, write_onnx_run, write_probe

EXITS = "import sys\nsys.exit('nasprobe_exits: refusing to import')\n"
CRASHY = textwrap.dedent("""
    from nasprobe.contract import BaseAdapter

    class Crashy(BaseAdapter):
        name = "crashy"
        extensions = (".crashy",)

        def claims(self, path):
            raise RuntimeError("crashy claims() is broken")

        def companions(self, files):
            raise ValueError("crashy companions() is broken")

    adapter = Crashy()
""")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder to put on PYTHONPATH holding the two plug-ins and their metadata."""
    root = tmp_path_factory.mktemp("site")
    for mod, name, code in (("nasprobe_exits", "exits", EXITS),
                            ("nasprobe_crashy", "crashy", CRASHY)):
        (root / f"{mod}.py").write_text(code)
        info = root / f"{mod}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {mod}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[nasprobe.adapters]\n{name} = {mod}:adapter\n")
    return root


def _nasprobe(site: Path, *args, disable: str | None = None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.getcwd()]),
               PYTHONWARNINGS="default")
    env.pop("NASPROBE_DISABLE_PLUGINS", None)
    if disable is not None:
        env["NASPROBE_DISABLE_PLUGINS"] = disable
    return subprocess.run([sys.executable, "-m", "nasprobe", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_the_plugins_are_found(site):
    code = "from nasprobe.frameworks import registry; print(registry.names())"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.getcwd()]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "'crashy'" in out.stdout and "'exits'" in out.stdout, out


def test_help_and_info_import_no_plugin(site, tmp_path):
    res = _nasprobe(site, "probe", "--help")
    assert res.returncode == 0, res.stderr
    assert "--framework" in res.stdout and "crashy" in res.stdout  # a choice, from metadata
    assert "refusing" not in res.stderr + res.stdout
    store, _ = make_store(tmp_path)
    res = _nasprobe(site, "info", store)
    assert res.returncode == 0, res.stderr
    assert "good" in res.stdout and "plug-in" not in res.stderr


def test_an_onnx_probe_goes_on_and_names_the_broken_plugins(site, tmp_path):
    write_onnx_run(tmp_path / "run")
    probe = write_probe(tmp_path / "p.npz")
    res = _nasprobe(site, "probe", tmp_path / "run", "--probe", probe, "--out", tmp_path / "s.zarr")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "s.zarr" / "zarr.json").is_file()
    err = res.stderr
    assert "plug-in 'exits' (nasprobe_exits:adapter) failed in import: SystemExit" in err, err
    assert "plug-in 'crashy'" in err and "crashy claims() is broken" in err, err
    assert "NASPROBE_DISABLE_PLUGINS=crashy" in err
    assert "Traceback" not in err


def test_plugins_can_be_turned_off(site, tmp_path):
    write_onnx_run(tmp_path / "run")
    probe = write_probe(tmp_path / "p.npz")
    res = _nasprobe(site, "probe", tmp_path / "run", "--probe", probe, "--out",
                    tmp_path / "s.zarr", disable="exits, crashy")
    assert res.returncode == 0, res.stderr
    assert "plug-in" not in res.stderr, res.stderr
    res = _nasprobe(site, "probe", tmp_path / "run", "--probe", probe, "--out",
                    tmp_path / "t.zarr", "--framework", "crashy", disable="all")
    assert res.returncode == 2
    assert "'crashy' is not one of 'auto', 'onnx'" in res.stderr, res.stderr


def test_a_disabled_plugin_is_named_as_such(monkeypatch):
    from nasprobe.errors import NasprobeError
    from nasprobe.frameworks import registry as adapters

    monkeypatch.setenv("NASPROBE_DISABLE_PLUGINS", "keras")
    adapters.reset()
    try:
        assert "keras" not in adapters.names() and "torch" in adapters.names()
        with pytest.raises(NasprobeError, match="'keras' .NASPROBE_DISABLE_PLUGINS turns it off"):
            adapters.get("keras")
    finally:
        monkeypatch.delenv("NASPROBE_DISABLE_PLUGINS")
        adapters.reset()
    assert "keras" in adapters.names()


def test_choosing_a_broken_plugin_is_an_error_naming_it(site, tmp_path):
    write_onnx_run(tmp_path / "run")
    res = _nasprobe(site, "probe", tmp_path / "run", "--probe", write_probe(tmp_path / "p.npz"),
                    "--out", tmp_path / "s.zarr", "--framework", "exits")
    assert res.returncode == 2, res.stderr
    assert "framework 'exits': its plug-in failed (import: SystemExit" in res.stderr
