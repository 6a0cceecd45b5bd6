"""Calibration: expected calibration error (15 equal-width confidence bins), the reliability diagram's bins and
a temperature fitted on the validation split (Guo et al., 2017), applied to the test probabilities.

Models output softmax probabilities, so the logits are recovered as log-probabilities (softmax is invariant to
a constant shift); scaling them by 1/T changes the confidence, never the predicted class.
"""
from __future__ import annotations

import numpy as np

from tl_tasks.training.robustness import stratified_subset

ECE_BINS = 15
# One parameter is fitted: 1,000 validation images pin it well below the ECE's own noise, and cap the extra
# predictions evaluation makes (the quick profile's validation split has 5,000).
MAX_VAL_IMAGES = 1000
_EPS = 1e-12


def reliability(probs, y_true, bins: int = ECE_BINS) -> dict:
    """`{ece, bins: [{low, high, count, confidence, accuracy}]}` of top-1 confidence against accuracy."""
    probs, y_true = np.asarray(probs, dtype=np.float64), np.asarray(y_true).reshape(-1)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out, ece, n = [], 0.0, len(y_true)
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "count": count, "confidence": None,
               "accuracy": None}
        if count:
            row["confidence"], row["accuracy"] = float(confidence[mask].mean()), float(correct[mask].mean())
            ece += count / n * abs(row["accuracy"] - row["confidence"])
        out.append(row)
    return {"ece": float(ece) if n else None, "bins": out}


def scale(probs, temperature: float) -> np.ndarray:
    """Probabilities with their logits divided by `temperature`."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs, y_true) -> float:
    """The temperature minimising the negative log-likelihood of `y_true` (bounded 0.05 to 20)."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0))
    y = np.asarray(y_true).reshape(-1)

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x))


def val_subset(y_val, seed: int, limit: int = MAX_VAL_IMAGES) -> np.ndarray:
    """Indices of a fixed stratified subset of the validation split (all of it when it is small)."""
    return stratified_subset(y_val, limit, seed)


def calibrate(test_probs, y_test, val_probs, y_val) -> dict:
    """`{ece, ece_scaled, temperature, val_images, bins, bins_scaled}` for the evaluation record."""
    temperature = fit_temperature(val_probs, y_val) if len(y_val) else 1.0
    before, after = reliability(test_probs, y_test), reliability(scale(test_probs, temperature), y_test)
    return {"ece": before["ece"], "ece_scaled": after["ece"], "temperature": round(temperature, 4),
            "val_images": int(len(y_val)), "bins": before["bins"], "bins_scaled": after["bins"]}
