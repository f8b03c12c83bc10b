"""``nasprobe demo``: the main job end to end on real bundled data.

Trains the papers' VanillaNet (size s) on a small split of scikit-learn's handwritten digits so
that it overfits, saves one PyTorch checkpoint per epoch, probes every epoch with nasprobe,
and draws the figures and the HTML report. Training needs the ``torch`` extra; the core itself
never imports torch: the torch adapter trains it (``train_demo`` of the adapter contract), found
through the registry like any framework.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from nasprobe.errors import NasprobeError, install_hint

__all__ = ["run_demo"]

def run_demo(out: Path, epochs: int = 30, seed: int = 0) -> dict[str, Path]:
    """Train, probe and plot into ``out``; returns the paths written.

    ``out/train`` holds the checkpoints (``run/init.pt``, ``run/epoch_NNN.pt``,
    ``run/metrics.csv``) and ``probe.npz`` (500 held-out digits with labels);
    ``out/nas.zarr`` the store; ``out/figures/*.png`` and ``out/report.html`` the results.
    """
    from nasprobe.frameworks import registry

    adapter = registry.registered().get("torch")
    if adapter is None or any(importlib.util.find_spec(m) is None for m in adapter.requires):
        raise NasprobeError("the demo trains a network with PyTorch: "
                            f"{install_hint('torch')}")
    from nasprobe.job.probe_job import probe
    from nasprobe.plots import KINDS, draw, save
    from nasprobe.report.html import write_report
    from nasprobe.store.reader import open_store
    from nasprobe.store.training_logs import read_training_log
    from nasprobe.store.writer import Store

    out = Path(out)
    print(f"nasprobe demo: training VanillaNet-s on 150 digits for {epochs} epochs ...",
          file=sys.stderr)
    trained = adapter.train_demo(out / "train", epochs=epochs, seed=seed)
    store_path = out / "nas.zarr"
    probe(
        [trained["run"]], probe=trained["probe"], out=store_path, run="vanilla",
        framework="torch", model=trained["model"], input_shape=trained["input_shape"],
    )
    log = read_training_log(trained["run"] / "metrics.csv")
    Store(store_path).write_metrics("vanilla", {"train_loss": log["train_loss"],
                                                "train_accuracy": log["train_accuracy"]})
    tree = open_store(store_path)
    written = {"store": store_path}
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        path = out / "figures" / f"{kind}.png"
        save(draw(tree, kind), path)
        written[kind] = path
    written["report"] = write_report(tree, out / "report.html")
    ds = tree.to_dataset()
    loss = ds["loss"].sel(run="vanilla")
    best = int(loss.idxmin("epoch"))
    print(f"nasprobe demo: probe loss is lowest after epoch {best} "
          f"({float(loss.min()):.3f}); median NAS per layer at epochs {int(ds.epoch[0])}, "
          f"{best}, {int(ds.epoch[-1])}:", file=sys.stderr)
    med = ds["nas_median"].sel(run="vanilla")
    for layer in ds.layer.values:
        row = med.sel(layer=layer)
        print(f"  {layer:6s} {float(row[0]):.3f}  {float(row.sel(epoch=best)):.3f}  "
              f"{float(row[-1]):.3f}", file=sys.stderr)
    for name, path in written.items():
        print(f"{name}: {path}")
    return written
