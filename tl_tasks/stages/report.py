"""The report stage: the run's state settled in the metrics database, its HTML report written, and the run
logged to MLflow when that is switched on."""
from __future__ import annotations

import logging
from pathlib import Path

from reports import build_report
from tl_tasks.integrations import mlflow
from tl_tasks.stages.context import RunContext, now
from tl_tasks.stages.finish import conclude

log = logging.getLogger(__name__)


def report(ctx: RunContext) -> str:
    """Settle the run's state, write its report and log it to MLflow (off unless TL_MLFLOW_TRACKING_URI is set;
    never fails the stage); returns the report's path."""
    run = ctx.store.get_run(ctx.run_id)
    if run is not None:
        state, problems = conclude(run)
        ctx.store.upsert_run(ctx.run_id, state=state, ended_at=now(), error="; ".join(problems) or None)
    path = Path(build_report(ctx.run_id, ctx.store))
    ctx.store.upsert_run(ctx.run_id, report_path=str(path))
    log.info("report of run %s: %s", ctx.run_id, path)
    mlflow.log_run_safely(ctx.store, ctx.layout, ctx.settings)
    return str(path)
