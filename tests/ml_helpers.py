"""Helpers for the model/train/evaluate tests: tiny learnable prepared-data folders and small settings."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from tl_tasks.config import PROFILES, Settings
from tl_tasks.data import CIFAR10_CLASSES

CLASS_NAMES = list(CIFAR10_CLASSES)


def synthetic_images(n: int, num_classes: int = 10, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Learnable uint8 images: each class has its own colour and stripe direction/frequency, plus noise."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).integers(40, 216, size=(num_classes, 3))  # fixed across splits
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    yy, xx = np.mgrid[0:size, 0:size]
    x = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, c in enumerate(y):
        freq = 1 + c % 3
        stripes = np.sin((xx if c % 2 else yy) * freq * np.pi / 8)[..., None] * 30
        img = palette[c][None, None, :] + stripes + rng.normal(0, 12, (size, size, 3))
        x[i] = np.clip(img, 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


def write_prepared(directory: Path, *, n_train: int = 300, n_val: int = 60, n_test: int = 60, size: int = 32,
                   num_classes: int = 10, seed: int = 0) -> Path:
    """A prepared-data folder as tl_tasks.data writes it: x_/y_{train,val,test}.npy and meta.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    counts, class_counts = {}, {}
    names = CLASS_NAMES[:num_classes] if num_classes <= len(CLASS_NAMES) else [f"c{i}" for i in range(num_classes)]
    for k, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        x, y = synthetic_images(n, num_classes, size, seed=seed + k)
        np.save(directory / f"x_{split}.npy", x)
        np.save(directory / f"y_{split}.npy", y)
        counts[split] = n
        class_counts[split] = {names[c]: int((y == c).sum()) for c in range(num_classes)}
    meta = {"path": str(directory), "source": "synthetic", "class_names": names, "counts": counts,
            "class_counts": class_counts, "fingerprint": f"test-{seed}-{n_train}-{n_val}-{n_test}-{size}",
            "skipped": []}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def small_settings(**changes) -> Settings:
    """The smoke profile with test-sized changes (e.g. epochs={"cnn": 2, "resnet50": 1})."""
    return dataclasses.replace(PROFILES["smoke"], **changes)
