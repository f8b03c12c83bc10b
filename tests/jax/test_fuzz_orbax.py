"""Mutated Orbax metadata: every mutant is read or refused with a CheckpointError, and memory
stays bounded.

A pristine Orbax folder (zarr layout, one ``.zarray`` per tensor) is mutated many ways: each
array's declared shape, chunk shape and dtype, its fill value and compressor, random bytes of a
``.zarray`` and of ``_METADATA``, truncations. All mutants are read in one child process whose
address space is capped at 8 GiB (JAX reserves ~1.6 GB), through
:func:`nasprobe_jax.loading.read_checkpoint` with the model's shapes, as a probe job reads
them. The child reports each outcome and its peak resident memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .test_hostile_orbax import save_zarr_orbax

CHILD = r"""
import json, random, resource, shutil, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
from nasprobe.errors import CheckpointError
from nasprobe_jax.export import module_arrays
from nasprobe_jax.loading import read_checkpoint
from tests.jax.models import small_cnn

pristine, work = Path(sys.argv[1]), Path(sys.argv[2])
shapes = {k: v.shape for k, v in module_arrays(small_cnn()).items()}
rng = random.Random(20261202)
arrays = sorted(p for p in pristine.iterdir() if (p / ".zarray").is_file())

def zarray_edit(field, value):
    def edit(folder, name):
        p = folder / name / ".zarray"
        meta = json.loads(p.read_text())
        meta[field] = value(meta) if callable(value) else value
        p.write_text(json.dumps(meta))
    return edit

def flip(rel):
    def edit(folder, name):
        p = folder / (rel or name + "/.zarray")
        data = bytearray(p.read_bytes())
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        p.write_bytes(bytes(data))
    return edit

def cut(rel):
    def edit(folder, name):
        p = folder / (rel or name + "/.zarray")
        data = p.read_bytes()
        p.write_bytes(data[: rng.randrange(len(data))])
    return edit

big = [20000, 20000, 3, 4]
edits = {
    "shape_huge": zarray_edit("shape", lambda m: [20000] * len(m["shape"])),
    "shape_rank": zarray_edit("shape", big),
    "chunks_huge": zarray_edit("chunks", lambda m: [50000] * len(m["chunks"])),
    "both_huge": lambda f, n: (zarray_edit("shape", big)(f, n), zarray_edit("chunks", big)(f, n)),
    "chunks_one": zarray_edit("chunks", lambda m: [1] * len(m["chunks"])),
    "chunks_zero": zarray_edit("chunks", lambda m: [0] * len(m["chunks"])),
    "shape_negative": zarray_edit("shape", lambda m: [-1] * len(m["shape"])),
    "dtype_c16": zarray_edit("dtype", "<c16"),
    "dtype_void": zarray_edit("dtype", "|V100000000"),
    "dtype_str": zarray_edit("dtype", "<U100000000"),
    "dtype_int": zarray_edit("dtype", "<i8"),
    "fill": zarray_edit("fill_value", 1e308),
    "compressor": zarray_edit("compressor", {"id": "nope"}),
    "no_compressor": zarray_edit("compressor", None),
    "order_f": zarray_edit("order", "F"),
    "zarray_flip": flip(None),
    "zarray_cut": cut(None),
    "metadata_flip": flip("_METADATA"),
    "metadata_cut": cut("_METADATA"),
}
out = []
for kind, edit in edits.items():
    for array in rng.sample(arrays, 3):
        folder = work / f"{kind}-{array.name}"
        shutil.copytree(pristine, folder)
        edit(folder, array.name)
        try:
            read_checkpoint(folder, shapes)
            result = "ok"
        except CheckpointError as exc:
            result = "CheckpointError" if str(folder) in str(exc) else "unnamed: " + str(exc)
        except BaseException as exc:
            result = f"{type(exc).__name__}: {str(exc)[:200]}"
        out.append([kind, array.name, result])
print(json.dumps({"results": out,
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def test_mutated_orbax_metadata_is_read_or_refused(tmp_path):
    from flax import nnx

    from .conftest import trained_like

    pristine = tmp_path / "pristine"
    save_zarr_orbax(nnx.state(trained_like(1)), pristine)
    (tmp_path / "work").mkdir()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-c", CHILD, str(pristine), str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert len(results) == 19 * 3
    bad = [r for r in results if r[2] not in ("ok", "CheckpointError")]
    assert not bad, bad
    refused = {kind for kind, _, r in results if r == "CheckpointError"}
    assert {"shape_huge", "shape_rank", "chunks_huge", "both_huge"} <= refused
    # Bounded, far below what the refused shapes would take (20000x20000x3x4 float32: 19 GB):
    # 350-420 MB when this test runs alone, 1.51 GB once inside the full suite on 2 busy
    # cores; the bound leaves room for the allocator's behaviour under load.
    assert report["max_rss_kb"] < 3_000_000, report["max_rss_kb"]
