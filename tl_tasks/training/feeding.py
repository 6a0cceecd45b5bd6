"""How the training loop feeds the device: the batch size chosen for it, steps per execution, and each epoch's
training throughput (its training steps alone, validation excluded), measured without per-batch work.

Where an epoch's time goes, and why these choices: bench/RESULTS.md ("Where the training loop's time goes").
"""
from __future__ import annotations

import time

import keras

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
