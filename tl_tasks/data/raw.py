"""The decoded form every source produces before splitting."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Raw:
    """A decoded source before splitting: train pool, optional test split, and what could not be read."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    attempted: int = 0

