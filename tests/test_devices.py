"""One GPU per task via per-device lock files (simulated GPUs on a CPU machine), surviving SIGKILL of a holder;
data-parallel training across simulated devices on JAX (Keras distribution API) and TensorFlow (MirroredStrategy)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.backend_helpers import PROJECT_ROOT, backend_env, run_backend
from tests.ml_helpers import small_settings, write_prepared

_HOLD = """
import sys, time
from tl_tasks.training import devices
claim = devices.claim_device(wait_s=float(sys.argv[1]), poll_s=0.05)
import os
print(os.environ.get("CUDA_VISIBLE_DEVICES"), claim.slot if claim else None, flush=True)
time.sleep(600)  # hold the device until killed
"""


def _env(tmp_path, **extra) -> dict:
    env = dict(os.environ, TL_GPU_LOCK_DIR=str(tmp_path / "locks"), TL_GPU_COUNT="2")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(extra)
    return env


def _start_holder(env: dict, wait_s: float = 30) -> tuple[subprocess.Popen, str]:
    """A process that claims a device and holds it; returns it and the line it printed (device, slot)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(wait_s)], env=env, cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read()[-2000:] if proc.poll() is not None else "holder printed nothing"
    return proc, line


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def test_each_task_claims_its_own_gpu_and_a_sigkilled_holder_frees_it(tmp_path):
    env = _env(tmp_path)
    first, a = _start_holder(env)
    second, b = _start_holder(env)
    try:
        assert {a, b} == {"0 0", "1 0"}  # two tasks, two devices: one each
        third = subprocess.run([sys.executable, "-c", _HOLD, "0.3"], env=env, cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=60)
        assert third.returncode != 0 and "TimeoutError: no free GPU among ['0', '1']" in third.stderr
        assert "TL_TASKS_PER_GPU" in third.stderr and f"pid {first.pid}" in third.stderr

        holder_of_0 = first if a.startswith("0") else second
        os.kill(holder_of_0.pid, signal.SIGKILL)  # kill -9: no cleanup code runs
        holder_of_0.wait(timeout=30)
        waiting, c = _start_holder(env)  # the kernel dropped the dead holder's flock
        assert c == "0 0"
        _stop(waiting)
    finally:
        _stop(first, second)


def test_a_waiting_claim_gets_the_device_when_its_holder_exits(tmp_path):
    env = _env(tmp_path, TL_GPU_COUNT="1")
    holder, line = _start_holder(env)
    assert line == "0 0"
    waiter = subprocess.Popen([sys.executable, "-c", _HOLD, "60"], env=env, cwd=PROJECT_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert waiter.poll() is None  # still waiting: never two tasks on one card
        _stop(holder)
        assert waiter.stdout.readline().strip() == "0 0"
    finally:
        _stop(waiter)


def test_tasks_per_gpu_fills_every_device_before_doubling_up_and_visible_devices_limit_the_choice(tmp_path):
    env = _env(tmp_path, TL_TASKS_PER_GPU="2", CUDA_VISIBLE_DEVICES="2,3")
    procs = []
    try:
        lines = []
        for _ in range(4):
            proc, line = _start_holder(env)
            procs.append(proc)
            lines.append(line)
        assert lines == ["2 0", "3 0", "2 1", "3 1"]
    finally:
        _stop(*procs)


def test_no_gpu_means_no_claim_and_cuda_visible_devices_untouched(tmp_path, monkeypatch):
    from tl_tasks.training import devices

    monkeypatch.setenv("TL_GPU_COUNT", "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.claim_device(wait_s=0) is None and "CUDA_VISIBLE_DEVICES" not in os.environ
    assert devices.inference_timing() == "shared"
    monkeypatch.setenv("TL_GPU_COUNT", "two")
    with pytest.raises(ValueError, match="TL_GPU_COUNT='two' is not a whole number"):
        devices.gpu_count()


_DATA_PARALLEL = """
import json, sys
from pathlib import Path
from tl_tasks.training import runtime
runtime.import_keras_quietly()  # as the train task does: TensorFlow's logical CPUs are set before it starts
from tl_tasks.config import Settings
from tl_tasks.training.loop import train_variant
from tl_tasks.training.evaluate import evaluate_variant
settings = Settings.from_dict(json.loads(sys.argv[4]))
summary = train_variant(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), settings, verbose=0).summary()
evaluation = evaluate_variant(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), settings).to_dict()
print(json.dumps({"replicas": summary["replicas"], "loss": summary["history"][-1]["loss"],
                  "accuracy": evaluation["accuracy"], "timing": evaluation["inference_timing"]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_data_parallel_mode_trains_one_variant_across_simulated_devices(tmp_path, backend):
    data = write_prepared(tmp_path / "data", n_train=64, n_val=20, n_test=10)
    settings = json.dumps(small_settings(epochs={"cnn": 2, "resnet50": 1}, batch_size=32,
                                         data_parallel=True).to_dict())
    env = backend_env(backend, TL_CPU_DEVICES="2")
    out = run_backend(backend, _DATA_PARALLEL, "cnn", data, tmp_path / "cnn", settings, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2, result
    assert result["loss"] == result["loss"] and 0.0 <= result["accuracy"] <= 1.0  # finite, trained
    assert result["timing"] == "shared"  # a CPU is shared: the throughput is labelled so
