"""What evaluation adds beyond accuracy: calibration (ECE, a temperature fitted on the validation split) and
robustness (accuracy under the corruption suite), each timed so that their cost can be reported.

`diagnose` takes an already loaded model and the test probabilities it produced; `tl_tasks.training.evaluate` calls it.
"""
from __future__ import annotations

import time

import numpy as np

from tl_tasks.training import calibration, robustness


def diagnose(model, data, test_probs, *, batch_size: int, robustness_images: int) -> dict:
    """`{"calibration": {...}, "robustness": {...} or None, "seconds": {"calibration", "robustness"},
    "cpu_seconds": {...}}` (CPU time of this process: what other programs on shared cores move least)."""
    t0, c0 = time.perf_counter(), time.process_time()
    y_test = np.asarray(data.y_test).reshape(-1)
    val = calibration.val_subset(data.y_val, seed=robustness.SUBSET_SEED)
    y_val = np.asarray(data.y_val).reshape(-1)[val]
    val_probs = _predict(model, data.x_val[val], batch_size) if len(val) else np.zeros((0, test_probs.shape[1]))
    calib = calibration.calibrate(test_probs, y_test, val_probs, y_val)
    t1, c1 = time.perf_counter(), time.process_time()
    robust = None
    if robustness_images and len(y_test):
        subset = robustness.stratified_subset(y_test, robustness_images)
        stacked, cases = robustness.suite(data.x_test[subset])
        predicted = _predict(model, stacked, batch_size).argmax(axis=1)
        clean = float(np.mean(test_probs[subset].argmax(axis=1) == y_test[subset]))
        robust = robustness.score(predicted, y_test[subset], cases, clean_accuracy=clean)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"calibration": calib, "robustness": robust,
            "seconds": {"calibration": round(t1 - t0, 3), "robustness": round(t2 - t1, 3)},
            "cpu_seconds": {"calibration": round(c1 - c0, 3), "robustness": round(c2 - c1, 3)}}


def _predict(model, x, batch_size: int) -> np.ndarray:
    """Predictions in full batches only (zero-padded, then cut): evaluation already compiled that batch shape,
    while a new remainder shape would trace the model again (seconds on a CPU, more than the images cost)."""
    n = len(x)
    pad = -n % batch_size
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), dtype=x.dtype)])
    return model.predict(np.ascontiguousarray(x), batch_size=batch_size, verbose=0)[:n]
