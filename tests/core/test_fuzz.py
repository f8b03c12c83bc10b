"""Fuzz-style: hundreds of mutated checkpoints and probe sets through ``nasprobe probe``;
below, mutated store metadata, training logs and remote checkpoint folders (issue 24).

Every case is a real file a user could be handed: an ONNX checkpoint or a ``.npz`` probe set,
truncated, bit-flipped, given a wrong element type, or claiming huge dimensions. Each goes
through the click command in this process (fast: no interpreter start per case) into one
existing store, with a per-case time limit. Every case must end with exit 0 or 2 (never 1, a
traceback), within the limit, and leave the store's existing run byte for byte as it was; a
refused case (exit 2) must leave the whole store as it was (an accepted one adds its run).
The random generator is seeded: a failure names its case and reproduces.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import shutil
import signal
import uuid
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto

import nasprobe
from nasprobe.cli import main
from nasprobe.errors import StoreError
from tests.core import onnx_models as om
from tests.hostile import make_store, probe, tree_digest, write_onnx_run, write_probe

SEED = 20261129
CASES_PER_KIND = 26  # 8 kinds below → 208 cases
TIME_LIMIT_S = 30


class Hang(Exception):  # noqa: N818 (a signal, not an error)
    pass


def _alarm(signum, frame):
    raise Hang()


def existing_run_digest(store: Path) -> str:
    """sha256 over every file of the run written before the fuzzing (its group ``runs/good``:
    job groups, chunks, commit markers): what a later probe must never change."""
    return hashlib.sha256(repr(sorted(tree_digest(store / "runs" / "good").items()))
                          .encode()).hexdigest()


def base_model() -> onnx.ModelProto:
    model, _ = om.conv_bn_relu_net(np.random.default_rng(0))
    return model


def mutate_onnx(rng: np.random.Generator, kind: str, model: onnx.ModelProto) -> bytes:
    data = model.SerializeToString()
    if kind == "onnx_truncated":
        return data[: int(rng.integers(0, len(data)))]
    if kind == "onnx_bitflip":
        buf = bytearray(data)
        for i in rng.integers(0, len(buf), int(rng.integers(1, 9))):
            buf[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(buf)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = list(m.graph.initializer)
    t = inits[int(rng.integers(0, len(inits)))]
    if kind == "onnx_dtype":
        t.data_type = int(rng.choice([TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT8,
                                      TensorProto.STRING, TensorProto.BOOL, TensorProto.FLOAT16,
                                      TensorProto.UINT8, TensorProto.COMPLEX64, 99]))
        return m.SerializeToString()
    # onnx_huge: one initializer claims enormous (or negative) dimensions
    dims = [int(rng.choice([2 ** 31, 2 ** 40, 10 ** 12, -1, 0, 2 ** 62]))
            for _ in range(int(rng.integers(1, 4)))]
    t.ClearField("dims")
    t.dims.extend(dims)
    return m.SerializeToString()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def mutate_probe(rng: np.random.Generator, kind: str, base: dict[str, np.ndarray]) -> bytes:
    data = npz_bytes(base)
    if kind == "npz_truncated":
        return data[: int(rng.integers(0, len(data)))]
    if kind == "npz_bitflip":
        buf = bytearray(data)
        for i in rng.integers(0, len(buf), int(rng.integers(1, 9))):
            buf[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(buf)
    x, y = base["x"], base["y"]
    if kind == "npz_dtype":
        which = rng.integers(0, 6)
        if which == 0:
            x = x.astype(rng.choice(["int64", "float16", "bool", "complex64", "uint16", ">f4"]))
        elif which == 1:
            y = y.astype(rng.choice(["float32", "int8", "uint64", "bool", "U3"]))
        elif which == 2:
            x = x.astype("U4")
        elif which == 3:
            y = np.full_like(y, int(rng.choice([-1, 10 ** 9, 2 ** 62])))
        elif which == 4:
            x = np.where(rng.random(x.shape) < 0.3, np.nan, x).astype(np.float32)
        else:
            y = y[: int(rng.integers(0, len(y)))]
        return npz_bytes({"x": x, "y": y})
    # npz_huge: the .npy header of x claims an enormous shape (the data stays small)
    shape = tuple(int(rng.choice([10 ** 12, 2 ** 40, 2 ** 31, 0, 1])) for _ in range(4))
    raw = data
    old = repr(tuple(x.shape)).encode()
    new = repr(shape).encode()
    raw = raw.replace(old, new[: len(old)] if len(new) > len(old) else new.ljust(len(old)), 1)
    return raw if rng.random() < 0.5 else npz_bytes({"x": x.reshape(-1)[:0].reshape(0, *x.shape[1:]), "y": y[:0]})


KINDS = ["onnx_truncated", "onnx_bitflip", "onnx_dtype", "onnx_huge",
         "npz_truncated", "npz_bitflip", "npz_dtype", "npz_huge"]


def test_mutated_files_exit_0_or_2_and_never_touch_the_store(tmp_path):
    store, probe_path = make_store(tmp_path)
    base_probe = dict(np.load(probe_path))
    model = base_model()
    guard = existing_run_digest(store)
    whole = tree_digest(store)
    rng = np.random.default_rng(SEED)
    outcomes: dict[int, int] = {}
    failures = []
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for kind in KINDS:
            for i in range(CASES_PER_KIND):
                case = tmp_path / f"{kind}_{i:03d}"
                case.mkdir()
                if kind.startswith("onnx"):
                    (case / "epoch_001.onnx").write_bytes(mutate_onnx(rng, kind, model))
                    args = [case, "--probe", probe_path]
                else:
                    bad = case / "probe.npz"
                    bad.write_bytes(mutate_probe(rng, kind, base_probe))
                    args = [tmp_path / "good", "--probe", bad, "--force", "--run", case.name]
                signal.alarm(TIME_LIMIT_S)
                try:
                    res = probe(*args, "--out", store, "--batch-size", "4", "--on-error",
                                "fail", catch=True)
                    code = res.exit_code
                    detail = (res.stderr[-400:], repr(res.exception))
                except Hang:
                    code, detail = "hang", ""
                finally:
                    signal.alarm(0)
                outcomes[code] = outcomes.get(code, 0) + 1
                if code not in (0, 2):
                    failures.append((case.name, code, detail))
                elif existing_run_digest(store) != guard:
                    failures.append((case.name, "the existing run changed", detail))
                elif code == 2 and tree_digest(store) != whole:
                    failures.append((case.name, "refused, yet the store changed", detail))
                whole = tree_digest(store)
    finally:
        signal.signal(signal.SIGALRM, old)
    total = sum(outcomes.values())
    print(f"fuzz: {total} cases, exit codes {outcomes}")
    assert total >= 200
    for name, what, detail in failures:
        print("fuzz failure:", name, what, str(detail)[:300].replace("\n", " "))
    assert not failures, failures[:10]


# -- store metadata, training logs, remote folders (issue 24) --------------------------------
HOSTILE_NUMBERS = [10 ** 9, 2 ** 62, -1, 0, 1e300, float("nan"), True, None, "7", [], {}]
HOSTILE_TEXT = ["../../../elsewhere", "", "/etc/passwd", "a/b", "\x1b[2J\x1b]0;t\x07", "..",
                "x" * 5000, "{not json"]


def _mutate_json(rng: np.random.Generator, data: bytes) -> bytes:
    """One hostile edit of a store document: a number or a string replaced, or the bytes
    truncated or bit-flipped."""
    how = int(rng.integers(0, 4))
    if how == 0:
        return data[: int(rng.integers(0, len(data)))]
    if how == 1:
        buf = bytearray(data)
        for i in rng.integers(0, len(buf), int(rng.integers(1, 6))):
            buf[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(buf)
    doc = json.loads(data)
    slots = []

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node) \
            if isinstance(node, list) else []
        for k, v in items:
            if isinstance(v, (dict, list)):
                walk(v)
            if not isinstance(v, (dict, list)):
                slots.append((node, k, v))

    walk(doc)
    if not slots:
        return b"[]"
    node, k, v = slots[int(rng.integers(0, len(slots)))]
    pool = HOSTILE_TEXT if (how == 2 and isinstance(v, str)) else HOSTILE_NUMBERS
    node[k] = pool[int(rng.integers(0, len(pool)))]
    return json.dumps(doc).encode()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_mutated_store_metadata_is_read_or_refused(tmp_path):
    """120 copies of a store, each with one document (a commit marker, a job group's
    attributes, an array's metadata, the root) edited: ``nasprobe info`` exits 0 or 2 and
    ``open_store`` returns or raises StoreError, each within the time limit, with the
    process's peak memory growing by less than 512 MiB over all cases."""
    store, _ = make_store(tmp_path)
    docs = sorted(p.relative_to(store) for p in store.rglob("zarr.json"))
    rng = np.random.default_rng(SEED + 1)
    failures, outcomes = [], {}
    start_rss = _peak_rss_mib()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(120):
            case = tmp_path / f"store_{i:03d}"
            shutil.copytree(store, case)
            doc = docs[int(rng.integers(0, len(docs)))]
            (case / doc).write_bytes(_mutate_json(rng, (case / doc).read_bytes()))
            signal.alarm(TIME_LIMIT_S)
            try:
                res = CliRunner().invoke(main, ["info", str(case)])
                code, detail = res.exit_code, (res.stderr[-300:], repr(res.exception))
                if code in (0, 2):
                    try:
                        nasprobe.open_store(case)
                    except StoreError:
                        pass
                    except Exception as exc:  # noqa: BLE001 (what the fuzz looks for)
                        code, detail = "open_store", repr(exc)[:300]
            except Hang:
                code, detail = "hang", ""
            finally:
                signal.alarm(0)
            outcomes[code] = outcomes.get(code, 0) + 1
            if code not in (0, 2):
                failures.append((case.name, str(doc), code, detail))
            shutil.rmtree(case)
    finally:
        signal.signal(signal.SIGALRM, old)
    grown = _peak_rss_mib() - start_rss
    print(f"fuzz store metadata: {sum(outcomes.values())} cases, {outcomes}, peak RSS "
          f"+{grown:.0f} MiB")
    for failure in failures:
        print("fuzz failure:", str(failure)[:400].replace("\n", " "))
    assert not failures, failures[:10]
    assert grown < 512, grown


def test_mutated_training_logs_exit_0_or_2(tmp_path):
    """80 Keras CSV / history JSON logs, truncated, bit-flipped, given hostile epochs or
    values, or a header thousands of columns wide, through ``nasprobe probe --metrics``
    into a store whose run is done: exit 0 or 2 within the time limit, never a file outside
    the store, and the run's probed values unchanged."""
    store, probe_path = make_store(tmp_path)

    def probed(store):  # the run's job groups and markers; imports add metrics-* groups
        return {k: v for k, v in tree_digest(store / "runs" / "good").items()
                if not k.startswith("metrics-")}

    guard = probed(store)
    rng = np.random.default_rng(SEED + 2)
    base_csv = "epoch,loss,accuracy,val_loss,val_accuracy\n1,0.9,0.5,1.0,0.4\n2,0.7,0.6,0.8,0.5\n"
    base_json = json.dumps({"loss": [0.9, 0.7], "val_loss": [1.0, 0.8], "epoch": [1, 2]})
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(store)}
    failures, outcomes = [], {}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(80):
            kind = ["csv", "json", "wide", "epoch"][i % 4]
            if kind == "json":
                log, text = tmp_path / f"log_{i:03d}.json", _mutate_json(rng, base_json.encode())
            elif kind == "wide":
                cols = int(rng.integers(1000, 20000))
                log = tmp_path / f"log_{i:03d}.csv"
                text = ("epoch," + ",".join(f"m{j}" for j in range(cols)) + "\n" +
                        "".join(f"{e},{e}\n" for e in range(int(rng.integers(1, 3000))))).encode()
            elif kind == "epoch":
                log = tmp_path / f"log_{i:03d}.csv"
                e = rng.choice(["1e300", "-1e300", "inf", "nan", "9007199254740993", "1.5",
                                "0x10", "", "-0", "1e15"])
                text = f"epoch,loss\n1,0.5\n{e},0.25\n".encode()
            else:
                buf = bytearray(base_csv.encode())
                for j in rng.integers(0, len(buf), int(rng.integers(1, 6))):
                    buf[j] ^= 1 << int(rng.integers(0, 8))
                log, text = tmp_path / f"log_{i:03d}.csv", bytes(buf)
            log.write_bytes(text)
            signal.alarm(TIME_LIMIT_S)
            try:
                res = probe(tmp_path / "good", "--probe", probe_path, "--out", store,
                            "--metrics", log)
                code, detail = res.exit_code, (res.stderr[-300:], repr(res.exception))
            except Hang:
                code, detail = "hang", ""
            finally:
                signal.alarm(0)
            outcomes[code] = outcomes.get(code, 0) + 1
            if code not in (0, 2):
                failures.append((log.name, code, detail))
            elif probed(store) != guard:
                failures.append((log.name, "the probed run changed", detail))
    finally:
        signal.signal(signal.SIGALRM, old)
    stray = {p for p in tmp_path.rglob("*") if not p.is_relative_to(store)} - before
    stray = {p for p in stray if not p.name.startswith("log_")}
    print(f"fuzz training logs: {sum(outcomes.values())} cases, {outcomes}")
    for failure in failures:
        print("fuzz failure:", str(failure)[:400].replace("\n", " "))
    assert not failures, failures[:10]
    assert not stray, sorted(stray)[:10]


def test_mutated_remote_folders_stay_in_the_cache(tmp_path, s3_bucket, monkeypatch):
    """30 checkpoint folders on S3 (moto) whose listings also hold hostile keys — ``..``
    parts up to five levels, empty parts (an absolute relative key), ``.`` parts, control
    characters, very long names — probed with ``nasprobe probe s3://...``: exit 0 or 2, and
    no file is written outside the cache and the store (the cache sits five folders deep, so
    an escape would land in this test's folder; absolute keys name unique paths checked
    after)."""
    import boto3

    cache = tmp_path / "a" / "b" / "c" / "d" / "e" / "cache"
    monkeypatch.setenv("NASPROBE_CACHE", str(cache))
    src = tmp_path / "src"
    paths = write_onnx_run(src)
    probe_path = write_probe(tmp_path / "probe.npz")
    bucket = s3_bucket[len("s3://"):]
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    rng = np.random.default_rng(SEED + 3)
    token = uuid.uuid4().hex
    before = {p for p in tmp_path.rglob("*")}
    failures, outcomes, absolute = [], {}, []
    for i in range(30):
        run = f"run{i:02d}"
        for p in paths:
            s3.put_object(Bucket=bucket, Key=f"{run}/{p.name}", Body=p.read_bytes())
        for _ in range(int(rng.integers(1, 4))):
            how = int(rng.integers(0, 5))
            if how == 0:
                key = f"{run}/" + "../" * int(rng.integers(1, 6)) + f"escaped-{token}.txt"
            elif how == 1:
                target = f"/tmp/nasprobe-fuzz-{token}-{i}.txt"
                absolute.append(target)
                key = f"{run}/{target}"
            elif how == 2:
                key = f"{run}/./sub/./x-{i}.txt"
            elif how == 3:
                key = f"{run}/ctl-\x1b[2J\x07-{i}.txt"
            else:
                key = f"{run}/" + "n" * int(rng.integers(200, 1100))
            s3.put_object(Bucket=bucket, Key=key, Body=b"not a checkpoint")
        res = probe(f"{s3_bucket}/{run}", "--probe", probe_path, "--out", tmp_path / "nas.zarr",
                    "--batch-size", "4")
        outcomes[res.exit_code] = outcomes.get(res.exit_code, 0) + 1
        if res.exit_code not in (0, 2):
            failures.append((run, res.exit_code, res.stderr[-300:], repr(res.exception)))
    stray = {p for p in tmp_path.rglob("*") if p not in before and not p.is_relative_to(cache)
             and not p.is_relative_to(tmp_path / "nas.zarr") and p != tmp_path / "a"
             and not cache.is_relative_to(p)}
    print(f"fuzz remote folders: {sum(outcomes.values())} cases, {outcomes}")
    for failure in failures:
        print("fuzz failure:", str(failure)[:400].replace("\n", " "))
    assert not failures, failures[:10]
    assert not stray, sorted(stray)[:10]
    assert not [t for t in absolute if os.path.exists(t)]
    assert not list(tmp_path.parent.glob(f"escaped-{token}*"))
