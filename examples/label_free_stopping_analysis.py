"""Analysis of examples/label_free_stopping.py: tuning on one half, tables and figures on the other.

``analyse(ds, out, meta)`` takes the study's Dataset (run, epoch, layer[, quantile]; losses
per (run, epoch); coordinates ``half``, ``train_size``, ``width``, ``regularizer``) and writes
``results.md``, ``results.json`` and two PNG figures into ``out``. Run it again on a finished
study without training: ``python examples/label_free_stopping_analysis.py OUT``.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

from nasprobe import stopping

METHODS_BASE = ("oracle", "early stopping", "full budget")


def grid(rule: str):
    """Every parameter combination of ``rule``'s grid (dicts; signal parameters included)."""
    from label_free_stopping import COMMON_GRID, GRIDS

    g = {**GRIDS[rule], **COMMON_GRID}
    keys = list(g)
    for values in itertools.product(*(g[k] for k in keys)):
        yield dict(zip(keys, values))


class Run:
    """One run's arrays (epochs >= -1) and its label-free series cache."""

    def __init__(self, ds, name):
        r = ds.sel(run=name)
        self.name = str(name)
        self.epochs = r["epoch"].values.astype(int)
        self.test_loss = r["test_loss"].values
        self.test_acc = r["test_accuracy"].values
        self.val_loss = r["val_loss"].values
        self.nas = r[["nas_median", "nas_quantile"]]
        trained = self.epochs >= 0
        self.oracle = int(self.epochs[trained][np.argmin(self.test_loss[trained])])
        self.last = int(self.epochs[-1])
        self._series: dict[float, stopping.Series] = {}
        self.meta = {k: r[k].item() for k in ("train_size", "width", "regularizer", "seed",
                                              "half")}

    def series(self, sigma: float) -> stopping.Series:
        if sigma not in self._series:
            self._series[sigma] = stopping.series(self.nas, sigma=sigma)
        return self._series[sigma]

    def at(self, epoch: int) -> tuple[float, float]:
        i = int(np.flatnonzero(self.epochs == epoch)[0])
        return float(self.test_loss[i]), float(self.test_acc[i])


def apply_rule(run: Run, rule: str, params: dict) -> tuple[int, bool]:
    """(epoch whose model is kept, fired?): the fire epoch, or the last epoch if it never fires."""
    sig = {k: params[k] for k in ("sigma",) if k in params}
    rest = {k: v for k, v in params.items() if k not in sig}
    e = stopping.stop_epoch(run.series(sig.get("sigma", 1.0)), rule, **rest)
    return (run.last, False) if e is None else (e, True)


def early_stopping(run: Run, patience: int, min_epochs: int = 0) -> tuple[int, bool, int]:
    """Validation-loss early stopping with ``patience``, watching from epoch ``min_epochs``
    (Keras' ``start_from_epoch``), best weights restored: (epoch whose model is kept = the
    best validation epoch, fired?, epochs trained - 1)."""
    best, best_e, wait = np.inf, None, 0
    for e, v in zip(run.epochs, run.val_loss):
        if e < max(min_epochs, 0):
            continue
        if v < best:
            best, best_e, wait = v, int(e), 0
        else:
            wait += 1
            if wait >= patience:
                return best_e, True, int(e)
    return best_e, False, run.last


def excess(run: Run, epoch: int) -> float:
    """Test loss at ``epoch`` minus the run's minimum test loss (nats)."""
    return run.at(epoch)[0] - run.at(run.oracle)[0]


def tune(runs: list[Run]) -> dict:
    """Best parameters per rule (and ES patience) by mean excess test loss on ``runs``."""
    chosen = {}
    for rule in stopping.RULES:
        best = None
        for params in grid(rule):
            stops = [apply_rule(r, rule, params) for r in runs]
            score = float(np.mean([excess(r, e) for r, (e, _) in zip(runs, stops)]))
            cost = float(np.mean([e for e, _ in stops]))
            if best is None or (score, cost) < best[0]:
                best = ((score, cost), params)
        chosen[rule] = {"params": best[1], "tuning_excess": best[0][0],
                        "tuning_epochs_trained": best[0][1] + 1}
    from label_free_stopping import ES_GRID

    best = None
    for values in itertools.product(*ES_GRID.values()):
        params = dict(zip(ES_GRID, values))
        score = float(np.mean([excess(r, early_stopping(r, **params)[0]) for r in runs]))
        if best is None or score < best[0]:
            best = (score, params)
    chosen["early stopping"] = {"params": best[1], "tuning_excess": best[0]}
    return chosen


def outcomes(runs: list[Run], chosen: dict) -> dict[str, list[dict]]:
    """Per method, per run: kept epoch, fired, trained epochs, test loss/accuracy, offsets."""
    out: dict[str, list[dict]] = {}
    for method in ("oracle", "early stopping", *stopping.RULES, "full budget"):
        rows = []
        for r in runs:
            if method == "oracle":
                e, fired, trained = r.oracle, True, r.oracle
            elif method == "full budget":
                e, fired, trained = r.last, False, r.last
            elif method == "early stopping":
                e, fired, trained = early_stopping(r, **chosen[method]["params"])
            else:
                e, fired = apply_rule(r, method, chosen[method]["params"])
                trained = e
            loss, acc = r.at(e)
            rows.append({"run": r.name, "epoch": e, "fired": fired, "trained": trained,
                         "test_loss": loss, "test_accuracy": acc, "excess": excess(r, e),
                         "offset": e - r.oracle, "before_bottom": fired and e < r.oracle,
                         **r.meta})
        out[method] = rows
    return out


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def summary_table(res: dict[str, list[dict]], chosen: dict) -> str:
    """Markdown table: one row per method over the report half."""
    head = ("| method | parameters (chosen on the tuning half) | test accuracy | test loss | "
            "excess test loss | stop − oracle: median [IQR] (min…max) | never fires | "
            "fires before the bottom | epochs trained |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for method, rows in res.items():
        acc = np.array([x["test_accuracy"] for x in rows])
        loss = np.array([x["test_loss"] for x in rows])
        exc = np.array([x["excess"] for x in rows])
        off = np.array([x["offset"] for x in rows])
        q1, med, q3 = np.percentile(off, [25, 50, 75])
        never = np.mean([not x["fired"] for x in rows])
        before = np.mean([x["before_bottom"] for x in rows])
        trained = np.mean([x["trained"] + 1 for x in rows])
        params = _fmt_params(chosen[method]["params"]) if method in chosen else ""
        nf = "—" if method in ("oracle", "full budget") else f"{never:.0%}"
        bb = "—" if method in ("oracle", "full budget") else f"{before:.0%}"
        lines.append(f"| {method} | {params} | {acc.mean():.3f} ± {acc.std():.3f} | "
                     f"{loss.mean():.3f} ± {loss.std():.3f} | {exc.mean():.3f} (median "
                     f"{np.median(exc):.3f}) | {med:+.0f} [{q1:+.0f}, {q3:+.0f}] "
                     f"({off.min():+d}…{off.max():+d}) | {nf} | {bb} | {trained:.1f} |")
    return "\n".join(lines)


def by_regularizer(res: dict[str, list[dict]], methods: list[str]) -> str:
    """Markdown table: mean excess test loss per regulariser and training size."""
    keys = sorted({(x["regularizer"], x["train_size"]) for x in res["oracle"]},
                  key=lambda k: (("plain", "dropout", "batchnorm").index(k[0]), k[1]))
    lines = ["| regulariser, train size | oracle epoch (median) | "
             + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for reg, n in keys:
        pick = lambda m: [x for x in res[m] if x["regularizer"] == reg and x["train_size"] == n]  # noqa: E731, B023
        oracle = np.median([x["epoch"] for x in pick("oracle")])
        cells = [f"{np.mean([x['excess'] for x in pick(m)]):.3f}" for m in methods]
        lines.append(f"| {reg}, {n} | {oracle:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(res, a: str, b: str) -> dict:
    """How often method ``a`` keeps a model with lower / equal / higher test loss than ``b``."""
    da = np.array([x["test_loss"] for x in res[a]])
    db = np.array([x["test_loss"] for x in res[b]])
    return {"better": int(np.sum(da < db - 1e-12)), "equal": int(np.sum(np.abs(da - db) <= 1e-12)),
            "worse": int(np.sum(da > db + 1e-12)), "mean_difference": float(np.mean(da - db))}


def figures(ds, runs: dict[str, Run], res, chosen, best_rule: str, out: Path) -> list[str]:
    """Example runs and the stop − oracle offsets; returns the PNG file names."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from nasprobe.plots.style import LOSS_COLOR, RC

    names = []
    with matplotlib.rc_context(RC):
        report = [x for x in res["oracle"]]
        picks = []
        for reg in ("plain", "dropout", "batchnorm"):
            for n in (150, 600):
                cand = [x["run"] for x in report if x["regularizer"] == reg and x["train_size"] == n]
                if cand:
                    picks.append(sorted(cand)[0])
        fig = Figure(figsize=(7.16, 1.7 * ((len(picks) + 1) // 2)), dpi=150)
        axes = fig.subplots((len(picks) + 1) // 2, 2, squeeze=False).ravel()
        stops = {m: {x["run"]: x for x in res[m]} for m in res}
        for ax, name in zip(axes, picks):
            r = runs[name]
            s = r.series(chosen[best_rule]["params"].get("sigma", 1.0))
            ax.plot(s.epochs, s.raw["deep"], color="#08306b", label="deep NAS")
            ax.plot(s.epochs, s.raw["shallow"], color="#6baed6", linestyle="--",
                    label="shallow NAS")
            ax.set_ylim(0, 1)
            ax.set_ylabel("median NAS")
            lax = ax.twinx()
            ok = r.epochs >= 0
            lax.plot(r.epochs[ok], r.test_loss[ok], color=LOSS_COLOR, label="test loss")
            lax.plot(r.epochs[ok], r.val_loss[ok], color=LOSS_COLOR, alpha=0.4, linestyle=":",
                     label="validation loss")
            lax.set_ylim(0, min(1.5, float(np.nanmax(r.test_loss[ok]))))
            lax.tick_params(axis="y", colors=LOSS_COLOR)
            ax.axvline(r.oracle, color=LOSS_COLOR, linestyle="--", linewidth=0.8)
            ax.axvline(stops["early stopping"][name]["epoch"], color="black", linewidth=0.8)
            b = stops[best_rule][name]
            if b["fired"]:
                ax.axvline(b["epoch"], color="#2ca02c", linewidth=1.2, linestyle="-.")
            ax.set_title(f"{name}: oracle (red --), ES (black), {best_rule} (green -.)",
                         loc="left", fontsize=6)
        for ax in axes[len(picks):]:
            ax.set_visible(False)
        handles = axes[0].get_legend_handles_labels()[0] + lax.get_legend_handles_labels()[0]
        fig.legend(handles=handles, loc="outside upper center", ncol=4, frameon=False)
        fig.set_layout_engine("constrained")
        fig.savefig(out / "label-free-stopping-examples.png")
        names.append("label-free-stopping-examples.png")

        methods = [m for m in res if m != "oracle"]
        fig = Figure(figsize=(7.16, 2.4), dpi=150)
        a1, a2 = fig.subplots(1, 2)
        rng = np.random.default_rng(0)
        for i, m in enumerate(methods):
            off = np.array([x["offset"] for x in res[m]])
            exc = np.array([x["excess"] for x in res[m]])
            jit = rng.uniform(-0.25, 0.25, off.size)
            a1.scatter(off, i + jit, s=4, color="#08306b", alpha=0.6)
            a2.scatter(exc, i + jit, s=4, color="#08306b", alpha=0.6)
            a1.plot([np.median(off)] * 2, [i - 0.35, i + 0.35], color=LOSS_COLOR)
            a2.plot([np.mean(exc)] * 2, [i - 0.35, i + 0.35], color=LOSS_COLOR)
        for a in (a1, a2):
            a.set_yticks(range(len(methods)), methods)
            a.invert_yaxis()
        a2.set_yticklabels([])
        a1.axvline(0, color="grey", linewidth=0.6)
        a1.set_xlabel("stop epoch − oracle epoch (red: median)")
        a2.set_xlabel("test loss at stop − minimum test loss, nats (red: mean)")
        fig.set_layout_engine("constrained")
        fig.savefig(out / "label-free-stopping-offsets.png")
        names.append("label-free-stopping-offsets.png")
    return names


def analyse(ds, out: Path, meta: dict, history: list[dict] | None = None) -> dict:
    """Tune on the tuning half, evaluate on the report half; write results.md/json, figures.
    ``history``: every invocation's meta (:func:`invocations`), for the provenance lines."""
    out = Path(out)
    runs = {str(n): Run(ds, n) for n in ds["run"].values}
    tuning = [r for r in runs.values() if r.meta["half"] == "tuning"]
    report = [r for r in runs.values() if r.meta["half"] == "report"]
    chosen = tune(tuning)
    res = outcomes(report, chosen)
    rules = list(stopping.RULES)
    best_rule = min(rules, key=lambda m: np.mean([x["excess"] for x in res[m]]))
    cmp_es = paired(res, best_rule, "early stopping")
    cmp_budget = paired(res, best_rule, "full budget")
    names = figures(ds, runs, res, chosen, best_rule, out)
    provenance = [
        f"- {m['date']} on {m['machine']}: `{m['command']}`; trained "
        f"{m.get('trained_runs', '?')} runs ({m.get('reused_runs', '?')} already there) in "
        f"{m['train_seconds']:.0f} s with {m['jobs']} processes, load average "
        f"{m['load_at_start']} at the start, {m['load_at_end']} at the end"
        for m in (history or [meta])]
    text = [
        "Invocations on this output folder (the last one wrote these tables):", "",
        *provenance, "",
        f"{meta['epochs']} epochs, {meta['seeds']} seeds, {len(tuning)} tuning runs, "
        f"{len(report)} report runs.",
        "",
        "Report half (every number below; parameters chosen on the tuning half):",
        "",
        summary_table(res, chosen),
        "",
        "Mean excess test loss (nats) per regulariser and training size, report half:",
        "",
        by_regularizer(res, ["early stopping", *rules, "full budget"]),
        "",
        f"Best rule on the report half: **{best_rule}**. Against early stopping, run by run: "
        f"lower test loss in {cmp_es['better']}, equal in {cmp_es['equal']}, higher in "
        f"{cmp_es['worse']} of {len(report)} runs (mean difference "
        f"{cmp_es['mean_difference']:+.4f} nats). Against the full budget: lower in "
        f"{cmp_budget['better']}, equal in {cmp_budget['equal']}, higher in "
        f"{cmp_budget['worse']} (mean {cmp_budget['mean_difference']:+.4f} nats).",
        "",
        "Tuning half, in sample (the chosen parameters on the runs they were chosen on): "
        + "; ".join(f"{m} {c['tuning_excess']:.4f} nats"
                    + (f", {c['tuning_epochs_trained']:.1f} epochs trained"
                       if "tuning_epochs_trained" in c else "")
                    for m, c in chosen.items())
        + f"; full budget {np.mean([excess(r, r.last) for r in tuning]):.4f} nats.",
        "",
        "Check with the halves swapped (parameters chosen on the report half, numbers from "
        "the tuning half):",
        "",
        swapped_table(tuning, report),
        "",
        *[f"![{n}]({n})" for n in names],
    ]
    (out / "results.md").write_text("\n".join(text) + "\n")
    result = {"meta": meta, "chosen": chosen, "best_rule": best_rule,
              "vs_early_stopping": cmp_es, "vs_full_budget": cmp_budget,
              "report": res}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=_json))
    return result


def swapped_table(tuning: list[Run], report: list[Run]) -> str:
    """The check with the halves swapped: tune on ``report``, evaluate on ``tuning``."""
    chosen = tune(report)
    res = outcomes(tuning, chosen)
    lines = ["| method (tuned on the report half) | mean excess test loss | median | never "
             "fires | fires before the bottom |", "|---|---|---|---|---|"]
    for method, rows in res.items():
        exc = np.array([x["excess"] for x in rows])
        fixed = method in ("oracle", "full budget")
        never = "—" if fixed else f"{np.mean([not x['fired'] for x in rows]):.0%}"
        before = "—" if fixed else f"{np.mean([x['before_bottom'] for x in rows]):.0%}"
        lines.append(f"| {method} | {exc.mean():.3f} | {np.median(exc):.3f} | {never} | "
                     f"{before} |")
    return "\n".join(lines)


def invocations(out: Path, meta: dict) -> list[dict]:
    """Every invocation of the study on ``out`` so far, this one (``meta``) last; kept in
    ``out/invocations.json``."""
    path = Path(out) / "invocations.json"
    seen = json.loads(path.read_text()) if path.exists() else []
    seen.append(meta)
    path.write_text(json.dumps(seen, indent=1))
    return seen


def _json(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return str(v)


if __name__ == "__main__":
    import xarray as xr

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    folder = Path(sys.argv[1])
    history = json.loads((folder / "invocations.json").read_text())
    analyse(xr.open_zarr(folder / "series.zarr").load(), folder, history[-1], history)
    print(f"wrote {folder / 'results.md'}")
