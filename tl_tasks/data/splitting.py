"""Checks on a decoded source and its split: stratified train/val (and test, when the source has none),
`limit_per_class` subsets; all seeded."""
from __future__ import annotations

import numpy as np

from tl_tasks.data.raw import Raw
from tl_tasks.errors import BadInput

TEST_FRACTION = 1 / 6          # carved per class when a folder source has no test/ (CIFAR-10's 10k of 60k)
TEST_LIMIT_RATIO = 5           # limit_per_class=n keeps max(1, n // 5) test images per class (CIFAR-10's ratio)


def check_bad_fraction(raw: Raw, max_bad_fraction: float) -> None:
    n_bad, n = len(raw.skipped), max(raw.attempted, 1)
    if n_bad and n_bad / n > max_bad_fraction:
        raise BadInput(
            f"{n_bad} of {raw.attempted} images ({n_bad / n:.1%}) could not be read, more than "
            f"max_bad_fraction={max_bad_fraction} allows; first: {list(raw.skipped[:5])}. "
            "Fix or remove those files, or raise max_bad_fraction")


def check_raw(raw: Raw, source: str, image_size: int) -> None:
    k = len(raw.class_names)
    if k < 2:
        raise BadInput(f"source={source!r} has {k} class(es) {list(raw.class_names)}; need at least 2")
    for split, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if x is None:
            continue
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (image_size, image_size, 3):
            raise BadInput(f"source={source!r}: {split} images have shape {x.shape} dtype {x.dtype}; "
                             f"expected (N, {image_size}, {image_size}, 3) uint8")
        if y.shape != (len(x),):
            raise BadInput(f"source={source!r}: {split} has {len(y)} labels for {len(x)} images")
        if len(y) and (y.min() < 0 or y.max() >= k):
            bad = int(y[(y < 0) | (y >= k)][0])
            raise BadInput(f"source={source!r}: {split} label {bad} is out of range for {k} classes "
                             f"{list(raw.class_names)} (valid: 0..{k - 1})")
    counts = np.bincount(raw.y_train, minlength=k)
    empty = [raw.class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise BadInput(f"source={source!r}: class(es) {empty} have no readable training images; "
                         "add images or remove those classes")


def split(raw: Raw, *, limit_per_class: int | None, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    x, y = raw.x_train, raw.y_train
    if raw.x_test is None:
        keep, test = _stratified(y, TEST_FRACTION, np.random.default_rng([seed, 1]))
        x_test, y_test = x[test], y[test]
        x, y = x[keep], y[keep]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    if limit_per_class is not None:
        idx = _limit(y, limit_per_class, np.random.default_rng([seed, 2]))
        x, y = x[idx], y[idx]
        idx = _limit(y_test, max(1, limit_per_class // TEST_LIMIT_RATIO), np.random.default_rng([seed, 3]))
        x_test, y_test = x_test[idx], y_test[idx]
    train, val = _stratified(y, val_fraction, np.random.default_rng([seed, 4]))
    shuffle = np.random.default_rng([seed, 5])
    train, val = shuffle.permutation(train), shuffle.permutation(val)
    arrays = {"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val],
              "x_test": x_test, "y_test": y_test}
    return {k: np.ascontiguousarray(v, dtype=np.uint8 if k[0] == "x" else np.int64) for k, v in arrays.items()}


def _stratified(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, part): round(fraction * n) of each class in `part` (>= 1, and >= 1 left), both sorted."""
    rest, part = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = len(idx)
        k = min(max(int(np.floor(n * fraction + 0.5)), 1 if n >= 2 else 0), n - 1)
        chosen = rng.permutation(n)
        part.append(idx[chosen[:k]])
        rest.append(idx[chosen[k:]])
    return _sorted_concat(rest), _sorted_concat(part)


def _limit(y: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most `limit` images per class (a seeded random subset)."""
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(idx if len(idx) <= limit else rng.choice(idx, limit, replace=False))
    return _sorted_concat(keep)


def _sorted_concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


