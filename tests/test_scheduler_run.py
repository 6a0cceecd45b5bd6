"""A real Airflow, started once for two checks: api-server + scheduler + dag-processor, LocalExecutor on SQLite.

1. A run triggered over REST on the smoke profile (three variants, one more than the gpu pool's 2 slots): the
   mapped train tasks run side by side (their task-instance intervals overlap) but never more than two at
   once, and the run succeeds with one stored result per variant.
2. The data watcher (every 5 s) on a folder of images: untouched, it starts no retraining run; new images
   start exactly one (asset-triggered, on the watched data), whose failure notification arrives once.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.airflow_harness import (
    DAG_ID,
    DAGS_FOLDER,
    AirflowHarness,
    dag_runs,
    max_concurrent,
    overlapping_pairs,
    require_dag,
    smoke_conf,
    stored_results,
    wait_finished_runs,
    workflow_env,
)

GPU_POOL_SLOTS = 2


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG fake but never decoded")


@pytest.mark.slow
def test_scheduler_runs_mapped_train_tasks_in_parallel_and_the_watcher_starts_one_run(
        tmp_path, tl_home, migrated_airflow_db, webhook_server):
    require_dag()
    conf = smoke_conf(["cnn", "resnet50_v1", "resnet50_v2"])  # three mapped tasks for two pool slots
    variants = conf["variants"]
    metrics_url = f"sqlite:///{tl_home / 'metrics.db'}"
    folder = tmp_path / "images"
    for cls in ("cat", "dog"):
        for i in range(3):
            _image(folder / "train" / cls / f"{i}.png")
    url, received = webhook_server
    env = {**workflow_env(tl_home, metrics_url), "TL_WATCH_SOURCE": str(folder), "TL_WATCH_INTERVAL_S": "5",
           "TL_WATCH_SETTLE_S": "1", "TL_NOTIFY_WEBHOOK_URL": url}
    harness = AirflowHarness(home=tmp_path / "airflow", dags_folder=DAGS_FOLDER, executor="LocalExecutor",
                             parallelism=4, extra_env=env)
    try:
        harness.migrate(migrated_airflow_db)
        harness.create_pool("gpu", GPU_POOL_SLOTS)
        harness.start_core()
        harness.wait_dag(DAG_ID)
        harness.wait_dag("tl_data_watcher")
        run_id = harness.trigger(DAG_ID, conf)
        harness.unpause("tl_data_watcher")   # its first looks (the baseline) while the triggered run trains
        run = harness.wait_run(DAG_ID, run_id, timeout=1200)
        assert run["state"] == "success", harness.failure_report(DAG_ID, run_id)
        tis = harness.task_instances(DAG_ID, run_id)

        wait_finished_runs(harness, "tl_data_watcher", 3)   # baseline, then two looks at an untouched folder
        assert [r["dag_run_id"] for r in dag_runs(harness, DAG_ID)] == [run_id], "touching nothing starts no run"
        seen = len([r for r in dag_runs(harness, "tl_data_watcher") if r["state"] in ("success", "failed")])
        for i in range(3):
            _image(folder / "train" / "cat" / f"added{i}.png")
        wait_finished_runs(harness, "tl_data_watcher", seen + 3)
        started = [r for r in dag_runs(harness, DAG_ID) if r["dag_run_id"] != run_id]
        if len(started) == 1:  # the run fails in prepare_data (fake images): the failure notifier posts
            harness.wait_run(DAG_ID, started[0]["dag_run_id"], timeout=300)
            deadline = time.monotonic() + 120
            while not received and time.monotonic() < deadline:
                time.sleep(2)
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

    # the watcher: exactly one run, asset-triggered, on the watched data; its failure notified once
    posts = [payload for _, _, payload in received]
    assert [r["run_type"] for r in started] == ["asset_triggered"], started
    assert [(p["run_id"], p["state"]) for p in posts] == [(started[0]["dag_run_id"], "failed")], posts
    from tl_tasks.store import connect

    with connect() as store:  # the same metrics database (TL_HOME's default) as the Airflow processes
        watched = store.get_run(started[0]["dag_run_id"])
    assert watched["params"]["dataset"] == f"folder:{folder}", watched["params"]


def test_interval_helpers():
    def ti(i, start, end):
        return {"task_id": "train", "map_index": i, "start_date": start, "end_date": end}

    tis = [ti(0, "2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z"),
           ti(1, "2026-01-01T00:00:05Z", "2026-01-01T00:00:15Z"),
           ti(2, "2026-01-01T00:00:15Z", "2026-01-01T00:00:20Z")]
    assert overlapping_pairs(tis) == [("train[0]", "train[1]")]
    assert max_concurrent(tis) == 2
    assert max_concurrent(tis[:1] + tis[2:]) == 1
