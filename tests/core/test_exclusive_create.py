"""Create-only writes, the one atomic step of the lock-free store (issue 24, item 3).

Backends that do not make them exclusive are simulated with small fsspec file systems (an
in-memory one per test): one that ignores ``mode="create"`` (an S3-compatible server that
ignores ``If-None-Match``), ones that raise s3fs's ``OSError(EBUSY)`` (HTTP 409) and
``OSError(ENOSYS)`` (HTTP 501), and a local file system without hard links (``os.link``
raising ``PermissionError`` as on vfat)."""

import errno
import os

import fsspec
import numpy as np
import pytest
from click.testing import CliRunner
from fsspec.implementations.memory import MemoryFileSystem

import nasprobe
from nasprobe.cli import main
from nasprobe.store.runs import committed_epochs
from nasprobe.store.storage import location
from tests.core import onnx_models as om
from tests.core.conftest import write_run


class _Mem(MemoryFileSystem):
    """An in-memory file system of its own (not shared with ``memory://``)."""

    store: dict = {}
    pseudo_dirs = [""]
    busy = 0  # create-only writes answered EBUSY before one goes through

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        if mode == "create":
            type(self).calls = getattr(type(self), "calls", 0) + 1
            mode = self.on_create(path, value)
        return super().pipe_file(path, value, mode=mode, **kwargs)

    def on_create(self, path, value):
        return "create"


class IgnoresCreate(_Mem):
    protocol = "ignorescreate"
    store: dict = {}
    pseudo_dirs = [""]

    def on_create(self, path, value):
        return "overwrite"  # the header is ignored: the object is simply written


class NoConditional(_Mem):
    protocol = "noconditional"
    store: dict = {}
    pseudo_dirs = [""]

    def on_create(self, path, value):
        raise OSError(errno.ENOSYS, "Not Implemented (501): If-None-Match")


class Busy(_Mem):
    protocol = "busy"
    store: dict = {}
    pseudo_dirs = [""]
    left = 0

    def on_create(self, path, value):
        if type(self).left != 0:
            type(self).left -= 1
            raise OSError(errno.EBUSY, "ConditionalRequestConflict (409)")
        return "create"


for _fs in (IgnoresCreate, NoConditional, Busy):
    fsspec.register_implementation(_fs.protocol, _fs, clobber=True)


@pytest.fixture
def run(tmp_path):
    folder = tmp_path / "r"
    write_run(folder, om.conv_bn_relu_net, ["epoch_001.onnx", "epoch_002.onnx"])
    rng = np.random.default_rng(1)
    probe = tmp_path / "probe.npz"
    np.savez(probe, x=rng.normal(0, 1, (6, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 6))
    return folder, probe


def test_probe_key_shows_which_backends_are_exclusive(tmp_path, s3_bucket):
    """The once-per-store test: a local folder, S3 (moto) and the in-memory file system hold; a backend
    that ignores create-only writes, or has none, does not (and the probe object is gone)."""
    assert location(tmp_path / "s").exclusive_creates() is None
    assert location("memory://excl/s").exclusive_creates() is None
    assert location(f"{s3_bucket}/s").exclusive_creates() is None
    assert not fsspec.filesystem("s3").find(s3_bucket)
    why = location("ignorescreate://s").exclusive_creates()
    assert "second create-only write of one object succeeded" in why
    assert "no create-only write" in location("noconditional://s").exclusive_creates()
    assert not [p for p in fsspec.filesystem("ignorescreate").find("/") if "exclusive" in p]


@pytest.mark.parametrize("url", ["ignorescreate://nas.zarr", "noconditional://nas.zarr"])
def test_not_exclusive_warns_and_stays_a_single_writer(run, url):
    """A store on a backend without exclusive creates: the job warns that only one job at a
    time may write it (once), and still writes a complete store (a single writer is safe)."""
    folder, probe = run
    with pytest.warns(UserWarning, match="not exclusive on this storage.*one job at a time"):
        nasprobe.probe([folder], out=url, probe=probe, progress=False, keep_images=1)
    assert sorted(committed_epochs(location(url), "r")) == [1, 2]
    assert nasprobe.open_store(url).to_dataset()["nas_median"].notnull().all()


def test_busy_409_is_retried_then_reported(run):
    """s3fs's OSError(EBUSY) (409, another conditional write in flight): a few are retried
    and the job completes; one that never ends is exit 2 naming the object, no traceback."""
    folder, probe = run
    Busy.left = 3
    res = CliRunner().invoke(main, ["probe", str(folder), "--probe", str(probe), "--out",
                                    "busy://a.zarr"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert sorted(committed_epochs(location("busy://a.zarr"), "r")) == [1, 2]
    Busy.left = -1  # busy for ever
    res = CliRunner().invoke(main, ["probe", str(folder), "--probe", str(probe), "--out",
                                    "busy://b.zarr"])
    assert res.exit_code == 2, (res.output, res.exception)
    assert "b.zarr/.nasprobe-exclusive-" in res.stderr and "busy" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    Busy.left = 0


def test_no_hard_links_falls_back_to_o_excl(run, tmp_path, monkeypatch):
    """A local file system without hard links (os.link raises PermissionError, as vfat and
    many FUSE mounts do): the job completes through O_CREAT|O_EXCL, with no warning, and a
    second create of a marker still fails."""
    folder, probe = run

    def no_link(src, dst, *a, **k):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(src))

    monkeypatch.setattr(os, "link", no_link)
    out = tmp_path / "vfat.zarr"
    res = CliRunner().invoke(main, ["probe", str(folder), "--probe", str(probe), "--out",
                                    str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "not exclusive" not in res.stderr
    assert sorted(committed_epochs(location(out), "r")) == [1, 2]
    loc = location(out)
    assert loc.create(b"{}", "runs", "r", "commits", "9", "zarr.json")
    assert not loc.create(b"{}", "runs", "r", "commits", "9", "zarr.json")
    assert not [p for p in out.rglob("*.partial")]

