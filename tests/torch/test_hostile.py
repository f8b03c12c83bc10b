"""Hostile PyTorch files through ``nasprobe probe``: a ``.pt2`` whose pickle would create a file
and a TorchScript archive are programs and load only with --trust-pickle, whatever their name;
without the flag the payload never runs, the exit code is 2 and an existing store is unchanged."""

from __future__ import annotations

import io
import os
import shutil
import zipfile

import pytest
import torch

from nasprobe_torch.loading import archive_kind
from tests.hostile import assert_refused, make_store, probe, tree_digest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit")


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Payload:
    """Unpickling this runs ``os.system`` (as an attacker's file would), creating ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def hostile_pt2(path, marker):
    """A genuine ``torch.export`` archive whose sample-inputs blob is a pickle calling os.system
    (``torch.export.load`` retries it with ``weights_only=False``)."""
    model = Tiny().eval()
    program = torch.export.export(model, (torch.randn(2, 3, 8, 8),))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    evil = io.BytesIO()
    torch.save(Payload(marker), evil)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, \
            zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data/sample_inputs/model.pt"):
                data = evil.getvalue()
            dst.writestr(info, data)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_torch")
    store, probe_path = make_store(tmp)
    return tmp, store, probe_path


def test_crafted_pt2_is_live(tmp_path):
    """The fixture is a real attack: torch.export.load itself runs the payload."""
    marker = tmp_path / "PWNED"
    path = hostile_pt2(tmp_path / "attack.pt2", marker)
    try:
        torch.export.load(str(path))
    except Exception:
        pass  # the payload runs before torch notices the sample inputs are not a tuple
    assert marker.exists()


@pytest.mark.parametrize("name", ["epoch_003.pt2", "epoch_003.pt", "epoch_003.pth"])
def test_pt2_needs_trust_pickle_and_payload_never_runs(world, name):
    tmp, store, probe_path = world
    run = tmp / f"pt2_{name.replace('.', '_')}"
    run.mkdir()
    marker = tmp / f"PWNED_{name}"
    path = hostile_pt2(run / name, marker)
    assert archive_kind(path) == "pt2"  # routed by content, not by name
    before = tree_digest(store)
    res = probe(run, "--probe", probe_path, "--out", store, "--framework", "torch")
    assert_refused(res, path, "torch.export program", "--trust-pickle", "runs Python code")
    assert not marker.exists()
    assert tree_digest(store) == before


def test_torchscript_needs_trust_pickle(world):
    tmp, store, probe_path = world
    run = tmp / "ts"
    run.mkdir()
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    model = Tiny().eval()
    path = run / "epoch_003.pt"
    torch.jit.trace(model, (torch.randn(1, 3, 8, 8),)).save(str(path))
    assert archive_kind(path) == "torchscript"
    before = tree_digest(store)
    res = probe(run, "--probe", probe_path, "--out", store, "--framework", "torch",
                "--input-shape", "3,8,8")
    assert_refused(res, path, "TorchScript archive", "--trust-pickle")
    assert tree_digest(store) == before
    # with the flag it is probed (a program the user vouches for)
    res = probe(run, "--probe", probe_path, "--out", store, "--framework", "torch",
                "--input-shape", "3,8,8", "--trust-pickle")
    assert res.exit_code == 0, (res.output, res.exception)
