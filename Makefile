# Front door: `make run` (one whole retraining, quick profile), `make test` (lint + every test CI runs) and
# `make test-fast` (the edit loop: no Airflow processes, Celery, Chromium or full-dataset decode).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Reinstalled when the freeze or the package metadata changes.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
SHARED_CIFAR := $(abspath ../shared/data/cifar-10-images-jpg.tar.gz)

# No run settings here: the profiles work offline by themselves (quick: dataset cifar10 resolves to a local
# copy such as $(SHARED_CIFAR) before Keras's download; weights auto = ImageNet when obtainable, else random).
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Python caches compiled modules (pytest its rewritten test modules): every test process starts faster.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv mlflow-venv test test-fast lint run airflow bench system-deps services clean

# The installer: uv (pinned in the freeze; the venv's own pip installs it first, from pip's index), which installs
# the ~200 pinned packages in ~20 s where pip takes ~60 s; both compile the bytecode at install.
# `make venv INSTALLER=pip` installs with pip alone (e.g. behind a package mirror configured only for pip).
# $(call install,VENV,ARGS): ARGS into VENV, no dependency resolution.
INSTALLER ?= uv
ifeq ($(INSTALLER),uv)
bootstrap = $(PY) -m pip install -q $(shell grep -m1 '^uv==' requirements.txt)
install = $(VENV)/bin/uv pip install -q --compile-bytecode --python $(1)/bin/python --no-deps $(2)
UV_FIRST = $(STAMP)
else ifeq ($(INSTALLER),pip)
bootstrap = $(PY) -m pip install -q --upgrade pip
install = $(1)/bin/python -m pip install -q --no-deps $(2)
UV_FIRST =
else
$(error INSTALLER=$(INSTALLER): use INSTALLER=uv (the default) or INSTALLER=pip)
endif

# The pinned freeze, then this project as an editable package (pyproject.toml: tl_tasks, reports, `tl-tasks`).
venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(bootstrap)
	$(call install,$(VENV),-r requirements.txt)  # a complete freeze: no resolver needed
	$(call install,$(VENV),-e .)
	$(PY) -m pip check
	rm -f $(VENV)/.installed-*; touch $@

# Debian packages the tests need (headless Chromium for the report test); installs only what is missing.
system-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install Debian's chromium package (sudo apt-get install chromium)"; exit 1; fi; }

# ruff with the rules in pyproject.toml ([tool.ruff]), then the import layers ([tool.importlinter]: lint-imports).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The tests' MLflow tracking server in a venv of its own (requirements-mlflow.txt: the full mlflow package's pins
# conflict with Airflow's); rebuilt when that freeze changes. With uv, after .venv, whose uv installs it.
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed-$(shell cat requirements-mlflow.txt | cksum | cut -d' ' -f1)
mlflow-venv: $(MLFLOW_STAMP)
$(MLFLOW_STAMP): requirements-mlflow.txt | $(UV_FIRST)
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(call install,$(MLFLOW_VENV),-r requirements-mlflow.txt)
	rm -f $(MLFLOW_VENV)/.installed-*; touch $@

# Everything CI needs: lint, then every test (tiers: the markers in pyproject.toml); the 25 slowest are listed.
# The test files are spread over WORKERS pytest-xdist workers (a file's tests stay together, so its shared
# fixtures are built once; each worker's TensorFlow computes on one thread: tests/conftest.py); WORKERS=0 runs
# them in this process. Two on two cores: three were not faster on a fresh clone (pytest 542-667 s on three
# against 589-629 s on two: bench/RESULTS.md), though the Airflow-process tests leave the cores ~15% idle.
WORKERS ?= 2
# `make test` installs Chromium beside the venvs (with uv, .venv-mlflow waits for .venv, whose uv installs it),
# then lints.
ifeq ($(MAKECMDGOALS),test)
MAKEFLAGS += --jobs=3
endif
XDIST = $(if $(filter-out 0,$(WORKERS)),-n $(WORKERS) --dist loadfile --no-loadscope-reorder)
test: venv mlflow-venv system-deps lint
	$(PY) -m pytest -q --durations=25 $(XDIST) tests

# The edit loop: no real Airflow components, no migrated Airflow database, no Chromium,
# no decode of the whole CIFAR-10 archive.
FAST_MARKERS := not slow and not airflow and not browser and not full_data
test-fast: venv
	$(PY) -m pytest -q $(XDIST) tests -m "$(FAST_MARKERS)"

# One whole retraining: the Airflow DAG once, headless (dag.test() on ./airflow_home), quick profile; ends with
# the report's path. `make run PROFILE=smoke` for a fast check; `make run ARGS="--epochs 1"` for other options.
PROFILE ?= quick
run: venv
	$(PY) -m tl_tasks run --profile $(PROFILE) $(ARGS)

# Airflow on http://127.0.0.1:8080 with this DAG (examples off, `gpu` pool of TL_GPU_POOL_SLOTS slots); Ctrl-C stops it.
# Settings and set-up: tl_tasks/airflow_local/env.py.
airflow: venv
	PY=$(PY) scripts/airflow_standalone.sh

bench: venv
	$(PY) -m bench

# Wheels bench/gpu.sh carries to a GPU machine without TensorFlow (bench/gpu-wheels.txt; CPython GPU_PYVER,
# manylinux x86_64; the script installs only those whose module the machine lacks), plus the CIFAR-10 archive;
# kept under 60 MiB together, small enough to copy to an offline GPU host with the checkout.
.PHONY: gpu-wheels gpu-bench-tiny
GPU_PYVER ?= 312  # the GPU benchmark machine's python3 is 3.12
gpu-wheels: venv
	rm -rf bench/wheels && mkdir -p bench/wheels bench/data
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYVER) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	  -d bench/wheels -r bench/gpu-wheels.txt
	test ! -f $(SHARED_CIFAR) || cp $(SHARED_CIFAR) bench/data/
	@du -cb bench/wheels/*.whl bench/data/* | tail -1 | awk '{ printf "bench/wheels + bench/data: %.1f MiB\n", $$1/1048576; if ($$1 > 60*1048576) { print "over the 60 MiB budget: trim bench/gpu-wheels.txt"; exit 1 } }'

# The GPU benchmark at its tiny size on this CPU (Keras on JAX, synthetic data): checks it runs end to end.
gpu-bench-tiny: venv
	GPU_BENCH_SIZE=tiny GPU_BENCH_DATASET=synthetic PYTHON=$(PY) bench/gpu.sh bench/out/gpu_tiny.json

clean:
	rm -rf tl_home .pytest_cache

# The real-Airflow tests only: LocalExecutor scheduler run, CeleryExecutor run with a default and a gpu
# worker (PostgreSQL + Redis on 127.0.0.1), docker-compose.yaml validation. Part of `make test` too.
.PHONY: test-distributed compose-env
test-distributed: venv
	$(PY) -m pytest -q tests/test_compose.py tests/test_scheduler_run.py tests/test_distributed.py

# .env for docker-compose.yaml: .env.example with every empty value filled by a fresh random secret.
compose-env:
	@python3 scripts/compose_env.py
