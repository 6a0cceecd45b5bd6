"""What a run's report shows, gathered from the metrics database and the run's files: the headline, the summary
rows with their changes and uncertainty, the trend chart, one section per variant and the run's metadata.

`report_context(run, store)` returns the dict that `templates/report.html` renders; formatting is in
`reports.formatting`.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
from datetime import UTC, datetime

from reports import formatting as fmt
from tl_tasks import layout
from tl_tasks.data import load_array
from tl_tasks.errors import MissingInput
from tl_tasks.gating.decision import Decision
from tl_tasks.layout import RunLayout
from tl_tasks.variants import VARIANTS, variant_sort_key

TREND_LIMIT = 200              # trend points per variant of this run's lineage
OTHER_LINEAGES_LIMIT = 50      # the last runs of other lineages, drawn apart as faint lines
MISCLASSIFIED_SHOWN = 24       # thumbnails per variant
THUMB_MAX = 64                 # thumbnails larger than this (px) are downscaled


def report_context(run: dict, store) -> dict:
    run_id = run["run_id"]
    here = RunLayout(run_id)
    results = _results(run)
    class_names = list(run.get("class_names") or [])
    lineage = _lineage(run, store)
    previous = store.previous_run(run_id, same_lineage=True)
    prev_results = {r["variant"]: r for r in _results(previous)} if previous else {}
    rows = [_summary_row(r, prev_results.get(r["variant"])) for r in results]
    scored = [r for r in rows if r["accuracy"] is not None and not r["failed"]]
    best = max(scored, key=lambda r: r["accuracy"]) if scored else None
    if best is not None:
        best["is_best"] = True
    failed = [
        {"variant": r["variant"], "stage": r.get("stage"), "error": r.get("error"), "when": r.get("failed_at")}
        for r in results if _is_failed(r)
    ]
    current_date = fmt.as_datetime(run.get("logical_date") or run.get("started_at"))
    return {
        "run": {**run, "when": current_date},
        "lineage": lineage,
        "previous": _previous_link(previous, here),
        "index_href": layout.href(here.report_url_path, layout.REPORTS_INDEX_URL_PATH),
        "headline": _headline(rows, best, failed, previous, run.get("error")),
        "skipped": _skipped(run, here),
        "rows": rows,
        "trend": _trend(store, run_id, [r["variant"] for r in results], current_date, run.get("lineage")),
        "variants": [v for v in (_variant_section(r, class_names, here) for r in results) if v],
        "failed": failed,
        "metadata": _metadata(run, results),
        "generated_at": datetime.now(UTC),
    }


def _skipped(run: dict, here: RunLayout) -> dict | None:
    """A run skipped because nothing changed: the reason and a link to the run it equals."""
    note = (run.get("params") or {}).get("skipped")
    if not note:
        return None
    same = note.get("same_as")
    there = RunLayout(same) if same else None
    return {"reason": note.get("reason") or "unchanged", "run_id": same,
            "href": layout.href(here.report_url_path, there.report_url_path)
            if there and there.report_index.is_file() else None}


def _lineage(run: dict, store) -> dict | None:
    """Which lineage (test set) the run belongs to, and how many runs up to it share it."""
    key = run.get("lineage")
    if not key:
        return None
    size = store.lineage_size(key, until_run_id=run["run_id"])
    tests = ((run.get("data_summary") or {}).get("counts") or {}).get("test")
    legacy = key.startswith("legacy-")
    return {"key": key, "short": key[:12], "runs": size, "earlier": (size - 1) if size else None,
            "test_images": tests, "legacy": legacy}


def _results(run: dict | None) -> list[dict]:
    """The run's per-variant results as a list, whether the store gives a list or a dict by variant."""
    if not run:
        return []
    results = run.get("results") or []
    if isinstance(results, dict):
        results = [{"variant": k, **v} for k, v in results.items()]
    return sorted(results, key=lambda r: variant_sort_key(r.get("variant", "")))


def _is_failed(result: dict) -> bool:
    return (result.get("state") or "").lower() == "failed"


def _summary_row(r: dict, prev: dict | None) -> dict:
    """One variant's row: its numbers, and the gate's intervals and comparisons (the report computes none)."""
    acc = r.get("accuracy")
    gate = r.get("gate") or None
    prev = prev or {}
    champ_acc = (gate or {}).get("champion_accuracy")
    paired_prev = (gate or {}).get("previous")
    return {
        "variant": r["variant"],
        "failed": _is_failed(r),
        "stage": r.get("stage"),
        "is_best": False,
        "accuracy": acc,
        "accuracy_ci": (gate or {}).get("accuracy_ci"),
        "alpha": (gate or {}).get("alpha"),
        "loss": r.get("loss"),
        "top3": r.get("top3_accuracy"),
        "macro_f1": r.get("macro_f1"),
        "epochs_run": r.get("epochs_run"),
        "best_epoch": r.get("best_epoch"),
        "train_seconds": r.get("train_seconds"),
        "inference": r.get("inference_img_per_s"),
        "params_trainable": r.get("params_trainable"),
        "params_total": r.get("params_total"),
        "weights": r.get("weights"),
        "d_prev": {
            "accuracy": fmt.delta(acc, prev.get("accuracy")),
            "loss": fmt.delta(r.get("loss"), prev.get("loss"), higher_is_better=False, scale=1, digits=3, unit=""),
            "top3": fmt.delta(r.get("top3_accuracy"), prev.get("top3_accuracy")),
            "macro_f1": fmt.delta(r.get("macro_f1"), prev.get("macro_f1"), scale=1, digits=3, unit=""),
        },
        "prev_words": fmt.uncertainty(paired_prev) if paired_prev else "",
        "prev_significant": bool(paired_prev and paired_prev.get("significant")),
        "d_champ": fmt.delta(acc, champ_acc) if gate and gate.get("delta") is not None else None,
        "champ_words": fmt.uncertainty(gate) if gate and gate.get("delta") is not None else "",
        "champion_text": (f"champion {fmt.pct(champ_acc)} ({gate.get('champion_run_id')})"
                          if gate and champ_acc is not None else ""),
        "gate": _gate(gate),
    }


def _gate(gate: dict | None) -> dict | None:
    if not gate:
        return None
    decision = gate.get("decision") or ""
    return {"decision": decision, "note": gate.get("reason") or "", "forced": bool(gate.get("forced"))}


def _headline(rows: list[dict], best: dict | None, failed: list[dict], previous: dict | None,
              run_error: str | None = None) -> dict:
    """Lines for the box at the top: which variant is best, what regressed, what failed (each line has a css)."""
    lines = []
    if best is not None:
        text = f"Best variant: {best['variant']} with {fmt.pct(best['accuracy'])} test accuracy"
        d = best["d_prev"]["accuracy"]
        words = f"; {best['prev_words']}" if best["prev_words"] else ""
        lines.append({"text": text + (f" ({d.text} vs the previous run on this test set{words})." if d is not None
                                      else "."), "css": "lead"})
    elif rows:
        lines.append({"text": "No variant has a test accuracy in this run.", "css": "lead"})
    else:
        lines.append({"text": "No variant results are recorded for this run.", "css": "lead"})
    regressed = [r for r in rows if r["gate"] and r["gate"]["decision"] == Decision.REGRESSED]
    promoted = [r["variant"] for r in rows if r["gate"] and r["gate"]["decision"] == Decision.PROMOTED]
    if regressed:
        lines.append({"css": "bad", "text": "Regressed against the champion (confidently worse beyond the tolerance): "
                      + ", ".join(_with_uncertainty(r["variant"], r["d_champ"], r["champ_words"]) for r in regressed) + "."})
    elif any(r["gate"] and r["gate"]["decision"] != Decision.FAILED for r in rows):
        lines.append({"css": "ok", "text": "Nothing regressed against the champions."})
    dropped = [_with_uncertainty(r["variant"], r["d_prev"]["accuracy"], r["prev_words"]) for r in rows
               if r["prev_significant"] and r["d_prev"]["accuracy"].value < 0 and r not in regressed]
    if dropped:
        lines.append({"css": "bad", "text": "Significantly lower than the previous run on the same test set: "
                      + ", ".join(dropped) + "."})
    if promoted:
        lines.append({"css": "good", "text": "Promoted to champion: " + ", ".join(
            _with_uncertainty(r["variant"], r["d_champ"], r["champ_words"]) if r["d_champ"] else f"{r['variant']} (forced)"
            if r["gate"]["forced"] else r["variant"] for r in rows if r["variant"] in promoted) + "."})
    if failed:
        lines.append({"css": "fail", "text": f"{len(failed)} variant{'s' if len(failed) > 1 else ''} failed: " + ", ".join(
            f"{f['variant']} (in {f['stage']})" if f["stage"] else f["variant"] for f in failed) + "."})
    if run_error:
        lines.append({"css": "fail", "text": f"The run failed: {run_error}"})
    if previous is None:
        lines.append({"css": "muted", "text": "First run on this test set (lineage): there is no earlier run to "
                                              "compare with yet."})
    tone = "bad" if regressed or failed or run_error else "good" if best is not None else ""
    return {"lines": lines, "tone": tone}


def _with_uncertainty(variant: str, delta, words: str) -> str:
    if delta is None:
        return variant
    return f"{variant} ({delta.text}" + (f", {words}" if words else "") + ")"


def _previous_link(previous: dict | None, here: RunLayout) -> dict | None:
    if not previous:
        return None
    there = RunLayout(previous["run_id"])
    return {
        "run_id": previous["run_id"],
        "href": layout.href(here.report_url_path, there.report_url_path if there.report_index.is_file() else layout.REPORTS_INDEX_URL_PATH),
        "when": previous.get("logical_date") or previous.get("started_at"),
    }


def _trend(store, run_id: str, variants: list[str], current: datetime | None, lineage: str | None) -> dict:
    """The trend chart: per variant, this lineage's runs as one line with the gate's accuracy intervals as bands;
    runs on other test sets (other lineages) as separate faint lines, never joined with this one."""
    from reports import plots

    series, others, runs, dates, older = {}, {}, set(), [], []
    for variant in variants:
        mine, theirs = [], {}
        points = store.trend(variant, limit=TREND_LIMIT, until_run_id=run_id, lineage=lineage) if lineage else []
        points += [p for p in store.trend(variant, limit=OTHER_LINEAGES_LIMIT, until_run_id=run_id)
                   if p.get("lineage") != lineage]
        for p in points:
            when = fmt.as_datetime(p.get("logical_date") or p.get("started_at"))
            if when is None:
                continue
            point = {"logical_date": when, "accuracy": p.get("accuracy"),
                     "ci": p.get("accuracy_ci")}
            if lineage is not None and p.get("lineage") == lineage:
                mine.append(point)
                if p.get("accuracy") is not None:
                    runs.add(p.get("run_id"))
                    dates.append(when)
            elif p.get("lineage"):
                theirs.setdefault(p["lineage"], []).append(point)
        series[variant] = mine
        others[variant] = list(theirs.values())
        if lineage is not None and len(mine) >= TREND_LIMIT:
            summary = store.trend_summary(variant, lineage, run_id, skip=TREND_LIMIT)
            if summary:
                older.append(f"{variant}: {summary['runs']:,} earlier run{'s' if summary['runs'] != 1 else ''} "
                             f"from {fmt.date_text(summary['first'])} to {fmt.date_text(summary['last'])}, accuracy "
                             f"{fmt.pct(summary['min'])} to {fmt.pct(summary['max'])} (mean {fmt.pct(summary['mean'])})")
    n_other = sum(len(others[v]) for v in variants)
    if not dates:
        return {"img": None, "caption": "No test accuracy is recorded yet on this test set, so there is no trend "
                                        "to draw."}
    fig = plots.accuracy_trend(series, current, others=others)
    img, width, height = _figure_img(fig)
    caption = (f"{len(runs)} run{'s' if len(runs) != 1 else ''} on this test set from {fmt.date_text(min(dates))} to "
               f"{fmt.date_text(max(dates))}; shaded bands are the gate's intervals (Wilson, 1 − α); the dotted line marks this run.")
    if len(runs) == 1:
        caption = "Only this run on this test set so far; the chart grows with every scheduled rerun."
    if n_other:
        caption += (" Faint dashed lines are runs on other test sets (other lineages): shown apart, not comparable "
                    "with this line.")
    if older:
        caption += f" The chart draws the last {TREND_LIMIT} runs; older history on this test set: " + "; ".join(older) + "."
    return {"img": img, "width": width, "height": height, "runs": len(runs), "caption": caption}


def _variant_section(r: dict, run_class_names: list[str], here: RunLayout) -> dict | None:
    from reports import plots

    history = r.get("history") or []
    per_class = r.get("per_class") or []
    matrix, matrix_names = _confusion(r)
    class_names = list(r.get("class_names") or matrix_names or run_class_names)
    if not (history or per_class or matrix or r.get("accuracy") is not None):
        return None  # nothing beyond a failure: shown under "Failed variants"
    name = r["variant"]
    gate = r.get("gate") or {}
    out = {"variant": name, "description": _description(name), "curves": None, "notes": [],
           "gate": gate.get("decision"), "facts": _facts(r, gate), "gate_reason": gate.get("reason"),
           "published": gate.get("published"),
           "failed_stage": (r.get("stage") or "an unknown stage") if _is_failed(r) else None}
    if history:
        out["curves"] = _plot(plots.training_curves(history, name, r.get("best_epoch")),
                              f"Accuracy and loss per epoch for {name}, train vs validation")
    else:
        out["notes"].append("No training history is recorded for this variant.")
    out["confusion"] = _confusion_table(matrix, class_names)
    out["per_class"] = _per_class_rows(per_class, class_names)
    if not matrix and not per_class and not _is_failed(r):
        out["notes"].append("No evaluation is recorded for this variant.")
    out["misclassified"] = _misclassified(r, class_names, here)
    return out


def _facts(r: dict, gate: dict) -> list[tuple[str, str]]:
    """Key numbers of one variant shown beside its curves, including why the gate decided as it did."""
    facts = [
        ("Test accuracy", fmt.pct(r.get("accuracy"))),
        ("Top-3 / macro F1", f"{fmt.pct(r.get('top3_accuracy'))} / {fmt.fixed(r.get('macro_f1'), 3)}"),
        ("Epochs", f"{fmt.integer(r.get('epochs_run'))} run, best {fmt.integer(r.get('best_epoch'))}"
                   + (f", resumed after {r['resumed_from_epoch']}" if r.get("resumed_from_epoch") else "")),
        ("Train time", fmt.duration(r.get("train_seconds"))),
        ("Weights", fmt.weights(r.get("weights"))),
    ]
    if gate:
        decision = gate.get("decision") or ""
        if gate.get("forced"):
            decision += f" (forced; the gate said {gate['overridden']})" if gate.get("overridden") else " (forced)"
        facts.insert(0, ("Gate", decision))
        if gate.get("reason"):
            facts.insert(1, ("Why", str(gate["reason"])))
        elif gate.get("champion_accuracy") is not None:
            facts.insert(1, ("Why", f"{fmt.pct(gate.get('accuracy'))} vs champion {fmt.pct(gate['champion_accuracy'])}"
                                    + (f", tolerance {gate['tolerance'] * 100:.1f} pts" if gate.get("tolerance") is not None else "")))
        if gate.get("champion_run_id"):
            facts.append(("Champion run", str(gate["champion_run_id"])))
    return [(k, v) for k, v in facts if v.replace("—", "").strip(" /,") and not v.startswith("— run")]


def _confusion_table(matrix: list, class_names: list[str]) -> dict | None:
    """The confusion matrix as an HTML heat map: each row normalised by its true class; hover shows counts."""
    n = len(matrix)
    if not n:
        return None
    names = [str(c) for c in class_names[:n]] + [str(i) for i in range(len(class_names), n)]
    rows = []
    for i, counts in enumerate(matrix):
        total = sum(counts) or 0
        cells = []
        for j, count in enumerate(counts):
            share = count / total if total else 0.0
            text = "" if share < 0.005 else "1.0" if share >= 0.995 else f"{share:.2f}"[1:]
            cells.append({"text": text, "diag": i == j, "style": _heat(share),
                          "title": f"true {names[i]}, predicted {names[j]}: {count:,} of {total:,} ({share:.1%})"})
        rows.append({"name": names[i], "cells": cells})
    return {"names": names, "rows": rows, "dense": n > 15}


_BLUES = ((0.0, (247, 251, 255)), (0.2, (198, 219, 239)), (0.45, (107, 174, 214)), (0.7, (33, 113, 181)),
          (1.0, (8, 48, 107)))  # matplotlib's "Blues", sampled


def _heat(share: float) -> str:
    """Inline colours of a heat-map cell on the Blues scale; white text on dark cells."""
    share = max(0.0, min(1.0, share))
    for (x0, c0), (x1, c1) in itertools.pairwise(_BLUES):
        if share <= x1:
            t = (share - x0) / (x1 - x0)
            r, g, b = (round(a + (b_ - a) * t) for a, b_ in zip(c0, c1, strict=True))
            break
    return f"background:#{r:02x}{g:02x}{b:02x};color:{'#ffffff' if share > 0.5 else '#111827'}"


def _per_class_rows(per_class: list[dict], class_names: list[str]) -> list[dict]:
    rows = []
    for i, c in enumerate(per_class):
        f1 = c.get("f1")
        name = c.get("class_name") or (class_names[i] if i < len(class_names) else str(i))
        rows.append({"name": str(name), "precision": c.get("precision"), "recall": c.get("recall"), "f1": f1,
                     "support": c.get("support"),
                     "bar": 0 if f1 is None else round(max(0.0, min(1.0, float(f1))) * 100, 1),
                     "css": "bad" if (f1 or 0) < 0.5 else "warn" if f1 < 0.75 else "good"})
    return rows


def _confusion(r: dict) -> tuple[list, list]:
    c = r.get("confusion") or r.get("confusion_matrix")
    if isinstance(c, dict):
        return list(c.get("matrix") or []), list(c.get("class_names") or [])
    return list(c or []), []


def _description(name: str) -> str:
    v = VARIANTS.get(name)
    return v.description if v else ""


def _plot(fig, alt: str) -> dict:
    src, width, height = _figure_img(fig)
    return {"src": src, "alt": alt, "width": width, "height": height}


def _figure_img(fig) -> tuple[str, int, int]:
    from reports import plots

    width, height = (int(round(v * plots.DPI)) for v in fig.get_size_inches())
    return plots.figure_to_data_uri(fig), width, height


def _misclassified(r: dict, class_names: list[str], here: RunLayout) -> dict:
    items = list(r.get("misclassified") or [])
    out = {"images": [], "note": "", "total": len(items)}
    if not items:
        if r.get("accuracy") is not None:
            out["note"] = "No misclassified test images are recorded for this variant."
        return out
    x_path = here.data_file("x_test")
    images = _load_test_images(here)
    if images is None:
        out["note"] = (f"The test images are no longer on disk ({x_path} is missing), "
                       "so the misclassified examples cannot be shown.")
        return out
    for m in items[:MISCLASSIFIED_SHOWN]:
        index = m.get("index")
        entry = {"index": index, "true": _label(m.get("true"), class_names),
                 "predicted": _label(m.get("predicted"), class_names)}
        try:
            entry["src"] = _thumbnail(images[int(index)])
        except (IndexError, TypeError, ValueError):
            continue
        out["images"].append(entry)
    if not out["images"]:
        out["note"] = f"The recorded test image indices do not match {x_path}; was the data prepared again?"
    return out


def _load_test_images(here: RunLayout):
    try:
        return load_array(here, "x_test")
    except (MissingInput, OSError, ValueError):
        return None


def _label(value, class_names: list[str]) -> str:
    if isinstance(value, int) and 0 <= value < len(class_names):
        return str(class_names[value])
    return "" if value is None else str(value)


def _thumbnail(image) -> str:
    import numpy as np
    from PIL import Image

    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    picture = Image.fromarray(array)
    if max(picture.size) > THUMB_MAX:
        picture.thumbnail((THUMB_MAX, THUMB_MAX))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _metadata(run: dict, results: list[dict]) -> list[dict]:
    started, ended = fmt.as_datetime(run.get("started_at")), fmt.as_datetime(run.get("ended_at"))
    run_items = [
        ("Run id", run.get("run_id")),
        ("DAG", run.get("dag_id")),
        ("Logical date", fmt.date_text(run.get("logical_date"))),
        ("Started", fmt.date_text(started)),
        ("Ended", fmt.date_text(ended)),
        ("State", run.get("state")),
        ("Error", run.get("error")),
        ("Profile", run.get("profile")),
        ("Seed", run.get("seed")),
        ("Device", run.get("device")),
    ]
    summary = run.get("data_summary") or {}
    class_names = run.get("class_names") or summary.get("class_names") or []
    counts = summary.get("counts") or {}
    data_items = [
        ("Source", run.get("data_source") or summary.get("source")),
        ("Fingerprint", run.get("data_fingerprint") or summary.get("fingerprint")),
        ("Images", ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in counts.items())),
        ("Classes", f"{len(class_names)}: " + ", ".join(map(str, class_names[:60]))
                    + (f", … (+{len(class_names) - 60} more)" if len(class_names) > 60 else "") if class_names else None),
        ("Skipped files", summary.get("skipped_count", len(summary.get("skipped") or ())) or None),
    ]
    durations = []
    if started and ended:
        durations.append(("Whole run", fmt.duration((ended - started).total_seconds())))
    for name, seconds in (run.get("task_durations") or {}).items():
        durations.append((name, fmt.duration(seconds)))
    for r in results:
        if r.get("train_seconds") is not None:
            durations.append((f"train {r['variant']}", fmt.duration(r["train_seconds"])))
        info = r.get("eval_info") or {}
        if info.get("test_images") and r.get("inference_img_per_s"):
            durations.append((f"evaluate {r['variant']} (inference)",
                              fmt.duration(info["test_images"] / r["inference_img_per_s"])))
    return [
        {"title": "Run", "entries": _present(run_items)},
        {"title": "Data", "entries": _present(data_items)},
        {"title": "Parameters", "entries": _present((k, _show(v)) for k, v in sorted((run.get("params") or {}).items())),
         "mono": True},
        {"title": "Library versions", "entries": _present(sorted((run.get("versions") or {}).items())), "mono": True},
        {"title": "Task durations", "entries": durations},
    ]


def _present(items) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in items if v not in (None, "", [], {})]


def _show(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)

