#!/usr/bin/env bash
# The GPU benchmark, ready to run on a machine with JAX (and PyTorch) but no TensorFlow:
#   bench/gpu.sh [OUT_JSON]          # GPU_BENCH_SIZE=full (default) | tiny (seconds on a CPU)
# Keras runs on JAX. Our pure-Python dependencies that such a machine lacks come from bench/wheels/
# (`make gpu-wheels` downloads them: bench/gpu-wheels.txt, well under 64 MiB) and are installed with --no-deps into
# a scratch folder, only when `import keras` fails. The CIFAR-10 archive is taken from bench/data/ (copy it there
# to carry it) or ../shared/data/. Writes bench/out/gpu.json (or OUT_JSON); see bench/gpu_bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export KERAS_BACKEND=jax
export TF_CPP_MIN_LOG_LEVEL=2
OUT=${1:-bench/out/gpu.json}

if ! "$PY" -c "import keras, h5py, PIL" >/dev/null 2>&1; then
  DEPS=${GPU_BENCH_DEPS:-/tmp/tl_gpu_deps}
  ls bench/wheels/*.whl >/dev/null 2>&1 || { echo "bench/wheels/ is empty: run 'make gpu-wheels' where pip can reach a registry, and carry bench/wheels"; exit 1; }
  "$PY" -m pip install -q --no-deps --no-index --target "$DEPS" bench/wheels/*.whl
  export PYTHONPATH="$DEPS${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
exec timeout "${GPU_BENCH_TIMEOUT_S:-470}" "$PY" bench/gpu_bench.py --out "$OUT" ${GPU_BENCH_SIZE:+--size "$GPU_BENCH_SIZE"}
