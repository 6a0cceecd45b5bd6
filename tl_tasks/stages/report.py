"""The report stage: the run's state settled in the metrics database and its HTML report written."""
from __future__ import annotations

import logging
from pathlib import Path

from reports import build_report
from tl_tasks.stages.context import RunContext, now
from tl_tasks.stages.finish import conclude

log = logging.getLogger(__name__)


def report(ctx: RunContext) -> str:
    """Settle the run's state and write its report; returns the report's path."""
    run = ctx.store.get_run(ctx.run_id)
    if run is not None:
        state, problems = conclude(run)
        ctx.store.upsert_run(ctx.run_id, state=state, ended_at=now(), error="; ".join(problems) or None)
    path = Path(build_report(ctx.run_id, ctx.store))
    ctx.store.upsert_run(ctx.run_id, report_path=str(path))
    log.info("report of run %s: %s", ctx.run_id, path)
    return str(path)
