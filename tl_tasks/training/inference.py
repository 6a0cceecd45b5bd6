"""Inference in batches of one size: a model's predict step is traced (compiled) once per input shape, so a
smaller last batch costs a second trace, seconds for a ResNet50 on a CPU. The last batch is padded instead.
"""
from __future__ import annotations

import math

import keras
import numpy as np


def even_batch(n: int, max_batch: int) -> int:
    """The batch size (<= `max_batch`) that covers `n` images in the fewest steps with the least padding, e.g.
    10,000 images at most 250 -> 250 (no padding); 1,024 at most 250 -> 205 (5 steps, 1 padded image)."""
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch!r} must be >= 1")
    if n <= 0:
        return max_batch
    return math.ceil(n / math.ceil(n / max_batch))


def predict_equal_batches(model, x: np.ndarray, batch: int, *, verbose: int = 0) -> np.ndarray:
    """`model.predict(x)` in steps of exactly `batch` images: the last one is padded with blank images, whose
    outputs are dropped. Pick `batch` with `even_batch` to keep the padding small.

    Step by step (`predict_on_batch`), not through `model.predict`: on TensorFlow, predict's tf.data pipeline
    was seen to halve a 2-core CPU's inference rate on some passes (ResNet50 at 32 px: 486 against 800-900
    img/s), which the step-by-step loop never did (bench/RESULTS.md). `verbose` as Keras's: 1 = a
    progress bar, 2 = one line at the end."""
    n = len(x)
    pad = (-n) % batch
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), dtype=x.dtype)])
    steps = len(x) // batch
    bar = keras.utils.Progbar(steps, verbose=verbose) if verbose else None
    out = []
    for step in range(steps):
        out.append(np.asarray(model.predict_on_batch(x[step * batch:(step + 1) * batch])))
        if bar is not None:
            bar.update(step + 1)
    return np.concatenate(out)[:n]
