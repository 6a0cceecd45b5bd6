"""Process set-up shared by training and evaluation: device claims, a quiet Keras import, polite GPU memory,
seeds, device facts.

Importing this module only sets environment variables (before Keras/TensorFlow/JAX load); the
functions import Keras lazily and touch backend-specific APIs only when that backend is active.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

# Must be set before TensorFlow or JAX is imported to have any effect:
# - TF_CPP_MIN_LOG_LEVEL=2 hides TensorFlow's C++ INFO/WARNING start-up chatter;
# - TF_FORCE_GPU_ALLOW_GROWTH / XLA_PYTHON_CLIENT_PREALLOCATE stop one training from grabbing the
#   whole GPU, so several variants can train side by side on one card.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from tl_tasks import layout
from tl_tasks.training import devices

devices.prepare_environment()  # TL_CPU_DEVICES: simulated devices must be set before JAX starts

log = logging.getLogger(__name__)
_configured = False


def set_up_worker(data_parallel: bool) -> None:
    """Before a stage that computes (train, evaluate): claim this task's devices, then import Keras quietly."""
    devices.claim_for(data_parallel)  # before Keras loads: CUDA_VISIBLE_DEVICES = the claimed GPU
    import_keras_quietly()


def import_keras_quietly() -> None:
    """Import Keras (and TensorFlow, finding its devices) with file descriptor 2 silenced.

    TensorFlow's C++ start-up lines (oneDNN notice, CUDA probing, "All log messages before
    absl::InitializeLog()") go straight to fd 2 before TF_CPP_MIN_LOG_LEVEL applies; they would open every
    task log. Errors still surface: an import failure raises after stderr is restored.
    """
    if "keras" in sys.modules:
        return
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        import keras
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            devices.configure_tensorflow_cpus(tf)  # TL_CPU_DEVICES: before TF initialises its devices
            tf.config.list_physical_devices()
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def configure() -> None:
    """Once per process, before the first model is built: on TensorFlow, silence its Python loggers and enable GPU
    memory growth; on JAX, keep XLA's compiled programs on disk (`use_jax_compilation_cache`)."""
    global _configured
    if _configured:
        return
    _configured = True
    import keras

    if keras.backend.backend() == "jax":
        use_jax_compilation_cache()
    if keras.backend.backend() != "tensorflow":
        return
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    try:
        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except (ImportError, RuntimeError, ValueError) as exc:  # RuntimeError: GPUs already initialised
        log.debug("GPU memory growth not set: %s", exc)


# Keras on JAX compiles every program it runs with XLA: each weight initialiser of a new model, the train, test and
# predict steps. A process that builds a fine-tuned ResNet50 at 32 px on 2 CPU cores spends ~21 s doing so before
# its first step; with the programs on disk, the next process spends ~5 s (bench/RESULTS.md). The cache's key is
# the program, the JAX version and the device, so a changed model, library or card compiles again.
def use_jax_compilation_cache() -> None:
    """Point JAX's persistent compilation cache at `tl_tasks.layout.jax_compiled_dir()` (`$TL_JAX_COMPILATION_CACHE`,
    `off` for nowhere, default `$TL_HOME/compiled/jax`), for programs of any size and compile time (a ResNet50 has
    ~100 initialisers that each compile in milliseconds). Must run before JAX compiles anything; a cache that
    cannot be used only costs the compile time (JAX warns). It grows only by programs not seen before (a new model,
    shape or library version); gc removes those unused for its `cache_days`; deleting the folder is always safe."""
    where = layout.jax_compiled_dir()
    if where is None:
        return
    problem = _unsafe_cache_dir(where)
    if problem:
        log.warning("not keeping JAX's compiled programs in %s: %s; set %s to a folder only this user can write, "
                    "or to off", where, problem, layout.JAX_COMPILATION_CACHE_ENV)
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _unsafe_cache_dir(folder: Path) -> str | None:
    """Why `folder` must not hold programs that this process runs, or None: it must be absolute and, once made
    (mode 0700 when new), owned by this user and writable by no one else."""
    if not folder.is_absolute():
        return "the path is relative (each task would resolve it from its own working folder)"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.stat()
    except OSError as exc:
        return f"it cannot be made ({exc})"
    if st.st_uid != os.getuid():
        return "another user owns it"
    if st.st_mode & 0o022:
        return "others can write to it"
    return None


def gpu_available() -> bool:
    """True when the active Keras backend sees a GPU."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return any(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
    except Exception as exc:  # a broken CUDA install means: no usable GPU
        log.debug("GPU detection failed on %s: %s", backend, exc)
    return False


def device_description() -> str:
    """A short human-readable name of the device the backend computes on, e.g. 'GPU: NVIDIA H100' or 'CPU'."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"GPU: {details.get('device_name', gpus[0].name)}" + (f" x{len(gpus)}" if len(gpus) > 1 else "")
        elif backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            if gpus:
                return f"GPU: {gpus[0].device_kind}" + (f" x{len(gpus)}" if len(gpus) > 1 else "")
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return f"GPU: {torch.cuda.get_device_name(0)}"
    except Exception as exc:
        log.debug("device description failed on %s: %s", backend, exc)
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and the Keras backend (weight init, shuffling, dropout, augmentation)."""
    import keras

    keras.utils.set_random_seed(int(seed))


@contextlib.contextmanager
def dtype_policy(mixed: bool) -> Iterator[str]:
    """Build models under "mixed_float16" (when `mixed`) or "float32", restoring the previous global policy."""
    import keras

    previous = keras.config.dtype_policy().name
    name = "mixed_float16" if mixed else "float32"
    keras.config.set_dtype_policy(name)
    try:
        yield name
    finally:
        keras.config.set_dtype_policy(previous)
