"""Which accelerator a task computes on: one free GPU per task, claimed before the framework loads, or all of a
worker's devices for one variant (data-parallel mode).

Light on purpose: it imports neither Keras nor a framework, because `claim_device()` must run first: it
takes a lock file per device and sets `CUDA_VISIBLE_DEVICES`, which CUDA reads only when the framework starts.

Locks are `fcntl.flock` locks on `<lock dir>/gpu<id>.slot<k>.lock`. The kernel drops them when the holder's
file descriptor closes, so a task that exits, crashes or is killed with SIGKILL frees its GPU at once; no stale
lock files need cleaning. A device takes `TL_TASKS_PER_GPU` tasks at once (default 1: never two tasks on one
card unless the pool is sized for it and this says so).

Environment:
    TL_GPU_COUNT        number of GPUs (default: `nvidia-smi -L`, else 0); on a CPU machine the tests set it
                        to simulate a multi-GPU worker.
    CUDA_VISIBLE_DEVICES  when set before a claim, the ids that may be claimed (e.g. the worker's "2,3").
    TL_TASKS_PER_GPU    tasks per device (default 1).
    TL_GPU_LOCK_DIR     where the lock files live (default `<tmp>/tl_gpu_locks`): local to the machine, because
                        GPU ids are per machine (TL_HOME may be shared by several) and flock is unreliable
                        on network file systems.
    TL_GPU_WAIT_S       how long a claim waits for a free device before failing (default 3600).
    TL_CPU_DEVICES      data-parallel mode without a GPU: split the CPU into this many devices (XLA host
                        devices on JAX, logical devices on TensorFlow); for tests.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GPU_COUNT_ENV = "TL_GPU_COUNT"
TASKS_PER_GPU_ENV = "TL_TASKS_PER_GPU"
LOCK_DIR_ENV = "TL_GPU_LOCK_DIR"
WAIT_ENV = "TL_GPU_WAIT_S"
CPU_DEVICES_ENV = "TL_CPU_DEVICES"
FRAMEWORK_MODULES = ("tensorflow", "jax", "torch")


@dataclass
class DeviceClaim:
    """A held claim on one device: `device_id` (as CUDA numbers it), `slot`, the open lock file."""

    device_id: str
    slot: int
    path: Path
    fd: int
    exclusive: bool  # True when the device takes one task at a time (the claim has it alone)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = -1


_held: DeviceClaim | None = None


def _int_env(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number; unset it or give e.g. {name}={max(default, 1)}") \
            from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def device_ids() -> list[str]:
    """The GPU ids this process may claim: `CUDA_VISIBLE_DEVICES` if set, else 0..count-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in ("", "-1"):
        return [d.strip() for d in visible.split(",") if d.strip()]
    if visible is not None:
        return []  # "" or "-1": CUDA shows no device
    return [str(i) for i in range(gpu_count())]


def gpu_count() -> int:
    """`TL_GPU_COUNT`, else the GPUs `nvidia-smi -L` lists (without loading a framework), else 0."""
    count = _int_env(GPU_COUNT_ENV, -1)
    if count >= 0:
        return count
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def lock_dir() -> Path:
    import tempfile

    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "tl_gpu_locks").expanduser()


def claim_device(*, wait_s: float | None = None, poll_s: float = 0.5) -> DeviceClaim | None:
    """Claim a free GPU for this process and make it the only one CUDA shows it; None on a machine without GPUs.

    Call before Keras/TensorFlow/JAX is imported. The claim lasts as long as the process (or `release()`).
    Waits up to `wait_s` (default `TL_GPU_WAIT_S`, 3600 s) for a device to come free, then raises
    TimeoutError naming the holders.
    """
    global _held
    if _held is not None and _held.fd >= 0:
        return _held
    ids = device_ids()
    if not ids:
        return None
    loaded = [m for m in FRAMEWORK_MODULES if m in sys.modules]
    if loaded:
        log.warning("claiming a GPU after %s was imported: CUDA_VISIBLE_DEVICES may no longer take effect",
                    ", ".join(loaded))
    per_device = _int_env(TASKS_PER_GPU_ENV, 1, minimum=1)
    wait_s = float(_int_env(WAIT_ENV, 3600)) if wait_s is None else wait_s
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for slot in range(per_device):  # fill every device's first slot before doubling up on any
            for device in ids:
                claim = _try_lock(directory, device, slot, exclusive=per_device == 1)
                if claim is not None:
                    os.environ["CUDA_VISIBLE_DEVICES"] = device
                    _held = claim
                    log.info("claimed GPU %s (slot %d of %d) via %s", device, slot + 1, per_device, claim.path)
                    return claim
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no free GPU among {ids} ({per_device} task(s) each) after {wait_s:.0f} s; holders: "
                f"{_holders(directory)}. Size the gpu pool to the GPUs x {TASKS_PER_GPU_ENV}, or raise {WAIT_ENV}"
            )
        time.sleep(poll_s)


def claim_all_devices() -> list[DeviceClaim]:
    """Data-parallel mode: wait for, and hold, every device's first slot (in id order, so that two such tasks
    never deadlock). Sets no CUDA_VISIBLE_DEVICES: the task uses all of them."""
    global _held_all
    if _held_all:
        return _held_all
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    claims = []
    for device in device_ids():
        path = directory / f"gpu{device}.slot0.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: wait for the task on it to finish
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        claims.append(DeviceClaim(device, 0, path, fd, True))
    _held_all = claims
    return claims


_held_all: list[DeviceClaim] = []


def claim_for(data_parallel: bool) -> None:
    """What a train/evaluate task claims before importing Keras: every device in data-parallel mode, else one."""
    if data_parallel:
        claim_all_devices()
    else:
        claim_device()


def inference_timing() -> str:
    """How an evaluation's throughput was measured: "exclusive" (this task holds its device alone) or "shared"
    (a CPU, or a GPU that other tasks may use at the same time)."""
    claim = held_claim()
    if (claim is not None and claim.exclusive) or _held_all:
        return "exclusive"
    return "shared"


def held_claim() -> DeviceClaim | None:
    """This process's device claim, if it holds one."""
    return _held if _held is not None and _held.fd >= 0 else None


def release() -> None:
    """Give back what this process holds (exiting does the same)."""
    global _held, _held_all
    if _held is not None:
        _held.release()
        _held = None
    for claim in _held_all:
        claim.release()
    _held_all = []


def _try_lock(directory: Path, device: str, slot: int, *, exclusive: bool) -> DeviceClaim | None:
    path = directory / f"gpu{device}.slot{slot}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # for people: who holds it (the lock itself is the flock)
    return DeviceClaim(device, slot, path, fd, exclusive)


def _holders(directory: Path) -> dict[str, str]:
    holders = {}
    for path in sorted(directory.glob("gpu*.lock")):
        with contextlib.suppress(OSError):
            holders[path.name] = "pid " + (path.read_text().strip() or "?")
    return holders


# --- data-parallel mode ------------------------------------------------------------------------------

def prepare_environment() -> None:
    """Before a framework loads: with `TL_CPU_DEVICES`=N, make JAX's XLA show N host (CPU) devices."""
    n = _int_env(CPU_DEVICES_ENV, 0)
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def configure_tensorflow_cpus(tf) -> None:
    """With `TL_CPU_DEVICES`=N, split TensorFlow's CPU into N logical devices (before TF initialises them)."""
    n = _int_env(CPU_DEVICES_ENV, 0)
    if n <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as exc:  # already initialised: keep what there is
        log.debug("logical CPU devices not set: %s", exc)


@contextlib.contextmanager
def data_parallel(enabled: bool) -> Iterator[int]:
    """Build, compile and fit inside this to train one model across all of the process's devices.

    JAX: the Keras distribution API (`keras.distribution.DataParallel`, batches split across devices);
    TensorFlow: `tf.distribute.MirroredStrategy`. GPUs when there are any, else the CPU devices of
    `TL_CPU_DEVICES`. Yields the number of replicas (1 when not enabled).
    """
    if not enabled:
        yield 1
        return
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        devices = gpus or jax.devices("cpu")
        names = keras.distribution.list_devices("gpu" if gpus else "cpu")
        distribution = keras.distribution.DataParallel(devices=names)
        with distribution.scope():
            yield len(devices)
    elif backend == "tensorflow":
        import tensorflow as tf

        configure_tensorflow_cpus(tf)
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        with strategy.scope():
            yield strategy.num_replicas_in_sync
    else:
        raise ValueError(f"data-parallel training supports the jax and tensorflow backends, not {backend!r}; "
                         f"set KERAS_BACKEND or turn off data_parallel (--no-data-parallel, or the trigger "
                         "form's Data parallel field)")
