"""The report's sections that explain a change, per variant: the per-class change table, the fixed and broken
galleries (vs the champion, vs the previous run), the reliability diagram, the robustness table and the model
card; and the calibration and robustness trend. The numbers come from `tl_tasks` (per_class, changed_images,
calibration, robustness, model_card) through the metrics database; this module only lays them out.
"""
from __future__ import annotations

from reports import formatting as fmt
from reports import media
from tl_tasks.data import load_array
from tl_tasks.errors import MissingInput
from tl_tasks.gating.changed_images import between
from tl_tasks.gating.model_card import card, to_markdown
from tl_tasks.layout import RunLayout

GALLERY_CAP = 12               # thumbnails per gallery (fixed or broken): keeps the page light
TREND_LIMIT = 200


def variant_extras(r: dict, run: dict, store, here: RunLayout, class_names: list[str],
                   previous: dict | None) -> dict:
    """Everything the explaining sections of one variant need; each part says why when it has nothing."""
    return {"class_changes": _class_changes(r),
            "galleries": _galleries(r, store, here, class_names, previous),
            "calibration": _calibration(r), "robustness": _robustness(r), "model_card": _model_card(r, run)}


def _class_changes(r: dict) -> dict:
    gate = r.get("gate") or {}
    check = gate.get("class_gate") or {}
    rows = []
    for c in r.get("class_changes") or []:
        worse = c["class_name"] in (check.get("worse") or [])
        d = c.get("delta")
        rows.append({"name": c["class_name"], "recall": c.get("recall"), "champion_recall": c.get("champion_recall"),
                     "delta": None if d is None else f"{d * 100:+.1f}",
                     "ci": "" if not c.get("delta_ci") else f"{c['delta_ci'][0] * 100:+.1f} to {c['delta_ci'][1] * 100:+.1f}",
                     "fixed": c.get("fixed"), "broken": c.get("broken"), "p_holm": _p(c.get("p_holm")),
                     "significant": bool(c.get("significant")), "worse": worse,
                     "css": ("bad" if worse or (c.get("significant") and (d or 0) < 0) else
                             "good" if c.get("significant") and (d or 0) > 0 else "")})
    if rows:
        tol = check.get("tolerance")
        note = (f"Per class, the new model's recall against the champion's (run {gate.get('champion_run_id')}) on "
                f"that class's test images; exact McNemar p-values Holm-adjusted across the {len(rows)} classes; "
                "95% paired intervals in points. ▲/▼ = significant (Holm p < α)."
                + (f" The per-class gate ({'on' if check.get('enabled') else 'off'}) blocks a promotion when a class "
                   f"is significantly worse and its whole interval lies below −{tol * 100:g} points ("
                   + (", ".join(check.get("worse")) + " did" if check.get("worse") else "none did") + ")."
                   if tol is not None else ""))
        return {"rows": rows, "note": note}
    if not gate:
        why = "No gate decision is recorded for this variant."
    elif gate.get("decision") == "bootstrap":
        why = "First champion of this lineage: there is no champion to compare the classes with."
    elif "class_gate" not in gate:
        why = "Gated before per-class verdicts were recorded: no per-class comparison is stored for this run."
    elif gate.get("decision") == "failed":
        why = "The variant failed: nothing to compare."
    else:
        why = "No per-class comparison: the champion's or this model's per-image predictions were unavailable."
    return {"rows": [], "note": why}


def _galleries(r: dict, store, here: RunLayout, class_names: list[str], previous: dict | None) -> list[dict]:
    """The images the model fixed and broke vs the champion and vs the previous run (`changed_images.between`)."""
    if r.get("accuracy") is None:
        return []
    try:
        y_test = load_array(here, "y_test")
    except (MissingInput, OSError, ValueError):
        return []
    out = []
    gate = r.get("gate") or {}
    champion_run = gate.get("champion_run_id")
    others = []
    if champion_run:
        others.append(("the champion", champion_run))
    if previous and previous.get("run_id") and previous["run_id"] != champion_run:
        others.append(("the previous run", previous["run_id"]))
    for label, other_run in others:
        other = store.get_result(other_run, r["variant"])
        title = f"vs {label} (run {other_run})"
        if not other or other.get("accuracy") is None:
            out.append({"title": title, "note": f"Run {other_run} has no evaluated {r['variant']} to compare with."})
            continue
        changed, why = between(r, other, y_test, cap=GALLERY_CAP)
        if changed is None:
            out.append({"title": title, "note": f"No per-image comparison: {why}"})
            continue
        out.append({"title": title, "fixed": _gallery(changed["fixed"], here, class_names, "fixed"),
                    "broken": _gallery(changed["broken"], here, class_names, "broken"),
                    "ranked": changed["ranked_by_confidence"]})
    if previous and previous.get("run_id") == champion_run:
        out.append({"title": "vs the previous run", "note": "The previous run is the champion: see above."})
    return out


def _gallery(part: dict, here: RunLayout, class_names: list[str], kind: str) -> dict:
    images = media.load_test_images(here)
    shown = []
    for m in part["images"]:
        entry = {"index": m["index"], "true": media.label(m["true"], class_names),
                 "predicted": media.label(m["predicted"], class_names), "before": media.label(m["before"], class_names),
                 "confidence": None if m["confidence"] is None else f"{m['confidence']:.0%}"}
        if images is not None and 0 <= m["index"] < len(images):
            entry["src"] = media.thumbnail(images[m["index"]])
        shown.append(entry)
    return {"count": part["count"], "images": shown, "kind": kind,
            "note": "" if images is not None or not shown else "The test images are no longer on disk."}


def _calibration(r: dict) -> dict:
    from reports import plots  # matplotlib loads only when a page draws

    c = r.get("calibration")
    if not c:
        return {"note": "Calibration not measured (evaluated before ECE and temperature scaling were recorded)."
                if r.get("accuracy") is not None else ""}
    out = {"ece": fmt.pct(c.get("ece")), "ece_scaled": fmt.pct(c.get("ece_scaled")),
           "temperature": "—" if c.get("temperature") is None else f"{c['temperature']:.2f}",
           "val_images": c.get("val_images"), "img": None}
    if c.get("bins"):
        out["img"] = media.plot(plots.reliability_diagram(c["bins"], c.get("bins_scaled"), r["variant"], c.get("ece"),
                                                     c.get("ece_scaled"), c.get("temperature")),
                           f"Reliability diagram of {r['variant']}: accuracy against confidence per bin")
    return out


def _robustness(r: dict) -> dict:
    rob = r.get("robustness")
    if not rob:
        return {"rows": [], "note": "Robustness not measured (evaluated before the corruption suite, or it was "
                                    "turned off)." if r.get("accuracy") is not None else ""}
    clean = rob.get("clean_accuracy")
    rows = []
    for name, accs in (rob.get("by_corruption") or {}).items():
        rows.append({"name": name.replace("_", " "), "cells": [
            {"text": fmt.pct(a), "drop": "" if clean is None or a is None else f"{(a - clean) * 100:+.1f}"}
            for a in accs]})
    return {"rows": rows, "accuracy": fmt.pct(rob.get("accuracy")), "clean": fmt.pct(clean),
            "images": rob.get("images"), "note": ""}


def _model_card(r: dict, run: dict) -> dict | None:
    if r.get("accuracy") is None:
        return None
    c = card(run, r)
    return {"file": f"model_card_{r['variant']}.md", "title": c["title"], "sections": c["sections"],
            "markdown": to_markdown(c)}


def trend(store, run_id: str, variants: list[str], current, lineage: str | None) -> dict | None:
    """ECE and accuracy under corruption across this lineage's runs (one panel each), or None before any."""
    from reports import plots  # matplotlib loads only when a page draws

    if not lineage:
        return None
    series = {"ECE (lower is better)": {}, "accuracy under corruption": {}}
    any_value = False
    for variant in variants:
        points = store.trend(variant, limit=TREND_LIMIT, until_run_id=run_id, lineage=lineage)
        for title, key in (("ECE (lower is better)", "ece"), ("accuracy under corruption", "robust_accuracy")):
            pts = [{"logical_date": fmt.as_datetime(p.get("logical_date") or p.get("started_at")), "value": p.get(key)}
                   for p in points]
            series[title][variant] = [p for p in pts if p["logical_date"] is not None]
            any_value = any_value or any(p["value"] is not None for p in pts)
    if not any_value:
        return {"img": None, "caption": "No calibration or robustness is recorded on this test set yet (runs "
                                        "evaluated before they were measured show none)."}
    img, width, height = media.figure_img(plots.metric_trends(series, current))
    return {"img": img, "width": width, "height": height,
            "caption": "Expected calibration error (15 bins, before temperature scaling) and mean accuracy under the "
                       "corruption suite, per variant, across runs on this test set; runs evaluated before these "
                       "were measured leave gaps."}


def _p(p) -> str:
    if p is None:
        return ""
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"
