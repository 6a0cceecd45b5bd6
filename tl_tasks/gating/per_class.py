"""Per-class verdicts: the new model against the champion on each class's test images, and the gate check built
on them (a promotion is blocked when one class got significantly worse beyond a per-class tolerance).

Within a class, accuracy is the class's recall, so the paired machinery of `tl_tasks.gating.decision.compare_paired`
applies unchanged: an exact McNemar test on the class's discordant images and an Agresti-Min interval of the
recall change. The p-values are Holm-adjusted across the classes (ten unadjusted tests at alpha 0.05 would flag some
class by chance 40% of the time: 1 - 0.95**10).
"""
from __future__ import annotations

from tl_tasks.config import DEFAULT_ALPHA, DEFAULT_CLASS_GATE, DEFAULT_CLASS_TOLERANCE
from tl_tasks.gating.decision import Decision, compare_paired, validate_tolerance


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input's order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def compare_classes(y_true, new_pred, champion_pred, class_names, *, alpha: float = DEFAULT_ALPHA) -> list[dict]:
    """Per class: `{class_index, class_name, n, recall, champion_recall, delta, delta_ci, fixed, broken, p_value,
    p_holm, significant}`; `significant` = Holm-adjusted p < alpha. Classes without test images are left out."""
    import numpy as np

    y_true, new_pred, champion_pred = (np.asarray(a).reshape(-1) for a in (y_true, new_pred, champion_pred))
    rows = []
    for c, name in enumerate(class_names):
        mask = y_true == c
        if not mask.any():
            continue
        p = compare_paired(y_true[mask], new_pred[mask], champion_pred[mask], alpha=alpha)
        rows.append({"class_index": c, "class_name": str(name), "n": p["n"], "recall": p["accuracy"],
                     "champion_recall": p["champion_accuracy"], "delta": p["delta"], "delta_ci": p["delta_ci"],
                     "fixed": p["fixed"], "broken": p["broken"], "p_value": p["p_value"]})
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
        row["significant"] = adjusted < alpha
    return rows


def worse_classes(rows: list[dict], tolerance: float = DEFAULT_CLASS_TOLERANCE) -> list[dict]:
    """Classes significantly worse (Holm) whose whole interval lies below -tolerance, worst first."""
    tolerance = validate_tolerance(tolerance)
    bad = [r for r in rows if r["significant"] and r["delta"] < 0 and r["delta_ci"][1] < -tolerance]
    return sorted(bad, key=lambda r: r["delta"])


def describe_class(r: dict) -> str:
    """e.g. "class 'cat': recall 20.0% vs 62.0% (-42.00 points, 95% CI -46.1 to -37.9; Holm p < 0.0001)"."""
    low, high = (x * 100 for x in r["delta_ci"])
    p = r["p_holm"]
    ptext = "Holm p < 0.0001" if p < 1e-4 else f"Holm p = {p:.4f}" if p < 0.01 else f"Holm p = {p:.3f}"
    return (f"class '{r['class_name']}': recall {r['recall']:.1%} vs {r['champion_recall']:.1%} "
            f"({r['delta'] * 100:+.2f} points, CI {low:+.1f} to {high:+.1f}; {ptext})")


def apply_class_gate(decision: dict, rows: list[dict] | None, *, enabled: bool = DEFAULT_CLASS_GATE,
                     tolerance: float = DEFAULT_CLASS_TOLERANCE) -> dict:
    """The decision with the per-class check applied: a (not forced) promotion over a champion becomes "kept"
    when a class is significantly worse beyond `tolerance`; the reason names the class(es).

    The rows and the check's outcome are kept in the decision (`per_class`, `class_gate`) for the store.
    """
    tolerance = validate_tolerance(tolerance)
    out = {**decision, "class_gate": {"enabled": bool(enabled), "tolerance": tolerance, "worse": [],
                                      "checked": rows is not None}}
    if rows is None:
        return out
    out["per_class"] = rows
    worse = worse_classes(rows, tolerance)
    out["class_gate"]["worse"] = [r["class_name"] for r in worse]
    if not worse or not enabled or decision.get("forced") or decision.get("decision") != Decision.PROMOTED:
        return out
    words = "; ".join(describe_class(r) for r in worse)
    return {**out, "decision": Decision.KEPT, "promoted": False, "blocked_by_class": True,
            "reason": (f"promotion blocked by the per-class check: {words} is significantly worse beyond the "
                       f"{tolerance * 100:g}-point per-class tolerance (overall: {decision.get('reason')})")}
