"""Disk lifecycle for the retraining workflow: `python -m tl_tasks gc --keep N` on a schedule.

Keeps the newest `TL_GC_KEEP` runs (default 10) whole and thins older ones; champions, predictions, reports and
database rows are never removed (see tl_tasks/gc.py). Schedule: `TL_GC_SCHEDULE` (default @daily; `none` = off).
"""
from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from tl_tasks import gc
from tl_tasks.config import schedule_from_env

KEEP = int(os.environ.get("TL_GC_KEEP", "10"))
SCHEDULE = schedule_from_env("TL_GC_SCHEDULE", "@daily")  # `none` = off


@dag(
    dag_id="tl_maintenance",
    description="Free disk: keep the newest runs whole, thin older ones; champions are never touched",
    doc_md=__doc__,
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    tags=["ml", "maintenance"],
    default_args={"owner": "ml", "retries": 1, "retry_delay": timedelta(minutes=10),
                  "execution_timeout": timedelta(hours=1)},
)
def tl_maintenance():
    @task(multiple_outputs=False)
    def collect_garbage() -> dict:
        plan = gc.collect_garbage(KEEP, airflow_logs=gc.default_airflow_logs())
        print(plan.text())
        return {"freed_bytes": plan.freed_bytes, "removed": len(plan.removals), "thinned_runs": plan.thinned_runs}

    collect_garbage()


maintenance_dag = tl_maintenance()
