# Front door: `make run` (one whole retraining, quick profile) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
SHARED_CIFAR := $(abspath ../shared/data/cifar-10-images-jpg.tar.gz)

# No run settings here: the profiles work offline by themselves (quick: dataset cifar10 resolves to a local
# copy such as $(SHARED_CIFAR) before Keras's download; weights auto = ImageNet when obtainable, else random).
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test run airflow bench system-deps services clean

venv: $(STAMP)
$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r requirements.txt  # a complete freeze: no resolver needed
	$(PY) -m pip check
	rm -f $(VENV)/.installed-*; touch $@

# Debian packages the tests need (headless Chromium for the report test); installs only what is missing.
system-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install Debian's chromium package (sudo apt-get install chromium)"; exit 1; fi; }

test: venv system-deps
	$(PY) -m pytest -q tests

# One whole retraining: the Airflow DAG once, headless (dag.test() on ./airflow_home), quick profile; ends with
# the report's path. `make run PROFILE=smoke` for a fast check; `make run ARGS="--epochs 1"` for other options.
PROFILE ?= quick
run: venv
	$(PY) -m tl_tasks run --profile $(PROFILE) $(ARGS)

# Airflow on http://127.0.0.1:8080 with this DAG (examples off, `gpu` pool of TL_GPU_POOL_SLOTS slots); Ctrl-C stops it.
airflow: venv
	PY=$(PY) scripts/airflow_standalone.sh

bench: venv
	$(PY) -m bench

# Wheels bench/gpu.sh carries to a GPU machine without TensorFlow (bench/gpu-wheels.txt; CPython GPU_PYVER,
# manylinux x86_64; the script installs only those whose module the machine lacks), checked to stay well under the 64 MiB a run can carry; plus the CIFAR-10 archive.
.PHONY: gpu-wheels gpu-bench-tiny
GPU_PYVER ?= 312  # the lent H200 machine's python3 is 3.12 (/work/.library/device/KINDS.md)
gpu-wheels: venv
	rm -rf bench/wheels && mkdir -p bench/wheels bench/data
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYVER) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	  -d bench/wheels -r bench/gpu-wheels.txt
	test ! -f $(SHARED_CIFAR) || cp $(SHARED_CIFAR) bench/data/
	@du -cb bench/wheels/*.whl bench/data/* | tail -1 | awk '{ printf "bench/wheels + bench/data: %.1f MiB\n", $$1/1048576; if ($$1 > 48*1048576) { print "too big to carry (limit 64 MiB, keep a margin)"; exit 1 } }'

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
	@test ! -e .env || { echo ".env exists: edit it, or delete it to generate a new one"; exit 1; }
	@python3 -c "$$COMPOSE_ENV_PY"

define COMPOSE_ENV_PY
import base64, os, re, secrets
def secret(name):
    if name == "AIRFLOW_FERNET_KEY":
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    return secrets.token_hex(48 if name == "AIRFLOW_JWT_SECRET" else 24)
lines = open(".env.example").read().splitlines()
lines = [line + secret(line[:-1]) if re.fullmatch("[A-Z0-9_]+=", line) else line for line in lines]
fd = os.open(".env", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, ("\n".join(lines) + "\n").encode())
os.close(fd)
print("wrote .env with new secrets; log in as admin with AIRFLOW_ADMIN_PASSWORD from .env")
endef
export COMPOSE_ENV_PY
