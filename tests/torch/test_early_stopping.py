"""NASEarlyStopping in real (tiny) PyTorch and Lightning training loops; the post-hoc rule on a
store of the same run's checkpoints gives the callback's epoch."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nasprobe import stopping
from nasprobe.cli import main
from nasprobe.measures.nas import nas
from nasprobe_torch.callbacks import CheckpointWriter
from nasprobe_torch.digits import digits_splits
from nasprobe_torch.early_stopping import NASEarlyStopping
from nasprobe_torch.models import vanilla_net

KW = dict(widths=(4, 4, 8, 8, 16), in_channels=1, classes=10, input_size=16)
SPEC = "nasprobe_torch.models:vanilla_net(" + ", ".join(f"{k}={v!r}" for k, v in KW.items()) + ")"
#: deep NAS of this run saturates after ~10 epochs: a window of 3 epochs with a rise < 0.02
RULE = dict(rule="plateau", window=3, tol=0.02, sigma=0, patience=1)
EPOCHS = 15


@pytest.fixture(scope="module")
def digits():
    x_tr, y_tr, x_pr, _ = digits_splits(80, 40, seed=0)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), x_pr


def _epoch(net, opt, x, y):
    net.train()
    for idx in torch.arange(len(x)).split(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()


def test_plain_loop_stops_when_the_rule_fires_and_post_hoc_agrees(digits, tmp_path):
    x, y, probe_x = digits
    torch.manual_seed(0)
    net = vanilla_net(**KW)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    params = {k: v for k, v in RULE.items() if k != "rule"}
    stopper = NASEarlyStopping(probe_x, RULE["rule"], model=net, **params)
    writer = CheckpointWriter(tmp_path / "run", net)
    writer.save_init()
    stopper.start()
    decisions = []
    for epoch in range(EPOCHS):  # train on past the decision: the store holds more epochs
        _epoch(net, opt, x, y)
        writer.save(epoch)
        decisions.append(stopper.step(epoch))
    fired = stopper.stop_epoch
    assert fired is not None and 5 <= fired < EPOCHS - 1
    assert decisions == [e >= fired for e in range(EPOCHS)]
    series = stopper.dataset()
    assert list(series["epoch"].values) == list(range(-1, EPOCHS))
    assert list(series["layer"].values) == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]
    assert stopping.stop_epoch(series, **RULE) == fired
    assert [s["epoch"] for s in stopper.signals] == list(range(-1, EPOCHS))

    # the NAS the callback saw, recomputed independently (hook + numpy float64) at the end
    taps = {}
    hooks = [net.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: taps.__setitem__(n, o.detach().double().numpy()))
        for n in ("conv4", "fc1")]
    net.eval()
    with torch.no_grad():
        net(torch.from_numpy(probe_x))
    for h in hooks:
        h.remove()
    want = np.mean([np.median(nas(taps["conv4"], axis=1)), np.median(nas(taps["fc1"], axis=1))])
    assert stopper.signals[-1]["deep"] == pytest.approx(want, abs=1e-6)

    # post hoc, from the checkpoints through a store and the CLI
    np.save(tmp_path / "probe.npy", probe_x)
    store = tmp_path / "nas.zarr"
    import nasprobe

    nasprobe.probe([tmp_path / "run"], probe=tmp_path / "probe.npy", out=store, run="r",
                   model=SPEC, progress=False, device="cpu")
    stored = nasprobe.open_store(store).to_dataset()["nas_median"].sel(run="r")
    assert np.allclose(stored.values, series["nas_median"].values, atol=1e-4)
    res = CliRunner().invoke(main, ["onsets", str(store), "--rule", "plateau",
                                    *sum((["--param", f"{k}={v}"] for k, v in RULE.items()
                                          if k != "rule"), [])])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == f"r\t{fired}"


def test_lightning_callback_stops_the_trainer(digits):
    import lightning.pytorch as pl

    from nasprobe_torch.early_stopping import NASEarlyStoppingCallback

    x, y, probe_x = digits

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = vanilla_net(**KW)

        def training_step(self, batch, i):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    module = Module()
    params = {k: v for k, v in RULE.items() if k != "rule"}
    cb = NASEarlyStoppingCallback(probe_x, RULE["rule"], model=module.net, **params)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=20)
    trainer = pl.Trainer(max_epochs=40, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1, callbacks=[cb])
    trainer.fit(module, loader)
    fired = cb.stopping.stop_epoch
    assert fired is not None and fired < 39
    assert trainer.current_epoch == fired + 1  # stopped right after the firing epoch
    series = cb.stopping.dataset()
    assert int(series["epoch"].values[-1]) == fired
    assert stopping.stop_epoch(series, **RULE) == fired


def test_default_rule_is_the_recommended_one(digits):
    _, _, probe_x = digits
    stopper = NASEarlyStopping(probe_x, model=vanilla_net(**KW))
    assert stopper.rule == stopping.RECOMMENDED
    assert stopper.params == stopping.DEFAULTS[stopping.RECOMMENDED]
    assert NASEarlyStopping(probe_x, model=vanilla_net(**KW), patience=4).params["patience"] == 4
