"""Robustness: accuracy under a fixed, seeded corruption suite in the style of CIFAR-10-C (Hendrycks & Dietterich,
2019), generated at evaluation time on a fixed stratified subset of the test set.

Six corruptions at three severities (CIFAR-10-C's levels 1, 3 and 5), applied to uint8 RGB images. The subset
and the noise are seeded by constants, so every run of a lineage is scored on the same corrupted images.
"""
from __future__ import annotations

import io

import numpy as np

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "brightness", "jpeg", "pixelate")
SEVERITIES = (1, 2, 3)
# CIFAR-10-C's parameters at its severities 1, 3 and 5 (noise std and brightness shift on the 0-1 scale).
_LEVELS = {
    "gaussian_noise": (0.04, 0.08, 0.10),
    "gaussian_blur": (0.4, 0.7, 1.0),        # sigma in pixels
    "contrast": (0.75, 0.4, 0.15),          # factor towards the image's mean
    "brightness": (0.05, 0.15, 0.30),
    "jpeg": (80, 58, 40),                   # quality
    "pixelate": (0.95, 0.85, 0.65),         # down-scale factor, box filter, back up
}
SUBSET_SEED = 20190328   # fixed: the same test images in every run, whatever the run's seed
NOISE_SEED = 7


def stratified_subset(y, limit: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of about `limit` images with the classes in their test-set proportions (all when fewer)."""
    y = np.asarray(y).reshape(-1)
    if limit is None or limit <= 0 or limit >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / len(y) * limit).astype(int)
    for i in np.argsort(-(counts / len(y) * limit - quota))[: limit - int(quota.sum())]:
        quota[i] += 1  # largest remainders first, so the subset has exactly `limit` images
    picked = [rng.choice(np.flatnonzero(y == c), size=min(q, n), replace=False)
              for c, q, n in zip(classes, quota, counts, strict=True)]
    return np.sort(np.concatenate(picked))


def corrupt(images, corruption: str, severity: int, seed: int = NOISE_SEED) -> np.ndarray:
    """`images` (N, H, W, 3 uint8) under one corruption at severity 1-3, as uint8."""
    if corruption not in _LEVELS:
        raise ValueError(f"corruption={corruption!r} is unknown; use one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity={severity!r} must be one of {SEVERITIES}")
    level = _LEVELS[corruption][severity - 1]
    x = np.asarray(images, dtype=np.uint8)
    if corruption == "jpeg":
        return _per_image(x, lambda im: _jpeg(im, level))
    if corruption == "pixelate":
        return _per_image(x, lambda im: _pixelate(im, level))
    f = x.astype(np.float32) / 255.0
    if corruption == "gaussian_noise":
        rng = np.random.default_rng([seed, severity])
        f = f + rng.normal(0.0, level, size=f.shape).astype(np.float32)
    elif corruption == "gaussian_blur":
        f = _blur(f, level)
    elif corruption == "contrast":
        mean = f.mean(axis=(1, 2, 3), keepdims=True)
        f = (f - mean) * level + mean
    else:  # brightness
        f = f + level
    return (np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def suite(images) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Every corruption at every severity, stacked: (len(cases) * N, H, W, 3) and the (corruption, severity)
    of each block of N, in order (one array, so the model predicts them in a single pass)."""
    cases = [(c, s) for c in CORRUPTIONS for s in SEVERITIES]
    return np.concatenate([corrupt(images, c, s) for c, s in cases]), cases


def score(predicted, y, cases: list[tuple[str, int]], clean_accuracy: float | None = None) -> dict:
    """`{images, accuracy (mean over the suite), clean_accuracy, by_corruption: {name: [acc at severity 1..3]}}`
    from the stacked predictions `suite` was scored with."""
    y = np.asarray(y).reshape(-1)
    n = len(y)
    predicted = np.asarray(predicted).reshape(len(cases), n)
    by: dict[str, list[float]] = {}
    for (name, _severity), pred in zip(cases, predicted, strict=True):
        by.setdefault(name, []).append(float(np.mean(pred == y)))
    mean = float(np.mean([a for accs in by.values() for a in accs])) if n else None
    return {"images": n, "accuracy": mean, "clean_accuracy": clean_accuracy, "by_corruption": by,
            "severities": list(SEVERITIES)}


def _blur(f: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over height and width (edges repeated): a few vectorised passes over the batch."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    for axis in (1, 2):
        padded = np.pad(f, [(radius, radius) if a == axis else (0, 0) for a in range(f.ndim)], mode="edge")
        length = f.shape[axis]
        f = sum(w * np.take(padded, np.arange(i, i + length), axis=axis) for i, w in enumerate(taps))
    return f


def _per_image(x: np.ndarray, fn) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(fn(Image.fromarray(im)), dtype=np.uint8) for im in x]) if len(x) else x.copy()


def _jpeg(im, quality: int):
    from PIL import Image

    buffer = io.BytesIO()
    im.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _pixelate(im, factor: float):
    from PIL import Image

    w, h = im.size
    small = im.resize((max(1, int(w * factor)), max(1, int(h * factor))), Image.BOX)
    return small.resize((w, h), Image.BOX)
