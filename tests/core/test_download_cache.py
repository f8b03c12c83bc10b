"""Remote checkpoint folders and probe sets in the download cache (issue 24, items 1 and 4),
against a real S3 server (moto on a free local port, the ``s3_bucket`` fixture): keys that
would escape the cache are refused, a rewritten object is fetched again even when its size
stays, and the default cache is private to its user."""

import os
import stat

import boto3
import fsspec
import numpy as np
from click.testing import CliRunner

import nasprobe
from nasprobe.cli import main
from nasprobe.store.download_cache import cache_dir, local_copy
from tests.core import onnx_models as om
from tests.core.conftest import write_run


def _client():
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])


def _probe_set(path, seed):
    rng = np.random.default_rng(seed)
    np.save(path, rng.normal(0, 1, (6, 3, 8, 8)).astype(np.float32))
    return path


def test_keys_with_dotdot_or_absolute_never_leave_the_cache(s3_bucket, tmp_path, monkeypatch):
    """A bucket whose checkpoint folder lists ``run1/../../../pwned.txt``: the probe exits 2
    naming the key before any model is read, and nothing is written above the cache. A key
    ``run2//abs.txt`` (relative key ``/abs.txt``, which joined onto a path is absolute) is
    refused too; ``run3/sub/./x.txt`` and ``run3/sub//y.txt`` are normalised and land inside
    the run's copy."""
    folder = tmp_path / "src"
    write_run(folder, om.conv_bn_relu_net, ["epoch_001.onnx", "epoch_002.onnx"])
    bucket = s3_bucket[len("s3://"):]
    s3 = _client()
    for name in ("run1", "run2"):
        for f in sorted(folder.iterdir()):
            s3.put_object(Bucket=bucket, Key=f"{name}/{f.name}", Body=f.read_bytes())
    s3.put_object(Bucket=bucket, Key="run1/../../../pwned.txt", Body=b"owned")
    s3.put_object(Bucket=bucket, Key="run2//abs.txt", Body=b"absolute")
    s3.put_object(Bucket=bucket, Key="run3/sub/./x.txt", Body=b"x")
    s3.put_object(Bucket=bucket, Key="run3/sub//y.txt", Body=b"y")
    cache = tmp_path / "a" / "b" / "c" / "cache"
    monkeypatch.setenv("NASPROBE_CACHE", str(cache))
    probe = _probe_set(tmp_path / "probe.npy", 0)
    res = CliRunner().invoke(main, ["probe", f"{s3_bucket}/run1", "--probe", str(probe),
                                    "--out", str(tmp_path / "nas.zarr")])
    assert res.exit_code == 2, (res.output, res.exception)
    assert "'../../../pwned.txt'" in res.stderr and "refused" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not [p for p in tmp_path.rglob("pwned.txt")], list(tmp_path.rglob("*"))
    assert not (tmp_path / "nas.zarr").exists()
    res = CliRunner().invoke(main, ["probe", f"{s3_bucket}/run2", "--probe", str(probe),
                                    "--out", str(tmp_path / "nas.zarr")])
    assert res.exit_code == 2 and "'/abs.txt' is absolute" in res.stderr, res.stderr
    assert not os.path.exists("/abs.txt")
    copy = local_copy(f"{s3_bucket}/run3")
    assert (copy / "sub" / "x.txt").read_bytes() == b"x"
    assert (copy / "sub" / "y.txt").read_bytes() == b"y"
    assert str(copy.resolve()).startswith(str(cache.resolve()) + os.sep)


def test_same_size_rewrite_is_fetched_again(s3_bucket, tmp_path, monkeypatch):
    """A probe set and a checkpoint rewritten on S3 with other bytes of the same size (the
    usual case for checkpoints of one architecture): a second probe into a new store uses the
    new bytes — its probe-set hash and NAS values are those of a local probe of the new
    files — and a checkpoint deleted on S3 is no longer probed from the cache."""
    monkeypatch.setenv("NASPROBE_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("s3")
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    write_run(v1, om.conv_bn_relu_net, ["epoch_001.onnx", "epoch_002.onnx", "epoch_003.onnx"],
              seed=1)
    write_run(v2, om.conv_bn_relu_net, ["epoch_001.onnx", "epoch_002.onnx"], seed=2)
    assert (v1 / "epoch_002.onnx").stat().st_size == (v2 / "epoch_002.onnx").stat().st_size
    p1, p2 = _probe_set(tmp_path / "p1.npy", 1), _probe_set(tmp_path / "p2.npy", 2)
    assert p1.stat().st_size == p2.stat().st_size
    url = f"{s3_bucket}/ck/run"
    for f in sorted(v1.iterdir()):
        fs.put_file(str(f), f"{url}/{f.name}")
    fs.put_file(str(p1), f"{s3_bucket}/probe.npy")

    def run(out):
        res = CliRunner().invoke(main, ["probe", url, "--probe", f"{s3_bucket}/probe.npy",
                                        "--out", str(out), "--keep-images", "0"])
        assert res.exit_code == 0, (res.output, res.exception)
        return nasprobe.open_store(out).to_dataset()

    def local(folder, probe, out):
        nasprobe.probe([folder], out=out, probe=probe, keep_images=0, run="run", progress=False)
        return nasprobe.open_store(out).to_dataset()

    first = run(tmp_path / "one.zarr")
    want1 = local(v1, p1, tmp_path / "local1.zarr")
    assert first.attrs["probe_sha256"] == want1.attrs["probe_sha256"]
    np.testing.assert_array_equal(first["nas_median"].values, want1["nas_median"].values)
    assert first["epoch"].values.tolist() == [1, 2, 3]
    for f in sorted(v2.iterdir()):  # same names, same sizes, other weights
        fs.put_file(str(f), f"{url}/{f.name}")
    fs.rm(f"{url}/epoch_003.onnx")
    fs.put_file(str(p2), f"{s3_bucket}/probe.npy")
    second = run(tmp_path / "two.zarr")
    want2 = local(v2, p2, tmp_path / "local2.zarr")
    assert second.attrs["probe_sha256"] == want2.attrs["probe_sha256"] != want1.attrs["probe_sha256"]
    assert second["epoch"].values.tolist() == [1, 2]
    np.testing.assert_array_equal(second["nas_median"].values, want2["nas_median"].values)
    assert not np.allclose(first["nas_median"].values[:, :2], want2["nas_median"].values)


def test_default_cache_is_private_per_user(s3_bucket, tmp_path, monkeypatch):
    """Without NASPROBE_CACHE the cache is $XDG_CACHE_HOME/nasprobe (else ~/.cache/nasprobe),
    made with mode 0700 whatever the umask; a cache folder owned by another user is refused
    with exit 2."""
    monkeypatch.delenv("NASPROBE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "nasprobe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "nasprobe"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fsspec.filesystem("s3").pipe_file(f"{s3_bucket}/x.bin", b"secret weights")
    old = os.umask(0o022)
    try:
        copy = local_copy(f"{s3_bucket}/x.bin")
    finally:
        os.umask(old)
    assert copy.read_bytes() == b"secret weights"
    root = tmp_path / "xdg" / "nasprobe"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert str(copy).startswith(str(root) + os.sep)
    # Seen by another user (another uid), the same folder is refused before any download.
    write_run(tmp_path / "src", om.conv_bn_relu_net, ["epoch_001.onnx"])
    fsspec.filesystem("s3").put_file(str(tmp_path / "src" / "epoch_001.onnx"),
                                     f"{s3_bucket}/ck/epoch_001.onnx")
    uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    res = CliRunner().invoke(main, ["probe", f"{s3_bucket}/ck", "--probe",
                                    str(_probe_set(tmp_path / "probe.npy", 0)),
                                    "--out", str(tmp_path / "s.zarr")])
    assert res.exit_code == 2, (res.output, res.exception)
    assert str(root) in res.stderr and "another user" in res.stderr, res.stderr
