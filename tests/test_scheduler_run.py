"""A real Airflow run: api-server + scheduler + dag-processor, LocalExecutor on SQLite, triggered over REST.

On the smoke profile (three variants by default, see `smoke_variants`) with the gpu pool at 2 slots, the
mapped train tasks must run side by side (their task-instance intervals overlap) but never more than two at
once, and the run must succeed with one stored result per variant.
"""
from __future__ import annotations

import pytest

from tests.airflow_harness import (
    DAG_ID,
    DAGS_FOLDER,
    AirflowHarness,
    max_concurrent,
    overlapping_pairs,
    require_dag,
    smoke_conf,
    stored_results,
    workflow_env,
)

GPU_POOL_SLOTS = 2


@pytest.mark.slow
def test_scheduler_runs_mapped_train_tasks_in_parallel(tmp_path, tl_home, migrated_airflow_db):
    require_dag()
    conf = smoke_conf()
    variants = conf["variants"]
    metrics_url = f"sqlite:///{tl_home / 'metrics.db'}"
    harness = AirflowHarness(home=tmp_path / "airflow", dags_folder=DAGS_FOLDER, executor="LocalExecutor",
                             parallelism=4, extra_env=workflow_env(tl_home, metrics_url))
    try:
        harness.migrate(migrated_airflow_db)
        harness.create_pool("gpu", GPU_POOL_SLOTS)
        harness.start_core()
        harness.wait_dag(DAG_ID)
        run_id = harness.trigger(DAG_ID, conf)
        run = harness.wait_run(DAG_ID, run_id, timeout=1200)
        assert run["state"] == "success", harness.failure_report(DAG_ID, run_id)
        tis = harness.task_instances(DAG_ID, run_id)
    finally:
        harness.stop()

    train = [ti for ti in tis if ti["task_id"] == "train"]
    assert sorted(ti["map_index"] for ti in train) == list(range(len(variants)))
    assert sorted(ti["rendered_map_index"] for ti in train) == sorted(variants)
    for ti in train:
        assert (ti["state"], ti["pool"], ti["queue"]) == ("success", "gpu", "gpu"), ti
    spans = ", ".join(f"{ti['rendered_map_index']} {ti['start_date']}..{ti['end_date']}" for ti in train)
    assert overlapping_pairs(train), f"no two train tasks overlapped in time: {spans}"
    assert max_concurrent(train) <= GPU_POOL_SLOTS, f"the gpu pool ({GPU_POOL_SLOTS} slots) was exceeded: {spans}"
    assert {ti["task_id"] for ti in tis} >= {"prepare_data", "train", "evaluate", "gate", "build_report"}
    assert all(ti["state"] == "success" for ti in tis), [(ti["task_id"], ti["map_index"], ti["state"]) for ti in tis]

    results = stored_results(metrics_url, run_id)
    assert sorted(results) == sorted(variants), results
    assert all(r["state"] != "failed" and r["accuracy"] is not None for r in results.values()), results
    assert (tl_home / "runs").is_dir() and list((tl_home / "runs").glob("*/report/index.html")), "no report written"


def test_interval_helpers():
    def ti(i, start, end):
        return {"task_id": "train", "map_index": i, "start_date": start, "end_date": end}

    tis = [ti(0, "2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z"),
           ti(1, "2026-01-01T00:00:05Z", "2026-01-01T00:00:15Z"),
           ti(2, "2026-01-01T00:00:15Z", "2026-01-01T00:00:20Z")]
    assert overlapping_pairs(tis) == [("train[0]", "train[1]")]
    assert max_concurrent(tis) == 2
    assert max_concurrent(tis[:1] + tis[2:]) == 1
