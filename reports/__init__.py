"""The HTML comparison report: plots, Jinja2 templates and the builder that reads the metrics database."""
from __future__ import annotations


def build_report(run_id: str, store=None):
    """Build `runs/<run_key>/report/index.html` and refresh the reports index; see `reports.builder`."""
    from reports.builder import build_report as _build_report

    return _build_report(run_id, store=store)


def build_index(store=None, *, run_id: str | None = None, full: bool = False):
    """Refresh the paginated index `$TL_HOME/reports/index.html` (+ `page-<n>.html`); see `reports.builder`."""
    from reports.builder import build_index as _build_index

    return _build_index(store=store, run_id=run_id, full=full)


__all__ = ["build_report", "build_index"]
