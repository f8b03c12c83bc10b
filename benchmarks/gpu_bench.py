"""GPU against CPU, whole processes: the table's job (VanillaNet-m 32×32, 3,072 images,
1 epoch, batch 64, ``--keep-images 0``) and the ResNet-50 job (224×224, 256 images, 3 epochs,
batch 64), each with ``--device cuda`` and ``--device cpu``. Prints the times, the ratios
GPU / CPU, where NAS was computed, and the bytes that left onnxruntime for the host per probe
image (on CUDA with NAS in the graph: the NAS maps only — the tap tensors stay on the device).

Run through ``benchmarks/gpu.sh`` on a machine whose onnxruntime lists CUDAExecutionProvider.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from probe_speed import child, export_vanilla, images, nasprobe_cmd  # noqa: E402
from resnet50 import make_run  # noqa: E402


def bytes_per_image(run: Path, probe: Path, device: str) -> tuple[float, str, str]:
    """Bytes fetched to the host per image over one epoch of ``run``'s first checkpoint, the
    provider that ran, and where NAS was computed."""
    from nasprobe.job.epoch import probe_epoch
    from nasprobe.job.options import ProbeOptions
    from nasprobe.job.run_context import RunSpec, context
    from nasprobe.job.runtime import CUDA

    first = sorted(run.glob("*.onnx"))[0]
    spec = RunSpec(run=f"{run.name}-{device}", checkpoints=((str(first), 0),),
                   options=ProbeOptions(probe=str(probe), device=device, keep_images=0))
    ctx = context(spec)
    session = ctx.tapped.session()
    res = probe_epoch(session, ctx.probeset, ctx.taps, ctx.spatial, batch_size=64,
                      keep_images=0, kind=ctx.kind, input_name=ctx.tapped.input_name,
                      fetch=ctx.fetch, host=ctx.host, fixed_batch=ctx.tapped.fixed_batch,
                      bind=ctx.tapped.provider == CUDA)
    return res.fetched_bytes / res.images, ctx.tapped.provider, "host" if ctx.host else "graph"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit("gpu_bench: this onnxruntime does not list CUDAExecutionProvider "
                 "(install nasprobe[gpu])")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        jobs = []
        export_vanilla(tmp / "vanilla", 1)
        jobs.append(("VanillaNet-m 32x32, 3072 images x 1 epoch", tmp / "vanilla",
                     images(tmp / "v.npy", 3072, 32), ["--keep-images", "0"]))
        make_run(tmp / "resnet50", 3)
        jobs.append(("ResNet-50 224x224, 256 images x 3 epochs", tmp / "resnet50",
                     images(tmp / "r.npy", 256, 224), []))
        for name, run, probe, extra in jobs:
            walls: dict[str, list[float]] = {"cuda": [], "cpu": []}
            peaks: dict[str, float] = {}
            for r in range(args.repeats):
                for dev in walls:
                    w, p = child(nasprobe_cmd("probe", str(run), "--probe", str(probe), "--out",
                                              str(tmp / f"{run.name}-{dev}-{r}.zarr"),
                                              "--batch-size", "64", "--device", dev, *extra))
                    walls[dev].append(w)
                    peaks[dev] = max(peaks.get(dev, 0.0), p)
            print(f"{name} (median of {args.repeats})", flush=True)
            for dev in walls:
                per, provider, where = bytes_per_image(run, probe, dev)
                print(f"  --device {dev:4s} {statistics.median(walls[dev]):8.2f} s   peak "
                      f"{peaks[dev]:6.0f} MiB   {provider}, NAS in {where}, "
                      f"{per / 1024:9.1f} KiB device->host per image", flush=True)
            print(f"  GPU / CPU = {statistics.median(walls['cuda']) / statistics.median(walls['cpu']):.3f}")


if __name__ == "__main__":
    main()
