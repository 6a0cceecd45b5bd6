# Front door: `make run` (one whole retraining, quick profile) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
SHARED_CIFAR := $(abspath ../shared/data/cifar-10-images-jpg.tar.gz)

# Offline-friendly defaults for `make run`: the shared JPEG copy of CIFAR-10 when it is beside the
# checkout, otherwise Keras's download; ImageNet weights when they can be had, else random init.
export TL_DATASET ?= $(if $(wildcard $(SHARED_CIFAR)),folder:$(SHARED_CIFAR),cifar10)
export TL_RESNET_WEIGHTS ?= auto
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test run airflow bench system-deps services clean

venv: $(STAMP)
$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-*; touch $@

# Debian packages the tests need (headless Chromium for the report test); installs only what is missing.
system-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install Debian's chromium package (sudo apt-get install chromium)"; exit 1; fi; }

test: venv system-deps
	$(PY) -m pytest -q tests

run: venv
	$(PY) -m tl_tasks run --profile quick

bench: venv
	$(PY) -m bench

clean:
	rm -rf tl_home .pytest_cache
