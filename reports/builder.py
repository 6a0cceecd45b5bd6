"""Build a run's HTML report from the metrics database and the run's artifacts (and refresh the index).

Pages are self-contained (plots and thumbnails inline as base64 PNG, CSS inline, no scripts) and link to
each other with relative links, so they work opened from disk and served by the Airflow plugin. What a page
shows is gathered in `context` (a report) and `index` (the runs index); `formatting` holds the Jinja filters.
"""
from __future__ import annotations

from pathlib import Path

from reports.context import report_context
from reports.index import build_index
from reports.render import render, write_page
from tl_tasks import layout
from tl_tasks.layout import RunLayout
from tl_tasks.store import connect

__all__ = ["build_index", "build_report"]


def build_report(run_id: str, store=None) -> Path:
    """Write `runs/<run_key>/report/index.html` for `run_id` and refresh `$TL_HOME/reports/index.html`.

    Args:
        run_id: the run as recorded in the metrics database (an Airflow run id or a CLI run id).
        store: a `MetricsStore`; default `tl_tasks.store.connect()` (the `TL_METRICS_DB_URL` database).

    Returns:
        The path of the written report page.
    """
    if store is None:
        store = connect()
    run = store.get_run(run_id)
    if run is None:
        raise ValueError(
            f"run_id={run_id!r} is not in the metrics database; run the pipeline for it first "
            f"or pick a recorded run id (see {layout.reports_root() / layout.REPORT_INDEX})"
        )
    html = render("report.html", report_context(run, store))
    path = RunLayout(run_id).report_index
    write_page(path, html)
    build_index(store, run_id=run_id)
    return path
