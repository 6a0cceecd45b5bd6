"""Shared helpers of the benchmarks: modes, timing, the machine description, subprocesses and the JSON record.

Every benchmark module has `NAME`, `run(mode) -> dict` (the record below) and `main()` via `cli()`:

    python -m bench.bench_throughput --mode quick [--out bench/out/throughput.json]

A record is `{name, mode, machine, parameters, results, notes, started_at, seconds}`; numbers carry their unit
in the key (`img_per_s`, `seconds`, `ratio`, `ms`). Nothing here imports Keras at module level: the suite's
parent process stays light and every benchmark runs in its own process (`python -m bench`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
# tiny: seconds, for tests (checks structure, not speed); quick: `python -m bench --quick`, minutes in all;
# full: `make bench`, sized for a 2-core CPU (about 15-25 minutes in all); on a GPU the same code runs larger cells.
MODES = ("tiny", "quick", "full")
RECORD_KEYS = ("name", "mode", "machine", "parameters", "results", "notes", "started_at", "seconds")
VERSION_PACKAGES = ("keras", "tensorflow", "jax", "jaxlib", "torch", "numpy", "apache-airflow", "sqlalchemy")


# ----------------------------------------------------------------------------------------------- timing

class Stopwatch:
    """`with Stopwatch() as sw: ...` then `sw.seconds` (wall, perf_counter) and `sw.cpu_seconds` (this process's
    CPU time over all its threads: far less sensitive than wall time to other programs sharing the cores)."""

    def __enter__(self) -> Stopwatch:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.seconds = self.cpu_seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start


def time_steps(step: Callable[[], object], *, warmup: int = 1, min_steps: int = 2, max_steps: int = 50,
               budget_s: float = 10.0) -> dict:
    """Call `step` `warmup` times untimed-ish (their time is reported as `warmup_seconds`: tracing/compiling),
    then time calls until `min_steps` are done and `budget_s` is spent, or `max_steps` are done.

    Returns:
        `{warmup_steps, warmup_seconds, steps, seconds, cpu_seconds, step_seconds_median, step_seconds_min}`.
    """
    with Stopwatch() as w:
        for _ in range(warmup):
            step()
    samples: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    while len(samples) < max_steps and (len(samples) < min_steps or time.perf_counter() - started < budget_s):
        t = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu_started
    return {"warmup_steps": warmup, "warmup_seconds": round(w.seconds, 3), "steps": len(samples),
            "seconds": round(sum(samples), 4), "cpu_seconds": round(cpu, 4),
            "step_seconds_median": round(statistics.median(samples), 4), "step_seconds_min": round(min(samples), 4)}


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """numerator / denominator, rounded; None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def rate(count: float, seconds: float, digits: int = 2) -> float | None:
    """count / seconds (e.g. images per second), None for a zero time."""
    return round(count / seconds, digits) if seconds > 0 else None


class Budget:
    """A deadline for a grid of cells: `if budget.left() < cost: skip`. Skipped cells are recorded, not hidden."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spent(self) -> bool:
        return self.left() <= 0


def epoch_timer():
    """A Keras callback recording each epoch's wall time (on_epoch_begin -> on_epoch_end) in `.seconds` and this
    process's CPU time in `.cpu_seconds`."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self._t0 = self._c0 = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t0)
            self.cpu_seconds.append(time.process_time() - self._c0)

    return EpochTimer()


# ---------------------------------------------------------------------------------------------- machine

def machine(probe_backend: bool = True) -> dict:
    """What the numbers came from: CPU model, cores, RAM, OS, Python, package versions, Keras backend, GPU, load.

    Args:
        probe_backend: import Keras and ask the backend which device it computes on (the benchmark processes do;
            the suite's parent process does not, to stay light).
    """
    info: dict = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": _versions(),
        "keras_backend": os.environ.get("KERAS_BACKEND") or _keras_config_backend() or "tensorflow",
        "gpu": _nvidia_smi(),
        "load_average_1m": _load_1m(),
    }
    if probe_backend:
        try:
            import keras

            from tl_tasks.training import runtime

            info["keras_backend"] = keras.backend.backend()
            info["device"] = runtime.device_description()
            info["gpu_visible_to_backend"] = runtime.gpu_available()
        except Exception as exc:  # a machine description must never fail a benchmark
            info["device"] = f"unknown ({type(exc).__name__}: {exc})"
    return info


def gpu_available() -> bool:
    """True when the active Keras backend sees a GPU (imports Keras)."""
    from tl_tasks.training import runtime

    return runtime.gpu_available()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _versions() -> dict:
    out = {}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _keras_config_backend() -> str | None:
    path = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
    try:
        return json.loads(path.read_text()).get("backend")
    except (OSError, ValueError):
        return None


def _nvidia_smi() -> list[dict] | None:
    """GPUs as nvidia-smi lists them (None when there is no nvidia-smi or no GPU)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus or None


# ------------------------------------------------------------------------------------------ environment

@contextmanager
def temp_home(prefix: str) -> Iterator[Path]:
    """A throwaway folder (removed afterwards) for TL_HOME, AIRFLOW_HOME and the like."""
    path = Path(tempfile.mkdtemp(prefix=f"tl_bench_{prefix}_"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def env_vars(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the duration of the block."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def subprocess_env(**values: str) -> dict[str, str]:
    """This process's environment without TL_*/AIRFLOW* settings (a benchmark chooses its own), the project on
    PYTHONPATH, quiet TensorFlow, plus `values`."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("TL_", "AIRFLOW")) or k == "PROFILE")}
    pythonpath = [str(PROJECT_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pythonpath))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in values.items()})
    return env


def run_timed(cmd: list[str], *, env: dict, log_path: Path, timeout: float, cwd: Path = PROJECT_ROOT) -> dict:
    """Run `cmd` to completion (stdout and stderr to `log_path`) and time it from outside.

    Returns:
        `{seconds, cpu_seconds, returncode, timed_out, log}` (cpu_seconds: user + system time of the command and
        every descendant it waited for); the last lines of the log go in `log_tail` when it failed.
    """
    import resource

    log_path.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    timed_out = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            returncode = proc.wait()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "returncode": returncode,
           "timed_out": timed_out, "log": str(log_path)}
    if returncode != 0:
        out["log_tail"] = tail(log_path)
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def logs_dir(name: str) -> Path:
    """bench/out/logs/<name>/: subprocess logs of a benchmark (kept for a look after a failure)."""
    path = OUT_DIR / "logs" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------------------------- record

def begin() -> dict:
    """Call first thing in a benchmark's run(): its start time and the machine's load then, for `record`."""
    return {"perf": time.perf_counter(), "at": now_iso(), "load": _load_1m()}


def record(name: str, mode: str, begun: dict, parameters: dict, results: dict, notes: list[str],
           machine_info: dict | None = None) -> dict:
    """The JSON record of one benchmark run (see the module docstring); `begun` is what `begin()` returned."""
    info = machine_info or machine()
    info["load_average_1m_at_start"] = begun["load"]
    info["load_average_1m_at_end"] = _load_1m()
    return {"name": name, "mode": mode, "machine": info, "parameters": parameters, "results": results,
            "notes": notes, "started_at": begun["at"], "seconds": round(time.perf_counter() - begun["perf"], 1)}


def _load_1m() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a benchmark mode; use one of {', '.join(MODES)}")
    return mode


def write_json(path: Path, data: dict) -> Path:
    from tl_tasks.files import write_text_atomic

    path = Path(path)
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def cli(name: str, run: Callable[[str], dict], argv: list[str] | None = None) -> int:
    """`python -m bench.bench_<name> [--mode tiny|quick|full] [--out PATH]`: run, write JSON, print it."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.bench_{name}",
                                     description=f"benchmark {name!r}; writes JSON (default bench/out/{name}.json)")
    parser.add_argument("--mode", choices=MODES, default="full", help="size of the benchmark (default full)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON record")
    args = parser.parse_args(argv)
    result = run(args.mode)
    path = write_json(args.out or OUT_DIR / f"{name}.json", result)
    print(json.dumps({"name": result["name"], "results": result["results"]}, indent=2, default=_json_default))
    print(f"wrote {path}", file=sys.stderr)
    return 0
