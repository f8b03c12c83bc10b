"""nasprobe_torch.callbacks: checkpoint folders nasprobe can read, Lightning callback, live NAS."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasprobe.frameworks.checkpoints import parse_epoch
from nasprobe.measures.nas import nas
from nasprobe.report.event_writer import heatmap_scale
from nasprobe.store.training_logs import read_training_log
from nasprobe_torch.callbacks import CheckpointWriter, LiveNAS


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Conv2d(3, 4, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 2))


def test_checkpoint_writer(tmp_path):
    net = small_net()
    w = CheckpointWriter(tmp_path / "run", net, every=2)
    w.save_init()
    written = []
    for epoch in range(4):
        with torch.no_grad():
            net[0].bias += 1.0
        written.append(w.save(epoch, {"train_loss": 1.0 / (epoch + 1), "test_loss": torch.tensor(2.0 + epoch),
                                      "train_accuracy": 0.1 * epoch, "test_accuracy": 0.05 * epoch}))
    w.save(3, {"train_loss": 9.0})  # a restart replaces the row
    assert [p is None for p in written] == [True, False, True, False]
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["epoch_001.pt", "epoch_003.pt", "init.pt", "metrics.csv"]
    assert [parse_epoch(tmp_path / "run" / f) for f in files[:3]] == [1, 3, -1]
    sd = torch.load(tmp_path / "run" / "epoch_003.pt")
    torch.testing.assert_close(sd["0.bias"], net[0].bias.detach())
    init = torch.load(tmp_path / "run" / "init.pt")
    torch.testing.assert_close(init["0.bias"] + 4.0, net[0].bias.detach())
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "3"] and rows[4][1:] == ["9.0", "", "", ""]
    logged = read_training_log(tmp_path / "run" / "metrics.csv")
    assert logged["loss"] == {0: 2.0, 1: 3.0, 2: 4.0}
    assert logged["train_loss"][1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown metrics"):
        w.save(4, {"val_loss": 1.0})


def test_lightning_callback(tmp_path):
    import lightning.pytorch as pl

    from nasprobe_torch.callbacks import CheckpointCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = small_net()

        def training_step(self, batch, i):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, i):
            x, y = batch
            out = self.net(x)
            self.log("val_loss", F.cross_entropy(out, y))
            self.log("val_acc", (out.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 1, 8, 8, generator=g), torch.arange(16) % 2)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    module = Module()
    cb_dir = tmp_path / "ckpt"
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1,
                         callbacks=[CheckpointCallback(cb_dir, model=module.net)])
    trainer.fit(module, loader, loader)
    assert sorted(p.name for p in cb_dir.iterdir()) == ["epoch_000.pt", "epoch_001.pt", "init.pt",
                                                        "metrics.csv"]
    torch.testing.assert_close(torch.load(cb_dir / "epoch_001.pt")["5.weight"], module.net[5].weight)
    logged = read_training_log(cb_dir / "metrics.csv")
    assert set(logged) == {"train_loss", "loss", "accuracy"} and set(logged["loss"]) == {0, 1}


def test_live_nas_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    net = small_net()
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(10, 1, 8, 8, generator=g)
    taps = {}
    for name in ("0", "2", "5"):
        net.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: taps.setdefault(name, []).append(o.detach().clone()))
    live = LiveNAS(net, probe, tmp_path / "tb", batch_size=4)
    expected = []
    for epoch in range(2):
        taps.clear()
        medians = live.log(epoch)
        ref = {}
        for name, axis in (("0", 1), ("2", 1), ("5", -1)):
            a = torch.cat(taps[name]).double().numpy()
            ref[name] = float(np.median(nas(a, axis)))
        assert medians == pytest.approx(ref, abs=1e-6)
        expected.append(ref)
        with torch.no_grad():
            net[2].weight.mul_(3.0)
    live.close()
    assert net.training
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    assert sorted(ea.Tags()["scalars"]) == ["nas_median/0", "nas_median/2", "nas_median/5"]
    for name in ("0", "2", "5"):
        events = ea.Scalars(f"nas_median/{name}")
        assert [e.step for e in events] == [0, 1]
        assert [e.value for e in events] == pytest.approx([r[name] for r in expected], abs=1e-6)
    images = ea.Images("nas_heatmap/2")
    k = heatmap_scale((4, 4))
    assert [(e.step, e.width, e.height) for e in images] == [(0, 4 * k, 4 * k), (1, 4 * k, 4 * k)]
    assert ea.Images("nas_heatmap/5")[0].width == heatmap_scale((1, 1))


def test_live_nas_equals_posthoc_probe(tmp_path):
    """docs/measures.md: the training-time NAS equals nasprobe's post-hoc value on the checkpoint."""
    from nasprobe.job.probe_job import probe
    from nasprobe.store.reader import open_store
    from nasprobe_torch.models import vanilla_net

    kwargs = dict(widths=(4, 4, 6, 6, 8), in_channels=1, classes=3, input_size=8)
    spec = "nasprobe_torch.models:vanilla_net(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
    torch.manual_seed(0)
    net = vanilla_net(**kwargs)
    x = np.random.default_rng(0).standard_normal((12, 1, 8, 8)).astype("float32")
    np.save(tmp_path / "probe.npy", x)
    CheckpointWriter(tmp_path / "run", net).save(0)
    live = LiveNAS(net, x, tmp_path / "tb")
    medians = live.log(0)
    live.close()
    probe([tmp_path / "run"], probe=tmp_path / "probe.npy", out=tmp_path / "store", model=spec,
          progress=False, device="cpu")
    stored = open_store(tmp_path / "store").to_dataset()["nas_median"].sel(epoch=0).squeeze()
    assert set(medians) == set(stored.layer.values) - {"fc2"}
    for layer, value in medians.items():
        assert float(stored.sel(layer=layer)) == pytest.approx(value, abs=1e-5)
