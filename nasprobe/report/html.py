"""One self-contained HTML report of a store (``nasprobe report STORE --out REPORT.html``).

The file holds, with no reference to anything outside it (no external CSS, scripts, fonts or
images; a Content-Security-Policy forbids fetching any):

* a summary: runs (epochs probed, loss/accuracy present), layers (kind, channels, locations,
  depth), and a plain warning ``<p class="warning mixed-probe-sets">`` for each run whose
  epochs were measured on different probe sets, naming which epochs used which;
* every figure kind of :data:`nasprobe.plots.KINDS` as an ``<img id="fig-<kind>"
  class="nasprobe-figure">`` with a base64 PNG ``data:`` URI; a kind the store has no data for
  is listed with the reason instead;
* the onset table of :func:`nasprobe.measures.onsets.onsets`: per run the loss onset, per (run, layer)
  the NAS onset and the lead time, in epochs, ``none`` where there is none;
* the provenance: every root attribute (JSON-valued ones such as ``sources`` pretty-printed).

A tiny inline script writes, on load, the number of figures whose image decoded
(``naturalWidth > 0``) into ``<span id="figures-rendered" data-expected="N">``, so that a
headless browser's ``--dump-dom`` shows whether every figure rendered.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from nasprobe.errors import NasprobeError
from nasprobe.plots import KINDS

__all__ = ["as_tree", "render_report", "write_report"]

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
.none { color: #888; }
.warning { background: #fff3cd; border-left: 4px solid #c90; padding: 0.4em 0.8em; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var ok = 0;
  document.querySelectorAll("img.nasprobe-figure").forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { ok += 1; }
  });
  document.getElementById("figures-rendered").textContent = String(ok);
});
"""


def as_tree(store) -> xr.DataTree:
    """A store as a DataTree: a path is opened with :func:`nasprobe.store.reader.open_store` (a
    :class:`~nasprobe.errors.StoreError` when it is not a store); a DataTree is returned as
    is; a Dataset becomes the root of a new tree."""
    if isinstance(store, xr.DataTree):
        return store
    if isinstance(store, xr.Dataset):
        return xr.DataTree(dataset=store)
    from nasprobe.store.reader import open_store

    return open_store(store)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table(table_id: str, header: list[str], rows: list[list[str]]) -> str:
    """An HTML table with an id; cells are already-escaped HTML."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _epochs_text(epochs: np.ndarray) -> str:
    if epochs.size == 0:
        return '<span class="none">none</span>'
    return f"{epochs.size} ({int(epochs.min())} to {int(epochs.max())})"


def _summary(ds: xr.Dataset) -> str:
    runs, rows = [str(r) for r in ds["run"].values], []
    for run in runs:
        if "probed" in ds:  # the store's commit flag (run, epoch)
            alive = ds["probed"].sel(run=run).values.astype(bool)
        elif "nas_median" in ds:
            alive = np.isfinite(ds["nas_median"].sel(run=run)).any("layer").values
        else:
            alive = np.ones(ds.sizes["epoch"], dtype=bool)
        probed = ds["epoch"].values[alive]
        has = [v for v in ("loss", "accuracy", "train_loss", "train_accuracy")
               if v in ds and np.isfinite(ds[v].sel(run=run)).any()]
        rows.append([_e(run), _epochs_text(np.asarray(probed)), _e(", ".join(has) or "none")])
    unit = str(ds.attrs.get("epoch_unit", "epoch"))  # "step" for Trainer checkpoints
    out = _table("summary-runs", ["run", f"{unit}s probed", "metrics"], rows)
    columns = [c for c in ("layer_kind", "nonlinearity", "channels", "locations", "depth")
               if c in ds.coords]
    layers = [[_e(layer)] + [_e(ds[c].values[i]) for c in columns]
              for i, layer in enumerate(ds["layer"].values)] if "layer" in ds.coords else []
    out += _table("summary-layers", ["layer"] + columns, layers)
    epochs = ds["epoch"].values
    return (f"<p>{len(runs)} run(s), {epochs.size} {unit}(s) "
            f"({_e(', '.join(str(int(e)) for e in epochs))}; -1 = untrained), "
            f"{len(layers)} layer(s).</p>" + out)


def _figure(tree: xr.DataTree, kind: str, dpi: int) -> tuple[str, bool]:
    """(HTML, drawn) for one figure kind."""
    import matplotlib.pyplot as plt

    from nasprobe.plots import draw

    try:
        fig = draw(tree, kind, width="double")
    except (NasprobeError, KeyError, ValueError) as exc:
        return (f'<p id="missing-{_e(kind)}"><b>{_e(kind)}</b>: not drawn '
                f'({_e(exc)}).</p>', False)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure><img id="fig-{_e(kind)}" class="nasprobe-figure" alt="{_e(kind)} figure" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{_e(kind)}</b>: '
            f"{_e(KINDS[kind].caption)}</figcaption></figure>", True)


def _onset_cell(value) -> str:
    value = float(value)
    return str(int(round(value))) if np.isfinite(value) else '<span class="none">none</span>'


def _onset_tables(ds: xr.Dataset) -> str:
    from nasprobe.measures.onsets import onsets

    table = onsets(ds)
    runs = [str(r) for r in table["run"].values]
    out = _table("loss-onsets", ["run", f"loss onset ({ds.attrs.get('epoch_unit', 'epoch')})"],
                 [[_e(r), _onset_cell(table["loss_onset"].sel(run=r))] for r in runs])
    header = ["layer"] + [f"{r}: {what}" for r in runs for what in ("NAS onset", "lead time")]
    rows = []
    for layer in table["layer"].values:
        row = [_e(layer)]
        for r in runs:
            row += [_onset_cell(table["nas_onset"].sel(run=r, layer=layer)),
                    _onset_cell(table["lead_time"].sel(run=r, layer=layer))]
        rows.append(row)
    note = (f"<p>Epochs; lead time = loss onset - NAS onset (positive: NAS rose first). "
            f"Smoothing sigma = {_e(table.attrs.get('sigma', ''))} epochs, NAS from "
            f"<code>{_e(table.attrs.get('nas_variable', ''))}</code>.</p>")
    return out + _table("nas-onsets", header, rows) + note


def _probe_set_warnings(attrs: dict) -> str:
    """A warning paragraph per run whose epochs mixed probe sets (see nasprobe.store.provenance)."""
    from nasprobe.store.provenance import mixed_probe_sets

    try:
        runs = json.loads(attrs.get("runs", "{}"))
    except (TypeError, json.JSONDecodeError):
        return ""
    notes = [mixed_probe_sets(run, p.get("probe_sets", [])) for run, p in runs.items()
             if isinstance(p, dict)]
    return "".join(f'<p class="warning mixed-probe-sets">{_e(n)}</p>' for n in notes if n)


def _provenance(attrs: dict) -> str:
    rows = []
    for key, value in attrs.items():
        if isinstance(value, str) and value[:1] in ("{", "["):  # JSON attrs: sources, runs
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if isinstance(value, (dict, list)):
            cell = f"<pre>{_e(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>"
        else:
            cell = _e(value)
        rows.append([_e(key), cell])
    if not rows:
        return "<p>No provenance recorded.</p>"
    return _table("provenance", ["attribute", "value"], rows)


def render_report(store, *, title: str | None = None, dpi: int = 110,
                  kinds: Sequence[str] | None = None) -> str:
    """The report's HTML text (see the module docstring).

    Args:
        store: a store path, its ``xarray.DataTree`` or root ``xarray.Dataset``.
        title: page title (default: the store's folder name).
        dpi: resolution of the embedded PNG figures, dots per inch.
        kinds: the figure kinds to draw, names of :data:`nasprobe.plots.KINDS` (default: all,
            in its order).
    """
    tree = as_tree(store)
    ds = tree.to_dataset(inherit=True)
    if title is None:
        title = Path(store).name if isinstance(store, (str, os.PathLike)) else "nasprobe store"
    figures = [_figure(tree, kind, dpi) for kind in (KINDS if kinds is None else kinds)]
    drawn = sum(ok for _, ok in figures)
    from nasprobe._version import __version__

    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>nasprobe report: {_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>nasprobe report: {_e(title)}</h1>",
        f'<p id="render-status">Figures rendered: <span id="figures-rendered" '
        f'data-expected="{drawn}">not checked (scripts disabled)</span> of {drawn}.</p>',
        "<h2>Summary</h2>", _probe_set_warnings(dict(tree.attrs)), _summary(ds),
        "<h2>Figures</h2>", *(text for text, _ in figures),
        "<h2>Onsets</h2>", _onset_tables(ds),
        "<h2>Provenance</h2>", _provenance(dict(tree.attrs)),
        f"<p><small>Written by nasprobe {_e(__version__)}.</small></p>",
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(store, out: str | os.PathLike, **kwargs) -> Path:
    """Write :func:`render_report` of ``store`` to ``out`` (UTF-8); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(store, **kwargs), encoding="utf-8")
    return out
