"""Example deployment DAG: runs whenever a variant gets a new champion (an event on its champion asset).

It verifies the published champion (sha256 against champion.json), writes its TF SavedModel (`serving/`) into
the version folder the first time, and points `$TL_HOME/deployed/<variant>` at it, for one lineage (test set) only: `TL_DEPLOY_LINEAGE` (a fingerprint prefix), else the lineage already
deployed, else the first non-smoke one; champions of other test sets are skipped (MLflow's `champion` alias
follows the same rule). Replace the task body with your own rollout.
"""
from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import AssetAny, dag, task

from tl_tasks.gating.assets import champion_asset
from tl_tasks.gating.champions import DEPLOY_LINEAGE_ENV, deploy_events
from tl_tasks.variants import VARIANT_NAMES

CHAMPION_ASSETS = [champion_asset(v) for v in VARIANT_NAMES]


@dag(
    dag_id=Path(__file__).stem,
    description="Deploy each new champion of cifar10_retraining (example)",
    schedule=AssetAny(*CHAMPION_ASSETS),
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["ml", "cifar10", "deployment", "example"],
)
def deploy_champion():
    @task
    def deploy(triggering_asset_events=None) -> list[dict]:
        import os

        return deploy_events(triggering_asset_events, lineage=os.environ.get(DEPLOY_LINEAGE_ENV) or None)

    deploy()


deploy_champion_dag = deploy_champion()
