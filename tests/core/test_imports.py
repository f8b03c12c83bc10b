"""The command line starts without the heavy libraries: each is imported by the command (or
function) that needs it. Checked in a fresh interpreter, by what lands in ``sys.modules``."""

import subprocess
import sys

HEAVY = ["matplotlib", "scipy", "torch", "keras", "dask", "jax", "tensorflow"]


def _loaded(code: str, names=HEAVY) -> list[str]:
    probe = (f"{code}\nimport sys\n"
             f"print('LOADED:', *(m for m in {names!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    return out.stdout.rsplit("LOADED:", 1)[1].split()


def test_cli_imports_no_plotting_science_or_framework_library():
    assert _loaded("import nasprobe.cli") == []
    # --help of every command builds them all: still nothing heavy.
    code = ("from click.testing import CliRunner\nfrom nasprobe.cli import main\n"
            "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "for c in main.commands:\n"
            "    assert CliRunner().invoke(main, [c, '--help']).exit_code == 0, c")
    assert _loaded(code) == []


def test_the_nas_accessor_waits_for_a_figure_to_import_matplotlib():
    code = "import xarray as xr, nasprobe\nassert hasattr(xr.Dataset, 'nas')"
    assert _loaded(code) == []
    assert _loaded("import nasprobe.accessor") == []


def test_lazy_package_attributes():
    code = ("import nasprobe, nasprobe.job.probe_job as m\n"
            "assert callable(nasprobe.probe) and nasprobe.probe is m.probe\n"
            "assert callable(nasprobe.open_store)\n"
            "from nasprobe import kernels, stopping\n"
            "assert kernels.__name__ == 'nasprobe.measures.kernels'\n"
            "assert stopping.__name__ == 'nasprobe.measures.stopping'\n"
            "assert nasprobe.nas([[1.0, 1.0]], axis=1).shape == (1,)\n"
            "import xarray as xr\nassert hasattr(xr.DataTree, 'nas')\n"
            "try:\n    nasprobe.no_such_name\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')")
    assert _loaded(code, ["matplotlib"]) == []


def test_probe_and_info_read_and_write_stores_without_xarray(conv_run, labelled_probe, tmp_path):
    """Writing a store and `nasprobe info` use zarr alone: xarray, pandas and dask (0.5 s of
    imports) are loaded only to open the xarray view."""
    folder, _, _ = conv_run
    out = tmp_path / "nas.zarr"
    view = ["xarray", "pandas", "dask"]
    for argv in (["probe", str(folder), "--probe", str(labelled_probe), "--out", str(out)],
                 ["probe", str(folder), "--probe", str(labelled_probe), "--out", str(out),
                  "--run", "again"],  # into an existing store: its layers are checked
                 ["info", str(out)]):
        code = (f"from nasprobe.cli import main\nimport sys\nsys.argv = ['nasprobe', *{argv!r}]\n"
                "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n")
        assert _loaded(code, view + HEAVY) == [], argv
