"""Probe sets: sources, layout adaptation, batching, preprocessing, hashing and errors."""

from __future__ import annotations

import hashlib
import mmap

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from nasprobe.errors import ProbeSetError
from nasprobe.probesets import ProbeSet, arrays, load_probe_set

RNG = np.random.default_rng(0)
NCHW = (None, 3, 32, 32)


def _save(tmp_path, name, x, **arrays):
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, x)
    else:
        np.savez(path, x=x, **arrays)
    return path


def _all(ps: ProbeSet) -> np.ndarray:
    return np.concatenate([x for _, x, _ in ps.batches(7)])


def _uint8(*shape):
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# ---- layout adaptation ------------------------------------------------------------------


def test_nchw_uint8_to_nchw_model_is_scaled_only(tmp_path):
    x = _uint8(10, 3, 32, 32)
    ps = load_probe_set(_save(tmp_path, "p.npy", x), NCHW)
    assert (ps.size, ps.shape, ps.layout, ps.labels) == (10, (3, 32, 32), "NCHW", None)
    out = _all(ps)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x.astype(np.float32) / 255)


def test_nhwc_probe_is_transposed_for_nchw_model(tmp_path):
    x = _uint8(5, 32, 32, 3)
    out = _all(load_probe_set(_save(tmp_path, "p.npy", x), NCHW))
    np.testing.assert_array_equal(out, np.transpose(x, (0, 3, 1, 2)).astype(np.float32) / 255)


def test_nchw_probe_is_transposed_for_nhwc_model(tmp_path):
    x = RNG.normal(size=(5, 3, 32, 32))
    ps = load_probe_set(_save(tmp_path, "p.npy", x), ("N", 32, 32, 3))
    assert ps.layout == "NHWC" and ps.shape == (32, 32, 3)
    np.testing.assert_array_equal(_all(ps), np.transpose(x, (0, 2, 3, 1)).astype(np.float32))


@pytest.mark.parametrize("shape, axis", [((None, 1, 28, 28), 1), ((None, 28, 28, 1), 3)])
def test_grayscale_gets_a_channel_axis(tmp_path, shape, axis):
    x = _uint8(4, 28, 28)
    out = _all(load_probe_set(_save(tmp_path, "p.npy", x), shape))
    np.testing.assert_array_equal(out, np.expand_dims(x, axis).astype(np.float32) / 255)


def test_symbolic_dims_use_the_probe_layout_and_channels_last_overrides(tmp_path):
    x = RNG.random((4, 8, 8, 3), dtype=np.float32)
    path = _save(tmp_path, "p.npy", x)
    ps = load_probe_set(path, (None, "C", "H", "W"))  # ambiguous -> NCHW, probe is NHWC
    assert ps.layout == "NCHW"
    np.testing.assert_array_equal(_all(ps), np.transpose(x, (0, 3, 1, 2)))
    ps = load_probe_set(path, (None, "C", "H", "W"), channels_last=True)
    assert ps.layout == "NHWC"
    np.testing.assert_array_equal(_all(ps), x)


def test_dense_and_sequence_models(tmp_path):
    x = RNG.normal(size=(6, 64))
    np.testing.assert_array_equal(_all(load_probe_set(_save(tmp_path, "a.npy", x), (None, 64))),
                                  x.astype(np.float32))
    g = _uint8(6, 8, 8)  # grayscale flattened for a dense model
    np.testing.assert_array_equal(_all(load_probe_set(_save(tmp_path, "b.npy", g), (None, 64))),
                                  g.reshape(6, 64).astype(np.float32) / 255)
    s = RNG.normal(size=(6, 20, 16)).astype(np.float32)
    ps = load_probe_set(_save(tmp_path, "c.npy", s), (None, 20, 16))
    assert ps.layout == "flat" and ps.shape == (20, 16)
    np.testing.assert_array_equal(_all(ps), s)


def test_uint16_and_bool_are_scaled(tmp_path):
    x = RNG.integers(0, 65536, size=(3, 1, 4, 4)).astype(np.uint16)
    np.testing.assert_array_equal(_all(load_probe_set(_save(tmp_path, "a.npy", x), (None, 1, 4, 4))),
                                  x.astype(np.float32) / 65535)
    b = RNG.random((3, 4, 4)) > 0.5
    np.testing.assert_array_equal(_all(load_probe_set(_save(tmp_path, "b.npy", b), (None, 1, 4, 4))),
                                  b[:, None].astype(np.float32))


# ---- sources ----------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_with_labels(tmp_path, compressed, monkeypatch):
    monkeypatch.setattr(arrays, "RESIDENT_BYTES", 0)  # map the stored members, small as they are
    x, y = _uint8(9, 32, 32, 3), RNG.integers(0, 10, 9)
    path = tmp_path / "p.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    ps = load_probe_set(path, NCHW)
    assert ps.labels.dtype == np.int64
    np.testing.assert_array_equal(ps.labels, y)
    assert ps.memory_mapped != compressed
    got = list(ps.batches(4))
    np.testing.assert_array_equal(np.concatenate([b for _, _, b in got]), y)
    np.testing.assert_array_equal(np.concatenate([a for _, a, _ in got]),
                                  np.transpose(x, (0, 3, 1, 2)).astype(np.float32) / 255)


def test_npz_one_hot_labels(tmp_path):
    y = np.array([2, 0, 1])
    ps = load_probe_set(_save(tmp_path, "p.npz", _uint8(3, 3, 32, 32), y=np.eye(3)[y]), NCHW)
    np.testing.assert_array_equal(ps.labels, y)


def test_batches_cover_every_image_once_in_order(tmp_path):
    x = np.arange(23, dtype=np.float32)[:, None] * np.ones((1, 5), np.float32)
    ps = load_probe_set(_save(tmp_path, "p.npy", x), (None, 5))
    got = list(ps.batches(5))
    assert [s for s, _, _ in got] == [0, 5, 10, 15, 20]
    assert [len(b) for _, b, _ in got] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b for _, b, _ in got]), x)
    assert [len(b) for _, b, _ in ps.batches(5, limit=12)] == [5, 5, 2]
    np.testing.assert_array_equal(ps.first(4), x[:4])
    assert len(ps.first(100)) == 23 and ps.first(0).shape == (0, 5)
    with pytest.raises(ValueError):
        next(ps.batches(0))


@pytest.mark.parametrize("resident", [0, arrays.RESIDENT_BYTES])
@pytest.mark.parametrize("suffix", ["p.npy", "p.npz"])
def test_large_arrays_are_memory_mapped_small_ones_read_and_batches_are_copies(
        tmp_path, monkeypatch, resident, suffix):
    # 50 images of 3x32x32 float32 = 614 KB: mapped when the limit is 0, read whole by default
    monkeypatch.setattr(arrays, "RESIDENT_BYTES", resident)
    x = RNG.random((50, 3, 32, 32), dtype=np.float32)
    ps = load_probe_set(_save(tmp_path, suffix, x), NCHW)
    assert ps.memory_mapped == (resident == 0)
    assert ps.sha256 == load_probe_set(_save(tmp_path, "q.npy", x), NCHW).sha256
    _, b, _ = next(ps.batches(8))
    assert b.shape == (8, 3, 32, 32) and b.flags.writeable and b.flags.c_contiguous
    b[:] = 0  # a batch is the caller's to change
    np.testing.assert_array_equal(ps.first(1), x[:1])
    np.testing.assert_array_equal(np.concatenate([a for _, a, _ in ps.batches(16)]), x)


def _digits_folder(root, per_class=3, classes=(0, 1, 2)):
    """Sorted class sub-folders of 8x8 digits scaled up to 16x16 grayscale PNGs."""
    d = load_digits()
    for c in classes:
        (root / f"class{c}").mkdir(parents=True)
        for i, img in enumerate(d.images[d.target == c][:per_class]):
            a = (img * 255 / 16).astype(np.uint8)
            Image.fromarray(a).resize((16, 16), Image.Resampling.NEAREST).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def test_folder_with_class_subfolders(tmp_path):
    root = _digits_folder(tmp_path / "digits")
    ps = load_probe_set(root, NCHW)
    assert ps.size == 9 and ps.shape == (3, 32, 32)
    np.testing.assert_array_equal(ps.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    x = _all(ps)
    assert x.shape == (9, 3, 32, 32) and x.dtype == np.float32 and ps.first(0).shape == (0, 3, 32, 32)
    with Image.open(root / "class1" / "002.png") as im:
        want = np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(x[5], want.transpose(2, 0, 1).astype(np.float32) / 255)
    gray = _all(load_probe_set(root, (None, 16, 16, 1), resize=False))
    with Image.open(root / "class0" / "000.png") as im:
        np.testing.assert_array_equal(gray[0, ..., 0], np.asarray(im).astype(np.float32) / 255)


def test_folder_labels_csv(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for name in ("b.png", "a.png", "c.jpg"):
        Image.fromarray(_uint8(12, 12, 3)).save(root / name)
    (root / "labels.csv").write_text("filename,label\nc.jpg,7\na.png,3\nb.png,0\n")
    ps = load_probe_set(root, (None, 12, 12, 3))
    np.testing.assert_array_equal(ps.labels, [3, 0, 7])  # files sorted: a, b, c
    (root / "labels.csv").write_text("a.png,dog\nb.png,cat\nc.jpg,dog\n")
    np.testing.assert_array_equal(load_probe_set(root, (None, 12, 12, 3)).labels, [1, 0, 1])
    (root / "labels.csv").unlink()
    assert load_probe_set(root, (None, 12, 12, 3)).labels is None


def test_mean_and_std(tmp_path):
    x = _uint8(5, 32, 32, 3)
    path = _save(tmp_path, "p.npy", x)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    base = np.transpose(x, (0, 3, 1, 2)).astype(np.float32) / 255
    want = (base - np.float32(mean).reshape(1, 3, 1, 1)) / np.float32(std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(_all(load_probe_set(path, NCHW, mean=mean, std=std)), want, rtol=1e-6)
    np.testing.assert_allclose(_all(load_probe_set(path, (None, 32, 32, 3), mean=0.5, std=0.25)),
                               (x.astype(np.float32) / 255 - 0.5) / 0.25, rtol=1e-5, atol=1e-6)


# ---- hashing ----------------------------------------------------------------------------


def test_sha256_tracks_data_and_preprocessing(tmp_path):
    x = _uint8(6, 3, 32, 32)
    a = load_probe_set(_save(tmp_path, "a.npy", x), NCHW).sha256
    assert len(a) == 64
    assert load_probe_set(tmp_path / "a.npy", NCHW).sha256 == a
    assert load_probe_set(_save(tmp_path, "copy.npy", x.copy()), NCHW).sha256 == a
    assert load_probe_set(_save(tmp_path, "a.npz", x), NCHW).sha256 == a  # same x bytes
    assert load_probe_set(tmp_path / "a.npy", NCHW, mean=0.0, std=1.0).sha256 == a  # no-op
    x2 = x.copy()
    x2[3, 1, 2, 3] ^= 1
    others = {
        load_probe_set(_save(tmp_path, "b.npy", x2), NCHW).sha256,
        load_probe_set(tmp_path / "a.npy", NCHW, mean=0.5).sha256,
        load_probe_set(tmp_path / "a.npy", NCHW, std=0.5).sha256,
        load_probe_set(tmp_path / "a.npy", (None, 32, 32, 3)).sha256,
        load_probe_set(_save(tmp_path, "y.npz", x, y=np.zeros(6, int)), NCHW).sha256,
    }
    assert a not in others and len(others) == 5


def test_sha256_of_folders(tmp_path):
    root = _digits_folder(tmp_path / "d", per_class=2, classes=(0, 1))
    a = load_probe_set(root, NCHW).sha256
    assert load_probe_set(root, NCHW).sha256 == a
    assert load_probe_set(root, (None, 3, 24, 24)).sha256 != a
    assert load_probe_set(root, (None, 3, 16, 16), resize=False).sha256 == \
        load_probe_set(root, (None, 3, 16, 16)).sha256  # 16x16 images: resize changes nothing
    assert load_probe_set(root, (None, 1, 32, 32)).sha256 != a  # L instead of RGB
    (root / "class1" / "001.png").rename(root / "class1" / "009.png")
    assert load_probe_set(root, NCHW).sha256 != a


# ---- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape, model, given, expected", [
    ((4, 28, 28), NCHW, "(4, 28, 28)", "(N, 3, 32, 32)"),           # grayscale for RGB
    ((4, 3, 28, 28), NCHW, "(4, 3, 28, 28)", "(N, 3, 32, 32)"),     # wrong H, W (never resized)
    ((4, 32, 32, 5), NCHW, "(4, 32, 32, 5)", "(N, 3, 32, 32)"),     # wrong channels
    ((4, 3, 32, 32, 1), NCHW, "(4, 3, 32, 32, 1)", "(N, 3, 32, 32)"),  # wrong rank
    ((4, 32), (None, 64), "(4, 32)", "(N, 64)"),
    ((4, 3, 8, 8), (None, 192), "(4, 3, 8, 8)", "(N, 192)"),        # no multi-channel flatten
])
def test_shape_errors_name_file_and_both_shapes(tmp_path, shape, model, given, expected):
    path = _save(tmp_path, "bad_probe.npy", np.zeros(shape, np.float32))
    with pytest.raises(ProbeSetError) as e:
        load_probe_set(path, model)
    msg = str(e.value)
    assert "bad_probe.npy" in msg and given in msg and expected in msg


@pytest.mark.parametrize("resident", [0, arrays.RESIDENT_BYTES])
def test_background_hash_is_the_same_digest_and_waits_for_the_thread(tmp_path, monkeypatch,
                                                                     resident):
    # mapped (limit 0): hashed on a thread, digest a Future until read; resident: as before
    monkeypatch.setattr(arrays, "RESIDENT_BYTES", resident)
    x = RNG.random((40, 3, 32, 32), dtype=np.float32)
    path = _save(tmp_path, "p.npy", x)
    ps = load_probe_set(path, NCHW, mean=0.5, background=True)
    assert isinstance(ps.digest, str) == (resident != 0)
    now = load_probe_set(path, NCHW, mean=0.5)
    assert isinstance(now.digest, str)
    # the same bytes as a plain sha256 of the tag, the file and the settings
    assert ps.sha256 == now.sha256 == ps.digest
    assert ps.sha256 == load_probe_set(_save(tmp_path, "p.npz", x), NCHW, mean=0.5).sha256
    assert ps.sha256 != load_probe_set(path, NCHW, background=True).sha256  # settings count
    np.testing.assert_allclose(ps.first(2), x[:2] - 0.5)


@pytest.mark.parametrize("window", [mmap.ALLOCATIONGRANULARITY, arrays.HASH_WINDOW])
def test_a_file_is_hashed_window_by_window_as_a_whole(tmp_path, window, monkeypatch):
    monkeypatch.setattr(arrays, "HASH_WINDOW", window)
    path = tmp_path / "w.npy"
    # the smallest window a memory map may start at (4 KiB here, 64 KiB on some machines):
    # the file spans six and a half of them
    values = 13 * mmap.ALLOCATIONGRANULARITY // 2 // 4
    np.save(path, RNG.random(values, dtype=np.float32))
    h = hashlib.sha256(b"tag")
    arrays.hash_file(h, "x", path)
    data = path.read_bytes()
    assert h.hexdigest() == hashlib.sha256(b"tag" + f"x:{len(data)}\n".encode() + data).hexdigest()


def test_background_check_reports_a_nan_when_the_digest_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "RESIDENT_BYTES", 0)
    x = np.zeros((30, 3, 32, 32), np.float32)
    x[17, 2, 0, 0] = np.inf
    path = _save(tmp_path, "late.npy", x)
    ps = load_probe_set(path, NCHW, background=True)  # returns before the images are checked
    for read in (ps.wait, lambda: ps.sha256):  # and says so each time it is asked
        with pytest.raises(ProbeSetError) as e:
            read()
        assert "late.npy" in str(e.value) and "image 17" in str(e.value)
    _raises(path, "non-finite", "image 17")  # without background, at once, as before


def _raises(path, *words, model=NCHW, **kw):
    with pytest.raises(ProbeSetError) as e:
        load_probe_set(path, model, **kw)
    msg = str(e.value)
    for w in (path.name,) + words:
        assert w in msg, (w, msg)


def test_data_errors(tmp_path):
    _raises(_save(tmp_path, "str.npy", np.array([["a"] * 4] * 2)), "dtype", model=(None, 4))
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    _raises(tmp_path / "obj.npy", "cannot read", model=(None, 4))
    _raises(_save(tmp_path, "int.npy", np.zeros((2, 4), np.int64)), "int64", model=(None, 4))
    x = np.zeros((3, 3, 32, 32), np.float32)
    x[2, 0, 5, 5] = np.nan
    _raises(_save(tmp_path, "nan.npy", x), "non-finite", "image 2")
    _raises(_save(tmp_path, "empty.npy", np.zeros((0, 3, 32, 32))), "empty")
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 4)))
    _raises(tmp_path / "nox.npz", "'x'", "['images']")
    _raises(_save(tmp_path, "lab.npz", np.zeros((3, 3, 32, 32)), y=np.zeros(4, int)), "(4,)", "(3,)")
    _raises(_save(tmp_path, "flab.npz", np.zeros((3, 3, 32, 32)), y=np.zeros(3) + 0.5), "float64")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    _raises(tmp_path / "junk.npy", "cannot read")
    (tmp_path / "p.txt").write_text("x")
    _raises(tmp_path / "p.txt", "unsupported")
    _raises(tmp_path / "missing.npy", "no such")
    ok = _save(tmp_path, "ok.npy", np.zeros((2, 3, 32, 32), np.float32))
    _raises(ok, "mean", "(3,)", mean=(0.1, 0.2))
    _raises(ok, "std", std=0.0)
    _raises(ok, "no sample axes", model=(None,))


def test_folder_errors(tmp_path):
    root = _digits_folder(tmp_path / "d", per_class=1, classes=(0, 1))
    _raises(root, "(16, 16, 3)", "(N, 3, 32, 32)", "resize is off", resize=False)
    Image.fromarray(_uint8(20, 20)).save(root / "class1" / "big.png")
    _raises(root / "class1", "(20, 20, 1)", "(N, 16, 16)", model=(None, 16, 16), resize=False)
    (root / "class1" / "broken.png").write_bytes(b"no png")
    with pytest.raises(ProbeSetError, match="broken.png"):
        load_probe_set(root, NCHW)
    (root / "class1" / "broken.png").unlink()
    Image.fromarray(_uint8(16, 16)).save(root / "loose.png")
    _raises(root, "sub-folders")
    (root / "labels.csv").write_text("loose.png,1\nclass0/000.png,0\n")
    with pytest.raises(ProbeSetError) as e:
        load_probe_set(root, NCHW)
    assert "labels.csv" in str(e.value) and "no label for ['class1/000.png'," in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(empty, "no images")


def _mapped_rss_kib(path) -> int:
    """Resident KiB of this process's mappings of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[:1].isalnum() and "-" in line.split()[0]:  # a mapping's header line
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_reading_a_memory_mapped_probe_set_does_not_keep_its_pages(tmp_path):
    # 4,000 images of 3x32x32 float32 = 49 MB: read batch by batch, as a probe job does.
    path = tmp_path / "big.npy"
    np.save(path, np.random.default_rng(0).normal(0, 1, (4000, 3, 32, 32)).astype(np.float32))
    ps = load_probe_set(path, (None, 3, 32, 32))
    total = 0.0
    for _, x, _ in ps.batches(256):
        total += float(x[:, 0, 0, 0].sum())
        assert _mapped_rss_kib(path) < 8 * 1024  # never more than a few batches' pages
    assert np.isfinite(total)
    assert _mapped_rss_kib(path) < 8 * 1024
