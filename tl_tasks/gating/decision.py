"""The champion / regression gate: a noise-aware decision per variant, made on the same test images.

A variant's champion is its *latest* promotion (promoted or bootstrap, forced ones included) within the run's
lineage: runs on the same test set (see `data.fingerprint_test_set`). The new model and the champion are
compared image by image: the exact McNemar test on the discordant pairs gives the p-value, and an Agresti-Min
interval gives the 95% (1 - alpha) confidence interval of the paired accuracy difference.

- promoted:  significantly better than the champion (McNemar p < alpha, more images fixed than broken);
- regressed: the whole interval lies below -tolerance (we are confident the drop exceeds the practical margin);
- kept:      anything else, with the interval and p-value as the reason;
- bootstrap: no champion yet in this lineage; failed: no test accuracy; a forced promotion is "promoted".

NumPy and SciPy are imported inside the functions: the DAG imports this module at parse time.
"""
from __future__ import annotations

import math

from tl_tasks.config import DEFAULT_ALPHA, DEFAULT_TOLERANCE
from tl_tasks.store.models import DECISIONS, PROMOTING, Decision

__all__ = ["DECISIONS", "DEFAULT_ALPHA", "DEFAULT_TOLERANCE", "PROMOTING", "Decision", "RegressionError"]


class RegressionError(RuntimeError):
    """The gate found a regression and `fail_on_regression` was set (the decisions are stored first)."""


def validate_tolerance(tolerance: float) -> float:
    """Return `tolerance` as a float, or raise a ValueError saying what a valid one is."""
    try:
        value = float(tolerance)
    except (TypeError, ValueError):
        raise ValueError(f"tolerance={tolerance!r} is not a number; give an accuracy drop such as 0.005") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"tolerance={tolerance!r} must be between 0 and 1 (an absolute accuracy drop, e.g. 0.005)")
    return value


def validate_alpha(alpha: float) -> float:
    """Return `alpha` as a float, or raise a ValueError saying what a valid one is."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha={alpha!r} is not a number; give a significance level such as 0.05") from None
    if not 0.0 < value < 0.5:
        raise ValueError(f"alpha={alpha!r} must be between 0 and 0.5 (the significance level, e.g. 0.05)")
    return value


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of an accuracy of `correct` out of `n` images; None when n is 0."""
    if not n:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def compare_paired(y_true, new_pred, champion_pred, *, alpha: float = DEFAULT_ALPHA) -> dict:
    """Paired comparison of two models' predicted classes on the same test images.

    Returns:
        `{n, new_correct, champion_correct, fixed, broken, accuracy, champion_accuracy, delta, delta_ci, p_value}`:
        `fixed` = images the new model gets right and the champion wrong, `broken` = the reverse;
        `p_value` = the exact (binomial) McNemar test on fixed vs broken, two-sided; `delta_ci` = the
        (1 - alpha) Agresti-Min interval of accuracy(new) - accuracy(champion).
    """
    import numpy as np
    from scipy.stats import binomtest, norm

    y_true, new_pred, champion_pred = (np.asarray(a).reshape(-1) for a in (y_true, new_pred, champion_pred))
    n = len(y_true)
    if not (len(new_pred) == len(champion_pred) == n) or n == 0:
        raise ValueError(f"paired comparison needs predictions for the same images: {n} labels, {len(new_pred)} new "
                         f"and {len(champion_pred)} champion predictions")
    new_ok, champ_ok = new_pred == y_true, champion_pred == y_true
    fixed, broken = int(np.sum(new_ok & ~champ_ok)), int(np.sum(~new_ok & champ_ok))
    discordant = fixed + broken
    p_value = binomtest(fixed, discordant, 0.5).pvalue if discordant else 1.0
    # Agresti & Min (2005): add 1/2 to each cell of the paired 2x2 table, then a Wald interval.
    n2, b, c = n + 2.0, fixed + 0.5, broken + 0.5
    d = (b - c) / n2
    se = math.sqrt(max((b + c) - (b - c) ** 2 / n2, 0.0)) / n2
    z = float(norm.ppf(1 - alpha / 2))
    return {
        "n": n, "new_correct": int(new_ok.sum()), "champion_correct": int(champ_ok.sum()),
        "fixed": fixed, "broken": broken,
        "accuracy": float(new_ok.mean()), "champion_accuracy": float(champ_ok.mean()),
        "delta": (fixed - broken) / n,
        "delta_ci": [max(-1.0, d - z * se), min(1.0, d + z * se)],
        "p_value": float(p_value),
    }


def versus_previous(y_true, new_pred, previous_pred, *, previous_run_id: str, alpha: float) -> dict:
    """The paired comparison with the same variant in the lineage's previous run (the report shows it beside the
    champion's): `compare_paired` plus `run_id`, `alpha` and `significant` (p < alpha)."""
    paired = compare_paired(y_true, new_pred, previous_pred, alpha=alpha)
    return {**paired, "run_id": previous_run_id, "alpha": alpha, "significant": paired["p_value"] < alpha}


def decide(accuracy: float | None, champion: dict | None, *, paired: dict | None = None,
           tolerance: float = DEFAULT_TOLERANCE, alpha: float = DEFAULT_ALPHA, force_promote: bool = False,
           failed: bool = False, error: str | None = None, test_images: int | None = None,
           unpaired_reason: str | None = None) -> dict:
    """The gate decision for one variant of one run.

    Args:
        accuracy: the new model's test accuracy (None when the variant has no evaluation).
        champion: the variant's champion in this lineage, `{"run_id", "accuracy"}`, or None.
        paired: `compare_paired(...)` of the new model against the champion, on the same images.
        tolerance: the practical margin: a drop is a regression only when the whole interval is below -tolerance.
        alpha: significance level of the McNemar test (and 1 - confidence of the intervals).
        force_promote: promote a model that did not beat the champion (not a failed one).
        failed / error: the variant failed in this run, and why.
        test_images: size of the test set, for the accuracy's Wilson interval.
        unpaired_reason: why no paired comparison could be made although there is a champion.

    Returns:
        `{decision, promoted, forced, accuracy, accuracy_ci, champion_run_id, champion_accuracy, delta, delta_ci,
        p_value, fixed, broken, tolerance, alpha, reason}`; a forced promotion also has `overridden`.
    """
    tolerance, alpha = validate_tolerance(tolerance), validate_alpha(alpha)
    acc = _accuracy(accuracy)
    n = (paired or {}).get("n") or test_images
    out = {
        "accuracy": acc, "accuracy_ci": list(wilson_interval(round(acc * n), n, 1 - alpha)) if acc is not None and n else None,
        "champion_run_id": champion.get("run_id") if champion else None,
        "champion_accuracy": _accuracy(champion.get("accuracy")) if champion else None,
        "delta": None, "delta_ci": None, "p_value": None, "fixed": None, "broken": None,
        "tolerance": tolerance, "alpha": alpha, "forced": False,
    }
    if failed or acc is None:
        why = error or "no test accuracy was recorded"
        return {**out, "decision": Decision.FAILED, "promoted": False, "reason": f"variant failed: {why}"}
    if champion is None or out["champion_accuracy"] is None:
        return {**out, "decision": Decision.BOOTSTRAP, "promoted": True,
                "reason": "no earlier champion on this test set (lineage): first champion"}

    if paired is None:
        decision = Decision.KEPT
        reason = (f"not compared image by image ({unpaired_reason or 'no per-image predictions'}); "
                  f"the champion from {out['champion_run_id']} stays (force_promote replaces it)")
    else:
        out.update({k: paired[k] for k in ("delta", "delta_ci", "p_value", "fixed", "broken")})
        out["champion_accuracy"] = paired["champion_accuracy"]
        decision, reason = _paired_decision(out, alpha, tolerance)
    if force_promote and decision != Decision.PROMOTED:
        return {**out, "decision": Decision.PROMOTED, "promoted": True, "forced": True, "overridden": decision,
                "reason": f"force_promote overrode '{decision}': {reason}"}
    return {**out, "decision": decision, "promoted": decision in PROMOTING, "reason": reason}


def describe_delta(d: dict) -> str:
    """A gate decision's comparison in plain words, e.g. "1.20 points better than the champion (95% CI +0.40 to
    +2.00 points; p = 0.0030, 180 images fixed, 60 broken)"."""
    if d.get("delta") is None:
        return ""
    delta, (low, high) = d["delta"] * 100, (x * 100 for x in d["delta_ci"])
    word = "better than" if delta > 0 else "worse than" if delta < 0 else "the same as"
    size = f"{abs(delta):.2f} points {word}" if delta else "the same accuracy as"
    confidence = round((1 - (d.get("alpha") or DEFAULT_ALPHA)) * 100)
    return (f"{size} the champion ({confidence}% CI {low:+.2f} to {high:+.2f} points; "
            f"{_p(d['p_value'])}, {d['fixed']} images fixed, {d['broken']} broken)")


def summarize(decisions: dict[str, dict]) -> dict:
    """Variants per decision, e.g. `{"regressed": ["resnet50_v2"], "promoted": [...]}` (only non-empty ones)."""
    out: dict[str, list[str]] = {}
    for variant, d in decisions.items():
        out.setdefault(d["decision"], []).append(variant)
    return out


def _paired_decision(d: dict, alpha: float, tolerance: float) -> tuple[str, str]:
    words = describe_delta(d)
    vs = f"champion from {d['champion_run_id']}"
    if d["p_value"] < alpha and d["fixed"] > d["broken"]:
        return Decision.PROMOTED, f"significantly better (p < {alpha:g}): {words}; replaces the {vs}"
    if d["delta_ci"][1] < -tolerance:
        return Decision.REGRESSED, (f"worse beyond the {tolerance * 100:g}-point tolerance with confidence: {words}; "
                             f"the {vs} stays")
    if d["p_value"] < alpha:
        why = f"significantly worse, but the drop may be within the {tolerance * 100:g}-point tolerance"
    else:
        why = f"no significant difference (p >= {alpha:g})"
    return Decision.KEPT, f"{why}: {words}; the {vs} stays"


def _p(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}" if p < 0.01 else f"p = {p:.3f}"


def _accuracy(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    if value != value:  # NaN: treat like a missing evaluation
        return None
    return value
