"""bench/gpu.sh runs end to end at its tiny size on a CPU with Keras on JAX, TensorFlow never loaded."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_script_runs_tiny_on_cpu_with_jax(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, GPU_BENCH_SIZE="tiny", GPU_BENCH_DATASET="synthetic", GPU_BENCH_BLOCK_TF="1", PYTHON=str(Path(os.sys.executable)),
               TL_HOME=str(tmp_path / "home"))
    env.pop("KERAS_BACKEND", None)  # the script sets it
    proc = subprocess.run(["bash", str(PROJECT_ROOT / "bench" / "gpu.sh"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["size"] == "tiny" and record["machine"]["backend"] == "jax"
    assert record["machine"]["tensorflow_loaded"] is False
    results = record["results"]
    for key in ("finetune", "v1_frozen", "inference"):
        assert results["throughput"][key]["img_per_s"] > 0 and results["throughput"][key]["steps"] >= 2, key
    assert results["throughput"]["finetune"]["variant"] == "resnet50_v2"
    epoch = results["full_profile_epoch_v2"]
    assert epoch["epoch_seconds"] > 0 and 0.0 <= epoch["test_accuracy"] <= 1.0 and epoch["train_images"] > 0
    assert results["goal_met"] is None  # a tiny run judges nothing


def test_gpu_wheel_list_pins_what_requirements_pin():
    pins = {line.split("==")[0].lower(): line.strip() for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    wanted = [line.strip() for line in (PROJECT_ROOT / "bench" / "gpu-wheels.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert wanted and all(pins.get(w.split("==")[0].lower()) == w for w in wanted), wanted
    assert not any(w.lower().startswith(("tensorflow", "jax", "torch", "numpy")) for w in wanted)
