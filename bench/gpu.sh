#!/usr/bin/env bash
# The GPU benchmark, ready to run on an offline GPU host that has JAX (and PyTorch) but no TensorFlow, in one call
# of under 10 minutes:
#   bench/gpu.sh [OUT_JSON]          # GPU_BENCH_SIZE=full (default) | tiny (minutes on a CPU)
#   GPU_BENCH_PARTS=throughput,v2,v4,run (default, in this order)  GPU_BENCH_BUDGET_S=520 (seconds for the parts)
# Keras runs on JAX. Our pure-Python dependencies that such a machine lacks come from bench/wheels/
# (`make gpu-wheels` downloads them: bench/gpu-wheels.txt, well under 64 MiB) and are installed with --no-deps into
# bench/deps/, only when `import keras` fails. The CIFAR-10 archive is taken from bench/data/ (copy it there
# to carry it) or ../shared/data/. Writes bench/out/gpu.json (or OUT_JSON); see bench/gpu_bench.py. The project
# need not be installed there: `python -m bench.gpu_bench` runs from the checkout's root, which puts it on sys.path.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export KERAS_BACKEND=jax
export TF_CPP_MIN_LOG_LEVEL=2
OUT=${1:-bench/out/gpu.json}

# Install only the carried wheels whose module the machine lacks (its own numpy/JAX/Pillow/h5py stay in charge).
# A folder of this checkout (git-ignored), not a fixed /tmp name another user could plant modules in first.
DEPS=${GPU_BENCH_DEPS:-$PWD/bench/deps}
export PYTHONPATH="$DEPS${PYTHONPATH:+:$PYTHONPATH}"
missing=()
for whl in bench/wheels/*.whl; do
  [ -e "$whl" ] || continue
  dist=$(basename "$whl" | cut -d- -f1 | tr 'A-Z' 'a-z')
  case "$dist" in
    absl_py) mod=absl ;; pillow) mod=PIL ;; markdown_it_py) mod=markdown_it ;; python_dateutil) mod=dateutil ;;
    fonttools) mod=fontTools ;; *) mod=$dist ;;
  esac
  "$PY" -c "import $mod" >/dev/null 2>&1 || missing+=("$whl")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing into $DEPS: ${missing[*]}"
  "$PY" -m pip install -q --no-deps --no-index --no-compile --target "$DEPS" "${missing[@]}"
fi
"$PY" -c "import keras" || { echo "Keras is not importable: run 'make gpu-wheels' (GPU_PYVER = the machine's Python, e.g. 312) and carry bench/wheels"; exit 1; }
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
exec timeout "${GPU_BENCH_TIMEOUT_S:-570}" "$PY" -m bench.gpu_bench --out "$OUT" ${GPU_BENCH_SIZE:+--size "$GPU_BENCH_SIZE"}
