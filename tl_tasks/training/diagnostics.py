"""What evaluation adds beyond accuracy: calibration (ECE, a temperature fitted on the validation split) and
robustness (accuracy under the corruption suite), each timed so that their cost can be reported.

`diagnose` takes an already loaded model and the test probabilities it produced; `tl_tasks.training.evaluate` calls it.
"""
from __future__ import annotations

import time

import numpy as np

from tl_tasks.training import calibration, robustness
from tl_tasks.training.inference import predict_equal_batches


def diagnose(model, data, test_probs, *, batch_size: int, robustness_images: int) -> dict:
    """`{"calibration": {...}, "robustness": {...} or None, "seconds": {...}, "cpu_seconds": {...}}` (CPU time: what
    other programs on shared cores move least); predicts in steps of exactly `batch_size`, evaluation's traced shape."""
    t0, c0 = time.perf_counter(), time.process_time()
    y_test = np.asarray(data.y_test).reshape(-1)
    val = calibration.val_subset(data.y_val, seed=robustness.SUBSET_SEED)
    y_val = np.asarray(data.y_val).reshape(-1)[val]
    val_probs = predict_equal_batches(model, data.x_val[val], batch_size) if len(val) else np.zeros((0, test_probs.shape[1]))
    calib = calibration.calibrate(test_probs, y_test, val_probs, y_val)
    t1, c1 = time.perf_counter(), time.process_time()
    robust = None
    if robustness_images and len(y_test):
        subset = robustness.stratified_subset(y_test, robustness_images)
        stacked, cases = robustness.suite(data.x_test[subset])
        predicted = predict_equal_batches(model, stacked, batch_size).argmax(axis=1)
        clean = float(np.mean(test_probs[subset].argmax(axis=1) == y_test[subset]))
        robust = robustness.score(predicted, y_test[subset], cases, clean_accuracy=clean)
    t2, c2 = time.perf_counter(), time.process_time()
    return {"calibration": calib, "robustness": robust,
            "seconds": {"calibration": round(t1 - t0, 3), "robustness": round(t2 - t1, 3)},
            "cpu_seconds": {"calibration": round(c1 - c0, 3), "robustness": round(c2 - c1, 3)}}

