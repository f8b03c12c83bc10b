#!/usr/bin/env bash
# GPU against CPU for the table's job and the ResNet-50 job (see benchmarks/gpu_bench.py):
# times, GPU/CPU ratios, where NAS ran and the bytes copied device->host per probe image.
# Needs a venv with nasprobe[gpu,torch] (torch only exports the ONNX files); PY overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m nasprobe doctor
if ! "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())'; then
    echo "gpu.sh: onnxruntime does not list CUDAExecutionProvider here; nothing to measure" >&2
    exit 2
fi
exec "$PY" benchmarks/gpu_bench.py "$@"
