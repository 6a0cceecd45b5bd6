"""How the training loop feeds the device: the batch size chosen for it, steps per execution, batches of one
shape, and each epoch's training throughput (its training steps alone, validation excluded), measured without
per-batch work.

Where an epoch's time goes, and why these choices: bench/RESULTS.md ("Where the training loop's time goes").
"""
from __future__ import annotations

import time

import keras
import numpy as np

from tl_tasks.config import Settings
from tl_tasks.training import runtime

# Training steps compiled into one call of the train function: Keras's per-step Python work (dispatch, callbacks,
# logs) is paid once per call. Callbacks here act per epoch only, and an epoch's steps need not divide by it.
STEPS_PER_EXECUTION = {"gpu": 8, "cpu": 1}


def device_kind() -> str:
    """"gpu" when the active Keras backend sees one, else "cpu"."""
    return "gpu" if runtime.gpu_available() else "cpu"


def batch_size(settings: Settings, kind: str | None = None) -> int:
    """Images per step on this device: the profile's `gpu_batch_size` on a GPU when it sets one, else
    `batch_size` (an explicit batch size clears `gpu_batch_size`: `config.apply_overrides`)."""
    kind = kind or device_kind()
    if kind == "gpu" and settings.gpu_batch_size:
        return settings.gpu_batch_size
    return settings.batch_size


def steps_per_execution(kind: str | None = None) -> int:
    return STEPS_PER_EXECUTION[kind or device_kind()]


# Backends whose compiled train step is specialised to the batch's shape, so that a smaller last batch compiles it
# again (XLA). TensorFlow's traced step takes any batch size: Keras feeds it through tf.data, batch dimension unknown.
COMPILES_PER_BATCH_SHAPE = {"jax": True, "tensorflow": False}


def full_batches(n: int, batch: int, seed: int, backend: str | None = None) -> np.ndarray | None:
    """Indices of a training set of `n` images that fill every step with exactly `batch` images: all `n`, plus
    `(-n) % batch` of them drawn a second time (distinct, seeded), on a backend that compiles a step per batch
    shape (`COMPILES_PER_BATCH_SHAPE`; `backend` None = Keras's): one XLA compile of the train step, not two.
    Fit shuffles the whole set each epoch, so the repeated images are spread over it. None when `n` already
    divides into full batches (or fits in one), or on a backend where a smaller last batch costs nothing."""
    pad = (-n) % batch
    if n <= batch or pad == 0 or not COMPILES_PER_BATCH_SHAPE.get(backend or keras.backend.backend(), False):
        return None
    again = np.sort(np.random.default_rng(seed).choice(n, size=pad, replace=False))
    return np.concatenate([np.arange(n), again])


def validation_batch(n: int, batch: int, *, replicas: int = 1, backend: str | None = None) -> int | None:
    """Fit's validation batch size on a backend that compiles a step per batch shape (`COMPILES_PER_BATCH_SHAPE`):
    the largest divisor of `n` up to the training `batch` that the `replicas` (data-parallel devices) share evenly
    and that is at least half of `batch`, so that every validation step has one shape (one compile; the batch
    size changes no metric). None = fit's default (the training batch): on TensorFlow, or when `n` has no such
    divisor."""
    if not COMPILES_PER_BATCH_SHAPE.get(backend or keras.backend.backend(), False):
        return None
    if n <= batch and n % replicas == 0:
        return max(n, 1)
    fits = [d for d in range(replicas, batch + 1, replicas) if n % d == 0]
    return fits[-1] if fits and 2 * fits[-1] >= batch else None


def wait_for_device(model: keras.Model) -> None:
    """Block until the model's last dispatched step finished (JAX and TF on a GPU run asynchronously): reading
    the optimizer's step counter needs that step's result."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        keras.ops.convert_to_numpy(optimizer.iterations)


class EpochThroughput:
    """Times one epoch's training steps: `begin()` at the epoch's start, `end(model)` when its training steps
    are over (before validation); then `.seconds` and `.img_per_s(images)`."""

    def __init__(self):
        self._t0 = 0.0
        self.seconds: float | None = None

    def begin(self) -> None:
        self._t0, self.seconds = time.perf_counter(), None

    def end(self, model: keras.Model) -> None:
        if self.seconds is None:  # once per epoch: the first of on_test_begin / on_epoch_end
            wait_for_device(model)
            self.seconds = time.perf_counter() - self._t0

    def img_per_s(self, images: int) -> float | None:
        return round(images / self.seconds, 1) if self.seconds else None
