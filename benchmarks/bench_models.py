"""The models and probe sets of the benchmarks, made once per run by the interpreter running
``probe_speed.py`` (VanillaNet-m needs torch; the tiny CNN only onnx)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def export_vanilla(folder: Path, epochs: int) -> None:
    """VanillaNet-m (64/64/128/128/256, 100 classes) at 32×32: ONNX files and, in
    ``folder/../<name>-pt``, torch state dicts of the same weights."""
    import torch

    sys.path.insert(0, str(HERE))
    from baselines import build_model
    from resnet50 import reweight

    torch.manual_seed(0)
    model = build_model("vanilla")
    folder.mkdir(parents=True)
    first = folder / "epoch_000.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(first), dynamo=True,
                      dynamic_shapes=({0: "N"},), verbose=False)
    reweight(first, folder, epochs)
    state_dicts(folder, model)


def tiny_cnn(folder: Path) -> None:
    """One checkpoint of a 4-layer CNN (three 3×3 convolutions of 8, 8, 16 channels with Relu,
    global pooling, a 10-class Gemm) on 3×16×16 images, written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = {"c1": (8, 3, 3, 3), "c2": (8, 8, 3, 3), "c3": (16, 8, 3, 3), "fc": (10, 16)}
    inits = []
    for name, shape in shapes.items():
        inits += [numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), f"{name}.w"),
                  numpy_helper.from_array(np.zeros(shape[0], np.float32), f"{name}.b")]
    nodes, x = [], "x"
    for name in ("c1", "c2", "c3"):
        nodes += [helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name,
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"])]
        x = f"{name}.r"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "epoch_000.onnx"))


def state_dicts(folder: Path, model) -> None:
    """``.pt`` state dicts next to ``folder`` holding each ONNX file's weights (by name)."""
    import onnx
    import torch
    from onnx import numpy_helper

    out = folder.parent / f"{folder.name}-pt"
    out.mkdir(exist_ok=True)
    base = model.state_dict()
    for f in sorted(folder.glob("*.onnx")):
        inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(f)).graph.initializer}
        sd = {k: torch.from_numpy(inits[k].copy()) if k in inits else v for k, v in base.items()}
        missing = [k for k, v in base.items() if k not in inits and v.dtype.is_floating_point]
        if missing:
            raise SystemExit(f"{f}: {len(missing)} torch tensors not in the ONNX file, "
                             f"e.g. {missing[:3]}")
        torch.save(sd, out / f"{f.stem}.pt")


def images(path: Path, n: int, size: int) -> Path:
    np.save(path, np.random.default_rng(0).normal(0, 1, (n, 3, size, size)).astype(np.float32))
    return path
