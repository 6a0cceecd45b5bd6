"""Build a run's HTML report and the index of all reports from the metrics database and the run's artifacts.

Pages are self-contained (plots and thumbnails inline as base64 PNG, CSS inline, no scripts) and link to
each other with relative links, so they work opened from disk and served by the Airflow plugin.
"""
from __future__ import annotations

import base64
import inspect
import io
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from tl_tasks import config

TEMPLATES_DIR = Path(__file__).with_name("templates")
TREND_LIMIT = 200              # trend points per variant of this run's lineage
OTHER_LINEAGES_LIMIT = 50      # the last runs of other lineages, drawn apart as faint lines
INDEX_PAGE_SIZE = 100          # runs per index page; the front page shows the newest ones
INDEX_STATE = "index-state.json"  # run count at the last index build: tells which pages shifted
MISCLASSIFIED_SHOWN = 24       # thumbnails per variant
THUMB_MAX = 64                 # thumbnails larger than this (px) are downscaled


def build_report(run_id: str, store=None) -> Path:
    """Write `runs/<run_key>/report/index.html` for `run_id` and refresh `$TL_HOME/reports/index.html`.

    Args:
        run_id: the run as recorded in the metrics database (an Airflow run id or a CLI run id).
        store: a `MetricsStore`; default `tl_tasks.store.connect()` (the `TL_METRICS_DB_URL` database).

    Returns:
        The path of the written report page.
    """
    store = store if store is not None else _connect()
    run = store.get_run(run_id)
    if run is None:
        raise ValueError(
            f"run_id={run_id!r} is not in the metrics database; run the pipeline for it first "
            f"or pick a recorded run id (see {config.tl_home() / 'reports' / 'index.html'})"
        )
    html = _render("report.html", _report_context(run, store))
    path = config.report_dir(run_id) / "index.html"
    _write_atomic(path, html)
    build_index(store, run_id=run_id)
    return path


def build_index(store=None, *, run_id: str | None = None, full: bool = False) -> Path:
    """Write the paginated index: `$TL_HOME/reports/index.html` (the newest `INDEX_PAGE_SIZE` runs) and the
    archive pages `reports/page-<n>.html` (n = 1 holds the oldest runs), each newest first, linked to each other.

    Only the pages that can have changed are rewritten: the front page, the page holding `run_id` and its
    neighbours, and pages after it when runs were added or removed since the last build (`index-state.json`).
    `full=True`, a missing state file or a changed page size rewrite every page.

    Returns:
        The path of the front page.
    """
    store = store if store is not None else _connect()
    folder = config.tl_home() / "reports"
    total = store.count_runs()
    pages = max(1, -(-total // INDEX_PAGE_SIZE))
    state = _index_state(folder)
    position = store.run_position(run_id) if run_id is not None else None
    if full or state is None or total < state["runs"]:  # removed runs shift pages from an unknown point
        todo = range(1, pages + 1)
    else:
        first = _page_of(position) if position is not None else pages
        if total != state["runs"]:  # runs came or went: later pages shift; the page before gets a new "newer" link
            first = min(first, _page_of(min(state["runs"], total) - 1) if min(state["runs"], total) else 1)
            todo = range(max(1, first - 1), pages + 1)
        else:
            todo = range(max(1, first - 1), min(pages, first + 1) + 1)
    for page in todo if total > INDEX_PAGE_SIZE else ():
        newest = total - min(page * INDEX_PAGE_SIZE, total)
        count = min(page * INDEX_PAGE_SIZE, total) - (page - 1) * INDEX_PAGE_SIZE
        runs = store.recent_runs(limit=count, offset=newest)
        _write_atomic(folder / _page_name(page), _render("index.html", _index_context(runs, _nav(page, pages, total))))
    if total <= INDEX_PAGE_SIZE:  # one page: no archive pages (remove those of a larger past)
        for stale in folder.glob("page-*.html"):
            stale.unlink(missing_ok=True)
    else:
        for stale in folder.glob("page-*.html"):
            number = stale.stem.partition("-")[2]
            if number.isdigit() and int(number) > pages:
                stale.unlink(missing_ok=True)
    front = folder / "index.html"
    nav = _nav(None, pages, total) if total > INDEX_PAGE_SIZE else None
    _write_atomic(front, _render("index.html", _index_context(store.recent_runs(limit=INDEX_PAGE_SIZE), nav)))
    _write_atomic(folder / INDEX_STATE, json.dumps({"runs": total, "page_size": INDEX_PAGE_SIZE}))
    return front


def _page_of(position: int) -> int:
    """The archive page (1 = oldest) that holds the run at `position` (0 = the oldest run)."""
    return max(position, 0) // INDEX_PAGE_SIZE + 1


def _page_name(page: int) -> str:
    return f"page-{page}.html"


def _index_state(folder: Path) -> dict | None:
    try:
        state = json.loads((folder / INDEX_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("page_size") != INDEX_PAGE_SIZE or not isinstance(state.get("runs"), int):
        return None
    return state


def _nav(page: int | None, pages: int, total: int) -> dict:
    """Links between index pages; `page` None is the front page (the newest runs), which lists every page."""
    if page is None:
        older = _page_of(total - INDEX_PAGE_SIZE - 1)
        return {"title": f"newest {INDEX_PAGE_SIZE:,} of {total:,} runs", "newest": None, "newer": None,
                "older": _page_name(older), "oldest": _page_name(1),
                "pages": [{"href": _page_name(p), "text": str(p)} for p in range(pages, 0, -1)]}
    first, last = (page - 1) * INDEX_PAGE_SIZE + 1, min(page * INDEX_PAGE_SIZE, total)
    return {"title": f"page {page}: runs {first:,} to {last:,} (counted from the oldest)", "newest": "index.html",
            "newer": _page_name(page + 1) if page < pages else "index.html",
            "older": _page_name(page - 1) if page > 1 else None, "oldest": _page_name(1) if page > 1 else None,
            "pages": None}


# --------------------------------------------------------------------------- context of a run's report


def _report_context(run: dict, store) -> dict:
    run_id = run["run_id"]
    results = _results(run)
    class_names = list(run.get("class_names") or [])
    lineage = _lineage(run, store)
    previous = store.previous_run(run_id, same_lineage=True)
    prev_results = {r["variant"]: r for r in _results(previous)} if previous else {}
    y_test = _test_labels(run_id)
    rows = [_summary_row(r, prev_results.get(r["variant"]), y_test, _test_images(r, run)) for r in results]
    scored = [r for r in rows if r["acc_value"] is not None and not r["failed"]]
    best = max(scored, key=lambda r: r["acc_value"]) if scored else None
    if best is not None:
        best["is_best"] = True
    failed = [
        {"variant": r["variant"], "stage": r.get("stage"), "error": r.get("error"), "when": _date_text(r.get("failed_at"))}
        for r in results if _is_failed(r)
    ]
    current_date = _as_datetime(run.get("logical_date") or run.get("started_at"))
    return {
        "run": {**run, "date_text": _date_text(current_date)},
        "lineage": lineage,
        "previous": _previous_link(previous, run_id),
        "index_href": "../../../reports/index.html",
        "headline": _headline(rows, best, failed, previous, run.get("error")),
        "skipped": _skipped(run),
        "rows": rows,
        "trend": _trend(store, run_id, [r["variant"] for r in results], current_date, run.get("lineage")),
        "variants": [v for v in (_variant_section(r, class_names, run_id) for r in results) if v],
        "failed": failed,
        "metadata": _metadata(run, results),
        "generated_at": _date_text(datetime.now(timezone.utc)),
    }


def _skipped(run: dict) -> dict | None:
    """A run skipped because nothing changed: the reason and a link to the run it equals."""
    note = (run.get("params") or {}).get("skipped")
    if not note:
        return None
    same = note.get("same_as")
    exists = bool(same) and (config.report_dir(same) / "index.html").is_file()
    return {"reason": note.get("reason") or "unchanged", "run_id": same,
            "href": f"../../{config.run_key(same)}/report/index.html" if exists else None}


def _lineage(run: dict, store) -> dict | None:
    """Which lineage (test set) the run belongs to, and how many runs up to it share it."""
    key = run.get("lineage")
    if not key:
        return None
    size = store.lineage_size(key, until_run_id=run["run_id"]) if hasattr(store, "lineage_size") else None
    tests = ((run.get("data_summary") or {}).get("counts") or {}).get("test")
    legacy = key.startswith("legacy-")
    return {"key": key, "short": key[:12], "runs": size, "earlier": (size - 1) if size else None,
            "test_images": tests, "legacy": legacy}


def _test_labels(run_id: str):
    """The run's test labels (for paired comparisons in the report), None when its data is gone."""
    path = config.data_dir(run_id) / "y_test.npy"
    if not path.is_file():
        return None
    import numpy as np

    return np.load(path)


def _test_images(r: dict, run: dict) -> int | None:
    return (r.get("eval_info") or {}).get("test_images") or ((run.get("data_summary") or {}).get("counts") or {}).get("test")


def _results(run: dict | None) -> list[dict]:
    """The run's per-variant results as a list, whether the store gives a list or a dict by variant."""
    if not run:
        return []
    results = run.get("results") or []
    if isinstance(results, dict):
        results = [{"variant": k, **v} for k, v in results.items()]
    return sorted(results, key=lambda r: _variant_order(r.get("variant", "")))


def _variant_order(name: str):
    from tl_tasks.variants import VARIANT_NAMES

    return (VARIANT_NAMES.index(name), "") if name in VARIANT_NAMES else (len(VARIANT_NAMES), name)


def _is_failed(result: dict) -> bool:
    return (result.get("state") or "").lower() == "failed"


def _summary_row(r: dict, prev: dict | None, y_test, test_images: int | None) -> dict:
    acc = r.get("accuracy")
    gate = r.get("gate") or None
    prev = prev or {}
    champ_acc = (gate or {}).get("champion_accuracy")
    paired_prev = _paired_with(r, prev, y_test)
    return {
        "variant": r["variant"],
        "failed": _is_failed(r),
        "stage": r.get("stage"),
        "is_best": False,
        "acc_value": acc,
        "accuracy": _pct(acc),
        "accuracy_ci": _interval(_wilson(acc, test_images)),
        "loss": _fixed(r.get("loss"), 3),
        "top3": _pct(r.get("top3_accuracy")),
        "macro_f1": _fixed(r.get("macro_f1"), 3),
        "epochs_run": _int(r.get("epochs_run")),
        "best_epoch": _int(r.get("best_epoch")),
        "train_time": _duration(r.get("train_seconds")),
        "inference": _rate(r.get("inference_img_per_s")),
        "params": _params(r.get("params_trainable"), r.get("params_total")),
        "weights": _weights(r.get("weights")),
        "d_prev": {
            "accuracy": _delta(acc, prev.get("accuracy")),
            "loss": _delta(r.get("loss"), prev.get("loss"), higher_is_better=False, scale=1, digits=3, unit=""),
            "top3": _delta(r.get("top3_accuracy"), prev.get("top3_accuracy")),
            "macro_f1": _delta(r.get("macro_f1"), prev.get("macro_f1"), scale=1, digits=3, unit=""),
        },
        "prev_words": _uncertainty(paired_prev) if paired_prev else "",
        "prev_significant": bool(paired_prev and paired_prev["p_value"] < 0.05),
        "d_champ": _delta(acc, champ_acc) if gate and gate.get("delta") is not None else None,
        "champ_words": _uncertainty(gate) if gate and gate.get("delta") is not None else "",
        "champion_text": (f"champion {_pct(champ_acc)} ({gate.get('champion_run_id')})"
                          if gate and champ_acc is not None else ""),
        "gate": _gate(gate),
    }


def _paired_with(r: dict, other: dict, y_test) -> dict | None:
    """Paired comparison of two results of one lineage from their stored per-image predictions, if both exist."""
    if y_test is None or not other or r.get("accuracy") is None or other.get("accuracy") is None:
        return None
    from tl_tasks.gate import compare_paired
    from tl_tasks.predictions import PredictionsUnavailable, load_predictions

    try:
        new = load_predictions(r.get("predictions_path"), r.get("predictions_sha256"), expected_len=len(y_test))
        old = load_predictions(other.get("predictions_path"), other.get("predictions_sha256"), expected_len=len(y_test))
    except PredictionsUnavailable:
        return None
    return compare_paired(y_test, new, old)


def _uncertainty(d: dict) -> str:
    """"95% CI −2.9 to −0.4 pts; p = 0.012" for a paired comparison (a gate decision or compare_paired)."""
    if d.get("delta_ci") is None or d.get("p_value") is None:
        return ""
    low, high = (x * 100 for x in d["delta_ci"])
    confidence = round((1 - (d.get("alpha") or 0.05)) * 100)
    p = d["p_value"]
    p_text = "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}" if p < 0.01 else f"p = {p:.2f}"
    return f"{confidence}% CI {low:+.1f} to {high:+.1f} pts; {p_text}".replace("-", "−")


def _wilson(acc, n) -> tuple[float, float] | None:
    if acc is None or not n:
        return None
    from tl_tasks.gate import wilson_interval

    return wilson_interval(round(float(acc) * n), int(n))


def _interval(ci) -> str:
    return "" if ci is None else f"95% CI {ci[0] * 100:.1f}–{ci[1] * 100:.1f}%"


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
        text = f"Best variant: {best['variant']} with {best['accuracy']} test accuracy"
        d = best["d_prev"]["accuracy"]
        words = f"; {best['prev_words']}" if best["prev_words"] else ""
        lines.append({"text": text + (f" ({d.text} vs the previous run on this test set{words})." if d is not None
                                      else "."), "css": "lead"})
    elif rows:
        lines.append({"text": "No variant has a test accuracy in this run.", "css": "lead"})
    else:
        lines.append({"text": "No variant results are recorded for this run.", "css": "lead"})
    regressed = [r for r in rows if r["gate"] and r["gate"]["decision"] == "regressed"]
    promoted = [r["variant"] for r in rows if r["gate"] and r["gate"]["decision"] == "promoted"]
    if regressed:
        lines.append({"css": "bad", "text": "Regressed against the champion (confidently worse beyond the tolerance): "
                      + ", ".join(_with_uncertainty(r["variant"], r["d_champ"], r["champ_words"]) for r in regressed) + "."})
    elif any(r["gate"] and r["gate"]["decision"] != "failed" for r in rows):
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


def _previous_link(previous: dict | None, run_id: str) -> dict | None:
    if not previous:
        return None
    key = config.run_key(previous["run_id"])
    exists = (config.report_dir(previous["run_id"]) / "index.html").is_file()
    return {
        "run_id": previous["run_id"],
        "href": f"../../{key}/report/index.html" if exists else "../../../reports/index.html",
        "date_text": _date_text(previous.get("logical_date") or previous.get("started_at")),
    }


def _trend(store, run_id: str, variants: list[str], current: datetime | None, lineage: str | None) -> dict:
    """The trend chart: per variant, this lineage's runs as one line with 95% Wilson bands; runs on other test
    sets (other lineages) as separate faint lines, never joined with this one."""
    from reports import plots

    series, others, runs, dates, older = {}, {}, set(), [], []
    for variant in variants:
        mine, theirs = [], {}
        points = store.trend(variant, limit=TREND_LIMIT, until_run_id=run_id, lineage=lineage) if lineage else []
        points += [p for p in store.trend(variant, limit=OTHER_LINEAGES_LIMIT, until_run_id=run_id)
                   if p.get("lineage") != lineage]
        for p in points:
            when = _as_datetime(p.get("logical_date") or p.get("started_at"))
            if when is None:
                continue
            point = {"logical_date": when, "accuracy": p.get("accuracy"),
                     "ci": _wilson(p.get("accuracy"), p.get("test_images"))}
            if lineage is not None and p.get("lineage") == lineage:
                mine.append(point)
                if p.get("accuracy") is not None:
                    runs.add(p.get("run_id"))
                    dates.append(when)
            elif p.get("lineage"):
                theirs.setdefault(p["lineage"], []).append(point)
        series[variant] = mine
        others[variant] = list(theirs.values())
        if lineage is not None and len(mine) >= TREND_LIMIT and hasattr(store, "trend_summary"):
            summary = store.trend_summary(variant, lineage, run_id, skip=TREND_LIMIT)
            if summary:
                older.append(f"{variant}: {summary['runs']:,} earlier run{'s' if summary['runs'] != 1 else ''} "
                             f"from {_date_text(summary['first'])} to {_date_text(summary['last'])}, accuracy "
                             f"{_pct(summary['min'])} to {_pct(summary['max'])} (mean {_pct(summary['mean'])})")
    n_other = sum(len(others[v]) for v in variants)
    if not dates:
        return {"img": None, "caption": "No test accuracy is recorded yet on this test set, so there is no trend "
                                        "to draw."}
    fig = plots.accuracy_trend(series, current, others=others)
    img, width, height = _figure_img(fig)
    caption = (f"{len(runs)} run{'s' if len(runs) != 1 else ''} on this test set from {_date_text(min(dates))} to "
               f"{_date_text(max(dates))}; shaded bands are 95% intervals (Wilson); the dotted line marks this run.")
    if len(runs) == 1:
        caption = "Only this run on this test set so far; the chart grows with every scheduled rerun."
    if n_other:
        caption += (" Faint dashed lines are runs on other test sets (other lineages): shown apart, not comparable "
                    "with this line.")
    if older:
        caption += f" The chart draws the last {TREND_LIMIT} runs; older history on this test set: " + "; ".join(older) + "."
    return {"img": img, "width": width, "height": height, "runs": len(runs), "caption": caption}


def _variant_section(r: dict, run_class_names: list[str], run_id: str) -> dict | None:
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
    out["misclassified"] = _misclassified(r, class_names, run_id)
    return out


def _facts(r: dict, gate: dict) -> list[tuple[str, str]]:
    """Key numbers of one variant shown beside its curves, including why the gate decided as it did."""
    facts = [
        ("Test accuracy", _pct(r.get("accuracy"))),
        ("Top-3 / macro F1", f"{_pct(r.get('top3_accuracy'))} / {_fixed(r.get('macro_f1'), 3)}"),
        ("Epochs", f"{_int(r.get('epochs_run'))} run, best {_int(r.get('best_epoch'))}"
                   + (f", resumed after {r['resumed_from_epoch']}" if r.get("resumed_from_epoch") else "")),
        ("Train time", _duration(r.get("train_seconds"))),
        ("Weights", _weights(r.get("weights"))),
    ]
    if gate:
        decision = gate.get("decision") or ""
        if gate.get("forced"):
            decision += f" (forced; the gate said {gate['overridden']})" if gate.get("overridden") else " (forced)"
        facts.insert(0, ("Gate", decision))
        if gate.get("reason"):
            facts.insert(1, ("Why", str(gate["reason"])))
        elif gate.get("champion_accuracy") is not None:
            facts.insert(1, ("Why", f"{_pct(gate.get('accuracy'))} vs champion {_pct(gate['champion_accuracy'])}"
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
    for (x0, c0), (x1, c1) in zip(_BLUES, _BLUES[1:]):
        if share <= x1:
            t = (share - x0) / (x1 - x0)
            r, g, b = (round(a + (b_ - a) * t) for a, b_ in zip(c0, c1))
            break
    return f"background:#{r:02x}{g:02x}{b:02x};color:{'#ffffff' if share > 0.5 else '#111827'}"


def _per_class_rows(per_class: list[dict], class_names: list[str]) -> list[dict]:
    rows = []
    for i, c in enumerate(per_class):
        f1 = c.get("f1")
        name = c.get("class_name") or (class_names[i] if i < len(class_names) else str(i))
        rows.append({"name": str(name), "precision": _fixed(c.get("precision"), 2), "recall": _fixed(c.get("recall"), 2),
                     "f1": _fixed(f1, 2), "support": _int(c.get("support")),
                     "bar": 0 if f1 is None else round(max(0.0, min(1.0, float(f1))) * 100, 1),
                     "css": "bad" if (f1 or 0) < 0.5 else "warn" if f1 < 0.75 else "good"})
    return rows


def _confusion(r: dict) -> tuple[list, list]:
    c = r.get("confusion") or r.get("confusion_matrix")
    if isinstance(c, dict):
        return list(c.get("matrix") or []), list(c.get("class_names") or [])
    return list(c or []), []


def _description(name: str) -> str:
    from tl_tasks.variants import VARIANTS

    v = VARIANTS.get(name)
    return v.description if v else ""


def _plot(fig, alt: str) -> dict:
    src, width, height = _figure_img(fig)
    return {"src": src, "alt": alt, "width": width, "height": height}


def _figure_img(fig) -> tuple[str, int, int]:
    from reports import plots

    width, height = (int(round(v * plots.DPI)) for v in fig.get_size_inches())
    return plots.figure_to_data_uri(fig), width, height


def _misclassified(r: dict, class_names: list[str], run_id: str) -> dict:
    items = list(r.get("misclassified") or [])
    out = {"images": [], "note": "", "total": len(items)}
    if not items:
        if r.get("accuracy") is not None:
            out["note"] = "No misclassified test images are recorded for this variant."
        return out
    x_path = config.data_dir(run_id) / "x_test.npy"
    images = _load_test_images(x_path)
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


def _load_test_images(path: Path):
    import numpy as np

    if not path.is_file():
        return None
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
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
    started, ended = _as_datetime(run.get("started_at")), _as_datetime(run.get("ended_at"))
    run_items = [
        ("Run id", run.get("run_id")),
        ("DAG", run.get("dag_id")),
        ("Logical date", _date_text(run.get("logical_date"))),
        ("Started", _date_text(started)),
        ("Ended", _date_text(ended)),
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
        durations.append(("Whole run", _duration((ended - started).total_seconds())))
    for name, seconds in (run.get("task_durations") or {}).items():
        durations.append((name, _duration(seconds)))
    for r in results:
        if r.get("train_seconds") is not None:
            durations.append((f"train {r['variant']}", _duration(r["train_seconds"])))
        info = r.get("eval_info") or {}
        if info.get("test_images") and r.get("inference_img_per_s"):
            durations.append((f"evaluate {r['variant']} (inference)",
                              _duration(info["test_images"] / r["inference_img_per_s"])))
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


# --------------------------------------------------------------------------- context of the index page


def _index_context(runs: list[dict], nav: dict | None = None) -> dict:
    runs = sorted(runs, key=_run_sort_key, reverse=True)
    variants: list[str] = []
    for run in runs:
        for v in _variant_map(run):
            if v not in variants:
                variants.append(v)
    variants.sort(key=_variant_order)
    rows = []
    for run in runs:
        key = config.run_key(run["run_id"])
        by_variant = _variant_map(run)
        cells, best = [], None
        for v in variants:
            res = by_variant.get(v) or {}
            acc = res.get("accuracy")
            failed = (res.get("state") or "").lower() == "failed"
            delta = res.get("delta")
            if delta is None and res.get("previous_accuracy") is not None and acc is not None:
                delta = acc - res["previous_accuracy"]
            p = res.get("p_value")
            gate = res.get("decision") or ""
            if gate and p is not None:
                gate += " · " + ("p < 0.0001" if p < 1e-4 else f"p = {p:.2g}")
            cells.append({"text": _pct(acc) if res else "", "failed": failed, "gate": gate,
                          "delta": _delta(delta, 0.0) if delta is not None and acc is not None else None})
            if acc is not None and not failed and (best is None or acc > best[1]):
                best = (v, acc)
        has_report = (config.report_dir(run["run_id"]) / "index.html").is_file()  # one stat per listed run
        rows.append({
            "run_id": run["run_id"],
            "href": f"../runs/{key}/report/index.html" if has_report else None,
            "date_text": _date_text(run.get("logical_date") or run.get("started_at")),
            "state": run.get("state"),
            "profile": run.get("profile"),
            "lineage": (run.get("lineage") or "")[:8],
            "cells": cells,
            "best": f"{best[0]} ({_pct(best[1])})" if best else "",
        })
    return {"runs": rows, "variants": variants, "latest": rows[0] if rows else None, "nav": nav,
            "generated_at": _date_text(datetime.now(timezone.utc))}


def _variant_map(run: dict) -> dict:
    """Variant -> result summary of a `recent_runs` entry (a dict by variant or a list of results)."""
    data = run.get("variants") if run.get("variants") is not None else run.get("results")
    if isinstance(data, dict):
        return data
    return {r["variant"]: r for r in data or []}


def _run_sort_key(run: dict):
    when = _as_datetime(run.get("logical_date") or run.get("started_at"))
    return (when or datetime.min.replace(tzinfo=timezone.utc), str(run.get("run_id")))


# --------------------------------------------------------------------------- formatting helpers


@dataclass(frozen=True)
class _Delta:
    value: float
    text: str
    arrow: str
    css: str
    title: str


def _delta(new, old, *, higher_is_better: bool = True, scale: float = 100.0, digits: int = 1,
           unit: str = " pts") -> _Delta | None:
    """A change marked up/down; green when it is an improvement (for loss, down is better)."""
    if new is None or old is None:
        return None
    change = float(new) - float(old)
    shown = round(change * scale, digits)
    if shown == 0:
        return _Delta(change, f"±{0:.{digits}f}{unit}", "=", "flat", "no change")
    better = (change > 0) == higher_is_better
    return _Delta(change, f"{shown:+.{digits}f}{unit}".replace("-", "−"), "▲" if change > 0 else "▼",
                  f"{'up' if change > 0 else 'down'} {'good' if better else 'bad'}",
                  "better" if better else "worse")


def _pct(value) -> str:
    return "—" if value is None else f"{float(value) * 100:.2f}%"


def _fixed(value, digits: int) -> str:
    return "—" if value is None else f"{float(value):.{digits}f}"


def _int(value) -> str:
    return "—" if value is None else f"{int(value):,}"


def _rate(value) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _params(trainable, total) -> str:
    if total is None and trainable is None:
        return "—"
    if trainable is None or trainable == total:
        return _count(total)
    return f"{_count(trainable)} / {_count(total)}"


def _count(n) -> str:
    if n is None:
        return "—"
    n = int(n)
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.{1 if n >= 10 * size else 2}f} {suffix}"
    return str(n)


def _weights(value) -> str:
    if not value:
        return "—"
    text = str(value)
    return {"none": "random init", "imagenet": "ImageNet"}.get(text.lower(), text)


def _duration(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _as_datetime(value) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _date_text(value) -> str:
    when = _as_datetime(value)
    return when.strftime("%Y-%m-%d %H:%M UTC") if when else ""


# --------------------------------------------------------------------------- rendering and files


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,  # every string from users or data (class names, params, errors) is escaped
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _render(template: str, context: dict) -> str:
    return _environment().get_template(template).render(**context)


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` in one step, so a reader (the plugin) never sees a half-written page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".index-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _connect():
    from tl_tasks.store import connect

    return connect()
