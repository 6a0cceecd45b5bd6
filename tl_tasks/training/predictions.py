"""Per-image results: the predicted class of every test image, stored beside `evaluation.json`
(`tl_tasks.layout.ModelFiles.predictions`).

With them any two models of one lineage (same test images) can be compared image by image, now or later.
The metrics database keeps each file's sha256; a file that is missing or differs is refused with a clear error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tl_tasks.files import save_npy_atomic, sha256_file


class PredictionsUnavailable(RuntimeError):
    """Stored per-image predictions are missing, altered or do not fit the test set."""


def write_predictions(path: Path, predicted) -> str:
    """Store predicted class indices compactly (uint8, or uint16 past 256 classes), atomically.

    Returns:
        The sha256 of the file's bytes, which the metrics database keeps to verify it later.
    """
    path = Path(path)
    predicted = np.asarray(predicted).reshape(-1)
    dtype = np.uint8 if predicted.size == 0 or int(predicted.max()) < 256 else np.uint16
    save_npy_atomic(path, predicted.astype(dtype))
    return sha256_file(path)


def load_predictions(path: str | Path | None, sha256: str | None, *, expected_len: int | None = None) -> np.ndarray:
    """Read stored predictions, checking the sha256 the database recorded and the number of images.

    Raises:
        PredictionsUnavailable: naming the file and what to do.
    """
    if not path:
        raise PredictionsUnavailable("no per-image predictions were stored for this result (evaluated before "
                                     "predictions were kept); re-run its evaluate task to store them")
    path = Path(path)
    if not path.is_file():
        raise PredictionsUnavailable(f"per-image predictions {path} are missing (deleted?); re-run that evaluation "
                                     f"or compare with a newer champion")
    if sha256 and sha256_file(path) != sha256:
        raise PredictionsUnavailable(f"per-image predictions {path} differ from the sha256 recorded in the metrics "
                                     f"database ({sha256[:12]}...): the file was altered; re-run that evaluation")
    predicted = np.load(path, allow_pickle=False)
    if expected_len is not None and len(predicted) != expected_len:
        raise PredictionsUnavailable(f"per-image predictions {path} hold {len(predicted)} images but the test set "
                                     f"has {expected_len}")
    return predicted.astype(np.int64)
