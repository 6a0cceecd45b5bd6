"""`synthetic`: a seeded, learnable ten-class image set (no files), for tests and the smoke profile."""
from __future__ import annotations

import numpy as np

from tl_tasks.data.raw import Raw
from tl_tasks.data.splitting import TEST_LIMIT_RATIO

SYNTHETIC_CLASSES = 10
SYNTHETIC_DEFAULT_PER_CLASS = 100


def generate(per_class: int, *, seed: int, image_size: int, num_classes: int = SYNTHETIC_CLASSES) -> Raw:
    """Class k: stripes at angle k*180/K degrees in a colour of hue k/K, random phase, noise and brightness."""
    rng = np.random.default_rng([seed, 7])
    n_test = max(1, per_class // TEST_LIMIT_RATIO)
    coords = np.arange(image_size, dtype=np.float32)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    hues = np.arange(num_classes) / num_classes
    colours = np.stack([_hue_to_rgb(h) for h in hues]) * 200 + 40

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(num_classes, dtype=np.int64), n)
        angle = np.pi * y / num_classes + rng.normal(0, 0.05, len(y))
        phase = rng.uniform(0, 2 * np.pi, len(y))
        freq = 3.0 * 2 * np.pi / image_size
        proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
        stripes = 0.5 + 0.5 * np.sin(freq * proj + phase[:, None, None])
        brightness = rng.uniform(0.7, 1.1, len(y))[:, None, None, None]
        img = 20 + stripes[..., None] * colours[y][:, None, None, :] * brightness
        img += rng.normal(0, 12, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8), y

    x_train, y_train = make(per_class)
    x_test, y_test = make(n_test)
    names = tuple(f"class_{k}" for k in range(num_classes))
    return Raw(x_train, y_train, x_test, y_test, names, attempted=len(y_train) + len(y_test))


def _hue_to_rgb(h: float) -> np.ndarray:
    import colorsys

    return np.asarray(colorsys.hsv_to_rgb(h, 0.9, 1.0), np.float32)

