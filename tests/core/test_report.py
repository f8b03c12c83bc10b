"""``nasprobe report``: one self-contained HTML file whose figures render in headless Chromium,
with the onset table and provenance of the store.

One report is written (through the command line, from a store on disk) and shared by the
tests of this module; drawing the figures is the slow part.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from PIL import Image

import nasprobe.cli.report  # noqa: F401  (registers `report` on the command group)
from nasprobe.cli import main
from nasprobe.measures.onsets import onsets
from nasprobe.plots import KINDS
from nasprobe.report.html import render_report
from nasprobe.store.reader import open_store

from .figures_data import make_tree

SOURCES = {"run-s0": "ckpt/run<0>&", "run-s1": "ckpt/run1"}


class _Page(HTMLParser):
    """Tags with their attributes, tables by id (rows of cell texts), style text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.styles: list[str] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._in_style = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr":
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        self._in_style = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_style:
            self.styles.append(data)


def _tree(loss: bool = True) -> xr.DataTree:
    tree = make_tree(n_runs=2, n_layers=3, loss=loss, n_epochs=16)
    tree.attrs["sources"] = json.dumps(SOURCES)
    return tree


def _write_store(tree: xr.DataTree, path: Path) -> None:
    """Write a synthetic tree as a zarr store that nasprobe.store.reader.open_store reads."""
    root = tree.to_dataset(inherit=False)
    root["probed"] = xr.DataArray(np.ones((root.sizes["run"], root.sizes["epoch"]), np.int8),
                                  dims=("run", "epoch"))
    nodes = {"/": root, **{n.path: n.to_dataset(inherit=False) for n in tree.subtree
                           if n is not tree}}
    xr.DataTree.from_dict(nodes).to_zarr(path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(store path, report path, report text) of `nasprobe report` on a 2-run, 3-layer store."""
    folder = tmp_path_factory.mktemp("report")
    _write_store(_tree(), folder / "store.zarr")
    out = folder / "out" / "report.html"
    result = CliRunner().invoke(main, ["report", str(folder / "store.zarr"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return folder / "store.zarr", out, out.read_text(encoding="utf-8")


def test_self_contained_with_every_figure(report):
    _, _, text = report
    page = _Page(text)
    images = [a for t, a in page.tags if t == "img"]
    assert [a["id"] for a in images] == [f"fig-{k}" for k in KINDS]
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1])))
        assert png.format == "PNG" and png.width > 100 and png.height > 50
    for tag, attrs in page.tags:  # nothing is fetched: no links, no external sources
        assert tag not in ("link", "iframe", "object", "embed", "base")
        assert not {"href", "srcset", "action", "poster"} & set(attrs), (tag, attrs)
        assert "src" not in attrs or attrs["src"].startswith("data:"), (tag, attrs)
    assert "url(" not in "".join(page.styles) and "@import" not in "".join(page.styles)
    csp = [a["content"] for t, a in page.tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]
    assert f'id="figures-rendered" data-expected="{len(KINDS)}"' in text


def _cell(value: float) -> str:
    return "none" if np.isnan(value) else str(int(round(value)))


def _check_onsets(page: _Page, ds: xr.Dataset, loss: bool) -> None:
    expected = onsets(ds)
    runs = [str(r) for r in ds["run"].values]
    loss_rows = page.tables["loss-onsets"]
    assert loss_rows == [["run", "loss onset (epoch)"]] + [
        [r, _cell(float(expected["loss_onset"].sel(run=r)))] for r in runs]
    rows = page.tables["nas-onsets"]
    assert rows[0] == ["layer"] + [f"{r}: {w}" for r in runs for w in ("NAS onset", "lead time")]
    assert [row[0] for row in rows[1:]] == [str(x) for x in ds["layer"].values]
    for row in rows[1:]:
        want = [row[0]] + [_cell(float(expected[v].sel(run=r, layer=row[0])))
                           for r in runs for v in ("nas_onset", "lead_time")]
        assert row == want
    if loss:  # the synthetic store has real onsets: the table shows numbers
        assert {row[1] for row in loss_rows[1:]} != {"none"}
        assert {c for row in rows[1:] for c in row[1:]} != {"none"}
    else:
        assert {row[1] for row in loss_rows[1:]} == {"none"}
        assert {row[i] for row in rows[1:] for i in (2, 4)} == {"none"}  # no lead time


def test_onset_table_matches_onsets(report):
    store, _, text = report
    _check_onsets(_Page(text), open_store(store).to_dataset(), loss=True)


def test_onset_table_without_loss():
    tree = _tree(loss=False)
    text = render_report(tree, kinds=())  # figures are checked above; this is the table
    _check_onsets(_Page(text), tree.to_dataset(), loss=False)
    assert 'data-expected="0"' in text


def test_provenance_and_summary(report):
    store, _, text = report
    tree = open_store(store)
    page = _Page(text)
    prov = {row[0]: row[1] for row in page.tables["provenance"][1:]}
    assert set(prov) == set(tree.attrs)
    assert json.loads(prov["sources"]) == SOURCES  # parsed back from the escaped <pre>
    assert prov["probe_sha256"] == "0" * 64 and prov["tap"] == "linear"
    assert page.tables["summary-runs"][1:] == [[r, "16 (-1 to 14)", "loss, accuracy"]
                                               for r in ("run-s0", "run-s1")]
    layers = page.tables["summary-layers"]
    assert layers[0] == ["layer", "layer_kind", "nonlinearity", "channels", "locations", "depth"]
    assert [row[0] for row in layers[1:]] == [str(x) for x in tree["layer"].values]
    assert [row[2] for row in layers[1:]] == [str(c) for c in tree["nonlinearity"].values]
    assert [row[3] for row in layers[1:]] == [str(c) for c in tree["channels"].values]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise AssertionError("no headless Chromium on PATH: run scripts/ensure-chromium.sh")


def _rendered(*paths: Path) -> list[tuple[int, int]]:
    """Per page: (figures whose image decoded, figures expected) after headless Chromium
    loaded it (one browser process per page, run at the same time)."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = [subprocess.Popen(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp}/profile{i}", "--virtual-time-budget=10000",
             "--dump-dom", path.resolve().as_uri()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i, path in enumerate(paths)]
        outs = [proc.communicate(timeout=90) for proc in procs]
    counts = []
    for proc, (stdout, stderr) in zip(procs, outs):
        assert proc.returncode == 0, stderr[-2000:]
        m = re.search(r'id="figures-rendered" data-expected="(\d+)">([^<]*)<', stdout)
        assert m, stdout[-2000:] + stderr[-2000:]
        counts.append((int(m.group(2)), int(m.group(1))))
    return counts


def test_every_figure_renders_in_chromium(report, tmp_path):
    _, path, text = report
    # negative control: a figure whose image data is broken must not be counted
    start = 'id="fig-corr" class="nasprobe-figure" alt="corr figure" src="data:image/png;base64,'
    assert text.count(start) == 1
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace(start + "iVBOR", start + "AAAAA"), encoding="utf-8")
    n = len(KINDS)
    assert _rendered(path, broken) == [(n, n), (n - 1, n)]


def test_cli_report_bad_store(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "empty"), "--out",
                                       str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "not a nasprobe store" in result.output


def test_figure_without_its_data_is_listed_not_drawn():
    tree = _tree()
    tree.dataset = tree.to_dataset(inherit=False).drop_vars(["corr_hist"])
    tree["nas_median"][{"run": 1, "epoch": slice(-3, None)}] = np.nan  # run-s1 stopped early
    if "probed" in tree.to_dataset():
        tree["probed"][{"run": 1, "epoch": slice(-3, None)}] = 0  # ... so it never committed them
    text = render_report(tree, kinds=("corr", "line"))
    page = _Page(text)
    assert [a["id"] for t, a in page.tags if t == "img"] == ["fig-line"]
    assert 'id="missing-corr"' in text and "corr_hist" in text
    assert 'data-expected="1"' in text
    assert page.tables["summary-runs"][1:] == [["run-s0", "16 (-1 to 14)", "loss, accuracy"],
                                               ["run-s1", "13 (-1 to 11)", "loss, accuracy"]]


def test_report_of_a_store_written_by_a_probe_job(conv_run, labelled_probe, tmp_path):
    """The current layout (one group per run and job, combined on read): every figure is
    embedded and the provenance names the run's checkpoint folder."""
    import nasprobe

    folder, _, _ = conv_run
    store = tmp_path / "nas.zarr"
    nasprobe.probe([folder], probe=labelled_probe, out=store, progress=False)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    page = _Page(text)
    assert [a["id"] for t, a in page.tags if t == "img"] == [f"fig-{k}" for k in KINDS]
    assert html.escape(str(folder)) in text
    for layer in nasprobe.open_store(store).to_dataset().layer.values:
        assert html.escape(str(layer)) in text
