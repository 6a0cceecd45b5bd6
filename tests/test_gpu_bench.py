"""bench/gpu.sh runs end to end at its tiny size on a CPU with Keras on JAX, TensorFlow never loaded: the throughput
cells, v2 whole, and the whole pipeline of the other four variants (the project's check that everything runs on
JAX)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tl_tasks.variants import VARIANT_NAMES

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_script_runs_tiny_on_cpu_with_jax(tmp_path):
    out = tmp_path / "gpu.json"
    # v4 whole is the same code as v2 whole (its step runs in the throughput part): left out to save minutes
    env = dict(os.environ, GPU_BENCH_SIZE="tiny", GPU_BENCH_DATASET="synthetic", GPU_BENCH_BLOCK_TF="1",
               GPU_BENCH_PARTS="throughput,v2,run", GPU_BENCH_TIMEOUT_S="1500", GPU_BENCH_BUDGET_S="1400",
               PYTHON=str(Path(os.sys.executable)), TL_HOME=str(tmp_path / "home"))
    env.pop("KERAS_BACKEND", None)  # the script sets it
    proc = subprocess.run(["bash", str(PROJECT_ROOT / "bench" / "gpu.sh"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    record = json.loads(out.read_text())
    assert record["size"] == "tiny" and record["machine"]["backend"] == "jax"
    assert record["machine"]["tensorflow_loaded"] is False
    # how warm JAX's compilation cache was (the session's, shared by the parts): recorded with the timings
    assert isinstance(record["machine"]["compiled_programs_at_start"], int)
    results = record["results"]
    throughput = results["throughput"]
    for key in ("resnet50_v2", "resnet50_v4", "inference_resnet50_v2"):
        assert throughput[key]["img_per_s"] > 0 and throughput[key]["steps"] >= 2, key
    assert throughput["v4_step_over_v2_step"] > 0
    for part, variant in (("v2", "resnet50_v2"),):
        whole = results[part]
        assert whole["variant"] == variant and whole["epochs_run"] == 2 and whole["head_warmup_epochs"] == 1
        assert whole["steps_per_execution"] > 1  # the GPU's loop settings ran here too
        assert len(whole["epoch_img_per_s"]) == 2 and all(r > 0 for r in whole["epoch_img_per_s"])
        assert 0.0 <= whole["test_accuracy"] <= 1.0 and whole["train_seconds"] > 0 and whole["wall_seconds"] > 0
    # the whole pipeline (prepare, train with v1 on cached features, evaluate, gate, report) on JAX, TensorFlow
    # blocked: every variant but v2, which ran whole in the part before
    run = results["run"]
    assert run["returncode"] == 0, run.get("log_tail")
    # the parts before compiled into the same (the session's) cache: the whole run starts with their programs
    assert run["compiled_programs_at_start"] > record["machine"]["compiled_programs_at_start"]
    others = sorted(set(VARIANT_NAMES) - {"resnet50_v2"})
    assert run["wall_seconds"] > 0 and sorted(run["variants"]) == others
    [run_dir] = (tmp_path / "gpu_work" / "run_home" / "runs").iterdir()
    for name in others:
        assert 0.0 <= run["variants"][name]["test_accuracy"] <= 1.0, name
        summary = json.loads((run_dir / "models" / name / "train_summary.json").read_text())
        evaluation = json.loads((run_dir / "models" / name / "evaluation.json").read_text())
        assert summary["backend"] == evaluation["backend"] == "jax" and summary["state"] == "success", name
        assert summary["feature_cache"] is (name == "resnet50_v1"), name
    assert (run_dir / "report" / "index.html").is_file()
    assert results["goals_met"] is None  # a tiny run judges nothing


def test_gpu_wheel_list_pins_what_requirements_pin():
    pins = {line.split("==")[0].lower(): line.strip() for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    wanted = [line.strip() for line in (PROJECT_ROOT / "bench" / "gpu-wheels.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert wanted and all(pins.get(w.split("==")[0].lower()) == w for w in wanted), wanted
    assert not any(w.lower().startswith(("tensorflow", "jax", "torch", "numpy")) for w in wanted)
