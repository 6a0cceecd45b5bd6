"""The HTML comparison report: Jinja2 templates, plots, and the modules that gather what a page shows
(`context`, `index`), format it (`formatting`, as Jinja filters) and write it (`render`, `builder`)."""
from __future__ import annotations

from reports import builder, index


def build_report(run_id: str, store=None):
    """Build `runs/<run_key>/report/index.html` and refresh the reports index; see `reports.builder`."""
    return builder.build_report(run_id, store=store)


def build_index(store=None, *, run_id: str | None = None, full: bool = False):
    """Refresh the paginated index `$TL_HOME/reports/index.html` (+ `page-<n>.html`); see `reports.index`."""
    return index.build_index(store=store, run_id=run_id, full=full)


__all__ = ["build_index", "build_report"]
