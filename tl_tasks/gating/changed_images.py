"""The test images whose outcome changed between two models of one lineage: those the new model *fixed* (right
now, wrong before) and those it *broke* (wrong now, right before), ranked by the new model's confidence.

Confidences are the top-1 probabilities evaluation stores beside the predictions (`ModelFiles.confidence`);
without them (evaluated before they were kept) images are listed in test-set order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tl_tasks.training.predictions import PredictionsUnavailable, load_predictions

DEFAULT_CAP = 12


def changed(y_true, new_pred, old_pred, confidence=None, *, cap: int = DEFAULT_CAP) -> dict:
    """`{"fixed": {"count", "images": [{index, true, predicted, before, confidence}]}, "broken": {...},
    "ranked_by_confidence": bool}`; at most `cap` images per list, the most confident first."""
    y, new, old = (np.asarray(a).reshape(-1) for a in (y_true, new_pred, old_pred))
    conf = None if confidence is None else np.asarray(confidence, dtype=np.float64).reshape(-1)
    if conf is not None and len(conf) != len(y):
        conf = None
    out = {"ranked_by_confidence": conf is not None}
    for name, mask in (("fixed", (new == y) & (old != y)), ("broken", (new != y) & (old == y))):
        idx = np.flatnonzero(mask)
        if conf is not None:
            idx = idx[np.argsort(-conf[idx], kind="stable")]
        out[name] = {"count": int(mask.sum()), "images": [
            {"index": int(i), "true": int(y[i]), "predicted": int(new[i]), "before": int(old[i]),
             "confidence": None if conf is None else float(conf[i])} for i in idx[:cap]]}
    return out


def between(result: dict, other: dict, y_true, *, cap: int = DEFAULT_CAP) -> tuple[dict | None, str | None]:
    """`changed` for two stored results (dicts with predictions_path/_sha256, eval_info), or (None, why not).

    The other model's predictions are read from its run folder, else from its published champion copy."""
    n = len(y_true)
    try:
        new = load_predictions(result.get("predictions_path"), result.get("predictions_sha256"), expected_len=n)
        old = stored_predictions(other, n)
    except PredictionsUnavailable as exc:
        return None, str(exc)
    return changed(y_true, new, old, load_confidence(result, n), cap=cap), None


def load_confidence(result: dict, n: int):
    """The stored top-1 confidences of a result, or None (not stored, or not for these `n` images)."""
    path = (result.get("eval_info") or {}).get("confidence_path")
    if not path or not Path(path).is_file():
        return None
    try:
        conf = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return conf if len(conf) == n else None


def stored_predictions(other: dict, n: int):
    """A stored result's per-image predictions: from its run folder, else from its published champion copy.

    Raises PredictionsUnavailable naming the run when neither is readable."""
    try:
        return load_predictions(other.get("predictions_path"), other.get("predictions_sha256"), expected_len=n)
    except PredictionsUnavailable as first:
        published = (other.get("gate") or {}).get("published")
        if published and other.get("predictions_path"):
            copy = Path(published) / Path(other["predictions_path"]).name
            if copy.is_file():
                return load_predictions(copy, other.get("predictions_sha256"), expected_len=n)
        raise PredictionsUnavailable(f"run {other.get('run_id')}: {first}") from None
