"""The champion / regression gate: a pure decision per variant over the metrics store's numbers.

A variant's champion is its best promoted model from earlier runs. The first run promotes (bootstrap);
a test-accuracy drop of more than `tolerance` (absolute) below the champion is a regression. Accuracies on
different test sets are not compared: such a model starts a new lineage.
"""
from __future__ import annotations

DEFAULT_TOLERANCE = 0.02
# Accuracies are ratios of counts; this keeps e.g. 0.52 - 0.50 (= 0.020000000000000018) "within 0.02".
_EPSILON = 1e-9

# What `decide` returns in "decision"; the first two make the model the variant's champion.
PROMOTING = ("promoted", "bootstrap")
DECISIONS = ("promoted", "bootstrap", "kept", "regressed", "failed")


class RegressionError(RuntimeError):
    """The gate found a regression and `fail_on_regression` was set (the decisions are stored first)."""


def validate_tolerance(tolerance: float) -> float:
    """Return `tolerance` as a float, or raise a ValueError saying what a valid one is."""
    try:
        value = float(tolerance)
    except (TypeError, ValueError):
        raise ValueError(f"tolerance={tolerance!r} is not a number; give an accuracy drop such as 0.02") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"tolerance={tolerance!r} must be between 0 and 1 (an absolute accuracy drop, e.g. 0.02)")
    return value


def decide(accuracy: float | None, champion: dict | None, *, tolerance: float = DEFAULT_TOLERANCE,
           force_promote: bool = False, failed: bool = False, error: str | None = None,
           incomparable: str | None = None) -> dict:
    """The gate decision for one variant of one run.

    Args:
        accuracy: the new model's test accuracy (None when the variant has no evaluation).
        champion: the variant's best promoted earlier result, `{"run_id", "accuracy"}`, or None.
        tolerance: largest accepted drop in accuracy below the champion (absolute, e.g. 0.02).
        force_promote: promote a model that did not beat the champion (not a failed one).
        failed: the variant failed in this run (training or evaluation).
        error: why it failed, kept in the decision's `reason`.
        incomparable: why the champion's accuracy cannot be compared (it was measured on a different test
            set); the model then starts a new lineage ("bootstrap").

    Returns:
        `{decision, promoted, forced, accuracy, champion_run_id, champion_accuracy, delta, tolerance, reason}`
        where decision is one of promoted, bootstrap, kept, regressed, failed. A forced promotion has
        decision "promoted", forced True and `overridden` = the decision it replaced.
    """
    tolerance = validate_tolerance(tolerance)
    champion_run_id = champion.get("run_id") if champion else None
    champion_accuracy = _accuracy(champion.get("accuracy")) if champion else None
    out = {
        "accuracy": _accuracy(accuracy), "champion_run_id": champion_run_id,
        "champion_accuracy": champion_accuracy, "delta": None, "tolerance": tolerance, "forced": False,
    }
    if failed or out["accuracy"] is None:
        why = error or "no test accuracy was recorded"
        return {**out, "decision": "failed", "promoted": False, "reason": f"variant failed: {why}"}
    if champion_accuracy is None:
        return {**out, "decision": "bootstrap", "promoted": True, "reason": "no earlier promoted model: first champion"}
    if incomparable:
        return {**out, "decision": "bootstrap", "promoted": True,
                "reason": f"new baseline: the champion from {champion_run_id} is not comparable ({incomparable})"}

    delta = out["accuracy"] - champion_accuracy
    out["delta"] = delta
    vs = f"{out['accuracy']:.4f} vs champion {champion_accuracy:.4f} from {champion_run_id}"
    if delta < -tolerance - _EPSILON:
        decision, reason = "regressed", f"accuracy dropped by {-delta:.4f} (> tolerance {tolerance:g}): {vs}"
    elif delta > _EPSILON:
        decision, reason = "promoted", f"better than the champion by {delta:.4f}: {vs}"
    else:
        decision, reason = "kept", f"within tolerance {tolerance:g} but not better; the champion stays: {vs}"
    if force_promote and decision != "promoted":
        return {**out, "decision": "promoted", "promoted": True, "forced": True, "overridden": decision,
                "reason": f"force_promote overrode '{decision}': {reason}"}
    return {**out, "decision": decision, "promoted": decision in PROMOTING, "reason": reason}


def incomparable_test_sets(current: dict | None, previous: dict | None) -> str | None:
    """Why two runs' test accuracies are not comparable (different data source, test-set size or classes),
    from their `data_summary` (PreparedData.summary()); None when they are, or when either is unknown."""
    if not current or not previous:
        return None
    for key, label in (("source", "data source"), ("class_names", "classes")):
        if current.get(key) != previous.get(key):
            return f"{label} {previous.get(key)!r} then, {current.get(key)!r} now"
    now, then = (current.get("counts") or {}).get("test"), (previous.get("counts") or {}).get("test")
    if now != then:
        return f"{then} test images then, {now} now"
    return None


def summarize(decisions: dict[str, dict]) -> dict:
    """Variants per decision, e.g. `{"regressed": ["resnet50_v2"], "promoted": [...]}` (only non-empty ones)."""
    out: dict[str, list[str]] = {}
    for variant, d in decisions.items():
        out.setdefault(d["decision"], []).append(variant)
    return out


def _accuracy(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    if value != value:  # NaN: treat like a missing evaluation
        return None
    return value
