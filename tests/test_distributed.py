"""A distributed Airflow run without Docker: CeleryExecutor, Redis broker, PostgreSQL metadata + results.

api-server, scheduler, dag-processor and two Celery workers run as separate processes: one serves the
"default" queue, one the "gpu" queue (as the GPU worker of docker-compose.yaml does). The smoke run must
succeed, gpu-queue tasks (train, evaluate) must run on the gpu worker and the rest on the default worker,
and one result per variant must land in a PostgreSQL metrics database.
"""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.airflow_harness import (
    DAG_ID,
    DAGS_FOLDER,
    PG_ADMIN_URL,
    AirflowHarness,
    celery_executor_problem,
    flush_redis,
    overlapping_pairs,
    pg_database,
    require_dag,
    smoke_conf,
    stored_results,
    workflow_env,
)

GPU_POOL_SLOTS = 2
CPU_WORKER, GPU_WORKER = "tl-test-cpu-worker", "tl-test-gpu-worker"


def test_celery_executor_loads():
    problem = celery_executor_problem()
    assert problem is None, problem


@pytest.mark.slow
def test_celery_run_with_default_and_gpu_workers(tmp_path, tl_home, pg_url, redis_url, airflow_pg_template):
    require_dag()
    problem = celery_executor_problem()
    assert problem is None, problem
    conf = smoke_conf()
    variants = conf["variants"]
    metrics_url = pg_url
    with pg_database(PG_ADMIN_URL, template=airflow_pg_template) as metadata_url:   # migrated already
        harness = AirflowHarness(
            home=tmp_path / "airflow", dags_folder=DAGS_FOLDER, executor="CeleryExecutor",
            sql_alchemy_conn=metadata_url, parallelism=4,
            extra_env={
                **workflow_env(tl_home, metrics_url),
                "AIRFLOW__CELERY__BROKER_URL": redis_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata_url}",
            },
        )
        try:
            harness.create_pool("gpu", GPU_POOL_SLOTS)
            harness.start_core()
            cpu_worker = harness.start_celery_worker("worker-default", "default", 2, CPU_WORKER)
            gpu_worker = harness.start_celery_worker("worker-gpu", "gpu", GPU_POOL_SLOTS, GPU_WORKER)
            harness.wait_dag(DAG_ID)
            run_id = harness.trigger(DAG_ID, conf)
            run = harness.wait_run(DAG_ID, run_id, timeout=1500)
            assert run["state"] == "success", harness.failure_report(DAG_ID, run_id)
            tis = harness.task_instances(DAG_ID, run_id)
            on_cpu, on_gpu = cpu_worker.executed_workloads(), gpu_worker.executed_workloads()
            engine = sa.create_engine(metadata_url)
            with engine.connect() as conn:  # the Celery result backend's table, in the metadata database
                celery_results = conn.execute(sa.text("SELECT count(*) FROM celery_taskmeta")).scalar()
            engine.dispose()
        finally:
            harness.stop()
            flush_redis(redis_url)
    summary = [(ti["task_id"], ti["rendered_map_index"], ti["state"], ti["queue"], ti["hostname"]) for ti in tis]
    assert all(ti["state"] == "success" for ti in tis), summary
    train = [ti for ti in tis if ti["task_id"] == "train"]
    assert sorted(ti["rendered_map_index"] for ti in train) == sorted(variants), summary
    assert {ti["queue"] for ti in train} == {"gpu"}, summary
    # Task instances record the worker that ran them (hostname_callable = the worker's --celery-hostname).
    for ti in tis:
        expected = GPU_WORKER if ti["queue"] == "gpu" else CPU_WORKER
        assert ti["queue"] in ("gpu", "default") and ti["hostname"] == expected, summary
    assert {ti["task_id"] for ti in tis if ti["queue"] == "default"} >= {"prepare_data", "gate", "build_report"}
    # ... and the workers' own logs agree: each received exactly its queue's tasks (a retry may repeat one).
    assert set(on_gpu) == {(ti["task_id"], ti["map_index"]) for ti in tis if ti["queue"] == "gpu"}
    assert set(on_cpu) == {(ti["task_id"], ti["map_index"]) for ti in tis if ti["queue"] == "default"}
    assert overlapping_pairs(train), "the gpu worker ran its train tasks one after another: " + str(
        [(ti["rendered_map_index"], ti["start_date"], ti["end_date"]) for ti in train])
    assert celery_results >= len(tis), "Celery stored no task results in PostgreSQL"

    assert metrics_url.startswith("postgresql")
    results = stored_results(metrics_url, run_id)
    assert sorted(results) == sorted(variants), results
    assert all(r["state"] != "failed" and r["accuracy"] is not None for r in results.values()), results
