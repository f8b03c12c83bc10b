"""Hostile images in a probe folder: only the PNG and JPEG decoders run (an EPS, TIFF or GIF
named .png is refused; Ghostscript is never called), and a decompression bomb is refused from
its header. Exit 2 naming the image; an existing store unchanged."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from tests.hostile import assert_refused, make_store, probe, tree_digest

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 8 8
%%EndComments
newpath 0 0 moveto 8 8 lineto stroke
showpage
"""


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` RGB pixels (one tiny IDAT)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def other_format(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("images")
    store, _ = make_store(tmp)
    return tmp, store


CASES = {
    "eps": (lambda: EPS, "not a readable PNG or JPEG image"),
    "tiff": (lambda: other_format("TIFF"), "not a readable PNG or JPEG image"),
    "gif": (lambda: other_format("GIF"), "not a readable PNG or JPEG image"),
    "bomb": (lambda: png_header(20000, 20000), "too large to decode safely"),
    "big": (lambda: png_header(7000, 7000), "over the limit of 40,000,000 pixels"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_hostile_image_is_refused(world, monkeypatch, kind):
    tmp, store = world
    make, fragment = CASES[kind]
    content = make()
    called = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: called.append(a))
    folder = tmp / kind
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"ok{i}.png")
    bad = folder / "x.png"
    bad.write_bytes(content)
    before = tree_digest(store)
    res = probe(tmp / "good", "--probe", folder, "--out", store, "--force")
    assert_refused(res, bad, fragment)
    assert not called
    assert tree_digest(store) == before
