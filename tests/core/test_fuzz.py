"""Fuzz-style: hundreds of mutated checkpoints and probe sets through ``nasprobe probe``.

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
import signal
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from tests.core import onnx_models as om
from tests.hostile import make_store, probe, tree_digest

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
