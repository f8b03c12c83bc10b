"""Names with one home: figure kinds (nasprobe.plots.KINDS), stopping rules
(nasprobe.measures.stopping.RULES) and optional dependencies (nasprobe.errors.EXTRAS). The command line,
the report, pyproject.toml, the adapters and the error messages must say the same."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from nasprobe import plots
from nasprobe.cli import main
from nasprobe.errors import EXTRAS, MissingExtraError, NasprobeError
from nasprobe.frameworks import registry as adapters
from nasprobe.measures import stopping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OPTIONAL = PYPROJECT["optional-dependencies"]


def _choices(command: str, option: str) -> list[str]:
    param = next(p for p in main.commands[command].params if p.name == option)
    assert isinstance(param.type, click.Choice)
    return list(param.type.choices)


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement (``onnxruntime-gpu[cuda]>=1`` ...)."""
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


# -- figure kinds -----------------------------------------------------------------------------

def test_plot_and_report_offer_the_kinds_of_the_table():
    assert _choices("plot", "kind") == list(plots.KINDS)
    assert _choices("report", "kinds") == list(plots.KINDS)


@pytest.mark.parametrize("kind", list(plots.KINDS))
def test_each_kind_has_its_drawing_function(kind):
    entry = plots.KINDS[kind]
    assert entry.name == kind and entry.caption and entry.needs
    assert callable(entry.function())


def test_an_unknown_kind_is_refused_naming_every_kind():
    with pytest.raises(ValueError) as info:
        plots.draw(None, "no-such-kind")
    assert all(k in str(info.value) for k in plots.KINDS)


def test_the_cli_help_of_plot_names_the_paper_figure_of_each_kind():
    from click.testing import CliRunner

    out = CliRunner().invoke(main, ["plot", "--help"], terminal_width=400).output
    for k in plots.KINDS.values():
        assert f"{k.name}: {k.about}" in " ".join(out.split())


def test_the_docs_list_every_kind():
    table = re.findall(r"^\| `([a-z]+)` \| ", (ROOT / "docs" / "cli.md").read_text(), re.M)
    synopsis = re.search(r"nasprobe plot STORE --kind ([a-z|]+)", (ROOT / "README.md").read_text())
    assert [k for k in table if k in plots.KINDS] == list(plots.KINDS)
    assert synopsis.group(1).split("|") == list(plots.KINDS)


# -- stopping rules ---------------------------------------------------------------------------

def test_onsets_offers_the_rules_of_nasprobe_stopping():
    assert _choices("onsets", "rule") == list(stopping.RULES) == list(stopping.DEFAULTS)
    assert stopping.RECOMMENDED in stopping.RULES


def test_an_unknown_rule_is_refused_naming_every_rule():
    with pytest.raises(NasprobeError) as info:
        stopping.check_params("no-such-rule", {})
    assert all(r in str(info.value) for r in stopping.RULES)


# -- input shapes -----------------------------------------------------------------------------

def test_the_input_shape_help_names_each_adapters_axis_order():
    from nasprobe.cli.probe import INPUT_SHAPE_HELP

    said = {}
    for layout, names in re.findall(r"([A-Z](?:,[A-Z])+) for ([a-z]+(?: and [a-z]+)*)",
                                    INPUT_SHAPE_HELP):
        said.update((n, layout) for n in names.split(" and "))
    layouts = {n: a.input_layout for n, a in adapters.registered().items() if a.input_layout}
    assert layouts and {n: said.get(n) for n in layouts} == layouts


# -- extras -----------------------------------------------------------------------------------

def _distributions(module: str) -> set[str]:
    """The distributions that provide the top-level ``module`` (by the installed metadata
    where it is installed, else the module's own name)."""
    found = {d.lower() for d in importlib.metadata.packages_distributions().get(module, [])}
    found |= {module, module.replace("_", "-")}
    if module == "onnxruntime":  # onnxruntime-gpu installs the same module
        found.add("onnxruntime-gpu")
    return found


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_each_extra_named_for_a_module_installs_it(module):
    """Every extra EXTRAS names exists in pyproject.toml and requires a distribution that
    provides the module."""
    for extra in EXTRAS[module]:
        assert extra in OPTIONAL, (module, extra)
        assert _distributions(module) & {_name(r) for r in OPTIONAL[extra]}, (module, extra)


@pytest.mark.parametrize("name", adapters.names())
def test_each_adapter_extra_installs_what_it_requires(name):
    """An adapter's ``extra`` is an extra of pyproject.toml that installs each module of its
    ``requires`` (or the module comes with nasprobe itself), and EXTRAS knows every such
    optional module, so that a failed import of it names an extra."""
    adapter = adapters.get(name)
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    assert adapter.extra in OPTIONAL, (name, adapter.extra)
    extra = {_name(r) for r in OPTIONAL[adapter.extra]}
    for module in adapter.requires:
        top = module.partition(".")[0]
        if _distributions(top) & core:
            continue
        assert _distributions(top) & extra, (name, module, adapter.extra)
        assert top in EXTRAS, (name, module)


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_the_message_for_a_missing_module_names_its_extras(module):
    err = MissingExtraError.from_import(ModuleNotFoundError(f"No module named {module!r}",
                                                            name=module))
    assert err is not None
    assert all(f"nasprobe[{e}]" in str(err) for e in EXTRAS[module])


def _install_hints() -> list[tuple[Path, str]]:
    """Every ``nasprobe[extra]`` written in the code and the documentation."""
    files = [*ROOT.glob("nasprobe/**/*.py"), *ROOT.glob("adapters/**/*.py"), ROOT / "README.md",
             *ROOT.glob("docs/*.md")]
    out = []
    for f in files:
        out += [(f, m) for m in re.findall(r"nasprobe\[([A-Za-z0-9_,-]+)\]", f.read_text())]
    return out


def test_every_install_hint_in_code_and_docs_names_an_extra_of_pyproject():
    hints = _install_hints()
    assert len(hints) > 10
    # docs/adapters.md installs a made-up plug-in's extra, "myfw", as its example
    wrong = [(f.relative_to(ROOT).as_posix(), h) for f, h in hints
             if any(e not in OPTIONAL for e in h.split(",")) and h != "myfw"]
    assert wrong == []


def test_an_object_store_url_without_its_filesystem_names_the_extra(tmp_path):
    """fsspec reports a missing s3fs/gcsfs/adlfs as an ImportError raised from the
    ModuleNotFoundError: the command line still names the extra, without a traceback."""
    code = ("import sys\nsys.modules['gcsfs'] = None\nfrom nasprobe.cli import main\n"
            "sys.argv = ['nasprobe', 'info', 'gs://nasprobe-test-bucket/nas.zarr']\nmain()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "gcsfs is not installed" in res.stderr and "nasprobe[gcs]" in res.stderr
