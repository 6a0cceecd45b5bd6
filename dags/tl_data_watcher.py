"""Watch the training data and emit an event on the `tl_training_data` Asset when it really changed; the
retraining DAG is scheduled on that asset (and on its clock). Light: no TensorFlow, no decoding (tl_tasks.data.watch).
"""
from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, task

from tl_tasks.data.watch import DATASET_ASSET, WATCHER_DAG_ID, check

DAG_ID = WATCHER_DAG_ID
INTERVAL = timedelta(seconds=float(os.environ.get("TL_WATCH_INTERVAL_S", "300")))  # how often to look


@dag(
    dag_id=DAG_ID,
    description="Emit a tl_training_data asset event when the watched images change (names, sizes, mtimes)",
    schedule=INTERVAL,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ml", "cifar10", "watcher"],
    default_args={"owner": "ml", "retries": 0},
)
def tl_data_watcher():
    @task(outlets=[Asset(DATASET_ASSET)], multiple_outputs=False)
    def look(outlet_events=None) -> dict:
        """Succeeds (emitting the asset event) only on a confirmed change; otherwise skipped: no event."""
        from airflow.sdk.exceptions import AirflowSkipException

        result = check()
        if not result["changed"]:
            raise AirflowSkipException(result["reason"])
        # "dataset": the retraining run this event starts trains on the watched data (its prepare_data reads it)
        outlet_events[Asset(DATASET_ASSET)].extra = {"source": result["source"], "dataset": result["dataset"],
                                                     "signature": result["signature"]}
        return result

    look()


watcher_dag = tl_data_watcher()
