"""The paginated index of all runs' reports: `$TL_HOME/reports/index.html` (the newest runs) and archive pages.

Only the pages that can have changed are rewritten on each build (`index-state.json` remembers the run count).
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from reports import formatting as fmt
from reports.render import render, write_page
from tl_tasks import layout
from tl_tasks.layout import RunLayout
from tl_tasks.store import connect
from tl_tasks.variants import variant_sort_key

INDEX_PAGE_SIZE = 100          # runs per index page; the front page shows the newest ones


def build_index(store=None, *, run_id: str | None = None, full: bool = False) -> Path:
    """Write the paginated index: `$TL_HOME/reports/index.html` (the newest `INDEX_PAGE_SIZE` runs) and the
    archive pages `reports/page-<n>.html` (n = 1 holds the oldest runs), each newest first, linked to each other.

    Only the pages that can have changed are rewritten: the front page, the page holding `run_id` and its
    neighbours, and pages after it when runs were added or removed since the last build (`index-state.json`).
    `full=True`, a missing state file or a changed page size rewrite every page.

    Returns:
        The path of the front page.
    """
    if store is None:
        store = connect()
    folder = layout.reports_root()
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
        write_page(folder / _page_name(page), render("index.html", index_context(runs, _nav(page, pages, total))))
    if total <= INDEX_PAGE_SIZE:  # one page: no archive pages (remove those of a larger past)
        for stale in folder.glob(layout.REPORTS_PAGE_GLOB):
            stale.unlink(missing_ok=True)
    else:
        for stale in folder.glob(layout.REPORTS_PAGE_GLOB):
            number = stale.stem.partition("-")[2]
            if number.isdigit() and int(number) > pages:
                stale.unlink(missing_ok=True)
    front = folder / layout.REPORT_INDEX
    nav = _nav(None, pages, total) if total > INDEX_PAGE_SIZE else None
    write_page(front, render("index.html", index_context(store.recent_runs(limit=INDEX_PAGE_SIZE), nav)))
    write_page(folder / layout.REPORTS_INDEX_STATE_FILE, json.dumps({"runs": total, "page_size": INDEX_PAGE_SIZE}))
    return front


def _page_of(position: int) -> int:
    """The archive page (1 = oldest) that holds the run at `position` (0 = the oldest run)."""
    return max(position, 0) // INDEX_PAGE_SIZE + 1


def _page_name(page: int) -> str:
    return layout.reports_page_file(page)


def _index_state(folder: Path) -> dict | None:
    try:
        state = json.loads((folder / layout.REPORTS_INDEX_STATE_FILE).read_text(encoding="utf-8"))
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
    return {"title": f"page {page}: runs {first:,} to {last:,} (counted from the oldest)", "newest": layout.REPORT_INDEX,
            "newer": _page_name(page + 1) if page < pages else layout.REPORT_INDEX,
            "older": _page_name(page - 1) if page > 1 else None, "oldest": _page_name(1) if page > 1 else None,
            "pages": None}



def index_context(runs: list[dict], nav: dict | None = None) -> dict:
    runs = sorted(runs, key=_run_sort_key, reverse=True)
    variants: list[str] = []
    for run in runs:
        for v in _variant_map(run):
            if v not in variants:
                variants.append(v)
    variants.sort(key=variant_sort_key)
    rows = []
    for run in runs:
        by_variant = _variant_map(run)
        cells, best = [], None
        for v in variants:
            res = by_variant.get(v) or {}
            acc = res.get("accuracy")
            failed = (res.get("state") or "").lower() == "failed"
            delta = res.get("delta")
            if delta is None and res.get("previous_accuracy") is not None and acc is not None:
                delta = acc - res["previous_accuracy"]
            cells.append({"shown": bool(res), "accuracy": acc, "failed": failed, "decision": res.get("decision"),
                          "p_value": res.get("p_value"),
                          "delta": fmt.delta(delta, 0.0) if delta is not None and acc is not None else None})
            if acc is not None and not failed and (best is None or acc > best[1]):
                best = (v, acc)
        report = RunLayout(run["run_id"])
        has_report = report.report_index.is_file()  # one stat per listed run
        rows.append({
            "run_id": run["run_id"],
            "href": layout.href(layout.REPORTS_INDEX_URL_PATH, report.report_url_path) if has_report else None,
            "when": run.get("logical_date") or run.get("started_at"),
            "state": run.get("state"),
            "profile": run.get("profile"),
            "lineage": (run.get("lineage") or "")[:8],
            "cells": cells,
            "best": best,
        })
    return {"runs": rows, "variants": variants, "latest": rows[0] if rows else None, "nav": nav,
            "generated_at": datetime.now(UTC)}


def _variant_map(run: dict) -> dict:
    """Variant -> result summary of a `recent_runs` entry (a dict by variant or a list of results)."""
    data = run.get("variants") if run.get("variants") is not None else run.get("results")
    if isinstance(data, dict):
        return data
    return {r["variant"]: r for r in data or []}


def _run_sort_key(run: dict):
    when = fmt.as_datetime(run.get("logical_date") or run.get("started_at"))
    return (when or datetime.min.replace(tzinfo=UTC), str(run.get("run_id")))

