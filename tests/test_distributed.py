"""A distributed Airflow run without Docker: CeleryExecutor, Redis broker, PostgreSQL metadata + results.

api-server, scheduler, dag-processor and two Celery workers run as separate processes, started once for two
runs: one worker serves the "default" queue, one the "gpu" queue (as the GPU worker of docker-compose.yaml
does). The smoke run must succeed, gpu-queue tasks (train, evaluate) must run on the gpu worker and the rest on
the default worker, and one result per variant must land in a PostgreSQL metrics database. Then the gpu worker
is killed with kill -9 during a second run's train task, and the run recovers after a restart.
"""
from __future__ import annotations

import json
import signal
import time

import pytest
import sqlalchemy as sa

from tests.airflow_harness import (
    DAG_ID,
    DAGS_FOLDER,
    PG_ADMIN_URL,
    AirflowHarness,
    _signal_group,
    celery_executor_problem,
    flush_redis,
    overlapping_pairs,
    pg_database,
    require_dag,
    smoke_conf,
    stored_results,
    workflow_env,
)
from tl_tasks.layout import RunLayout

GPU_POOL_SLOTS = 2
CPU_WORKER, GPU_WORKER = "tl-test-cpu-worker", "tl-test-gpu-worker"


@pytest.mark.slow
def test_celery_executor_loads():
    problem = celery_executor_problem()
    assert problem is None, problem


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_celery_runs_on_default_and_gpu_workers_and_recovers_from_a_worker_killed_during_train(
        tmp_path, tl_home, pg_url, redis_url, airflow_pg_template):
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
                # notice a dead worker's task within seconds, not the default 5 minutes
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "1",
                "TL_RETRY_DELAY_S": "1",
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

            # kill -9 the gpu worker (and the train task it runs) once train has checkpointed an epoch
            killed_conf = {"profile": "smoke", "variants": ["cnn"], "limit_per_class": 20, "epochs": 40}
            killed_id = harness.trigger(DAG_ID, killed_conf)
            state_file = RunLayout(killed_id).model("cnn").checkpoint_state
            deadline = time.monotonic() + 900
            while not state_file.is_file():
                harness.check_alive()
                assert time.monotonic() < deadline, harness.failure_report(DAG_ID, killed_id)
                time.sleep(0.5)
            killed_after = json.loads(state_file.read_text())["completed_epochs"]
            _signal_group(gpu_worker.process, signal.SIGKILL)
            gpu_worker.process.wait(timeout=30)
            harness.components.remove(gpu_worker)
            harness.start_celery_worker("worker-gpu-2", "gpu", GPU_POOL_SLOTS, "tl-test-gpu-worker-2")  # the restart
            recovered = harness.wait_run(DAG_ID, killed_id, timeout=900)
            assert recovered["state"] == "success", harness.failure_report(DAG_ID, killed_id)
            killed_tis = harness.task_instances(DAG_ID, killed_id)
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

    # the killed run: train retried on the restarted worker, resumed from its checkpoint, nothing stored twice
    train = [ti for ti in killed_tis if ti["task_id"] == "train"]
    assert len(train) == 1 and train[0]["try_number"] >= 2 and train[0]["hostname"] == "tl-test-gpu-worker-2", train
    results = stored_results(pg_url, killed_id)
    assert list(results) == ["cnn"] and results["cnn"]["state"] == "success"
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:                  # no duplicate rows: one result, one row per epoch
        n_results = conn.execute(sa.text("SELECT count(*) FROM results r JOIN runs u ON r.run_pk = u.id "
                                         "WHERE u.run_id = :r"), {"r": killed_id}).scalar()
        epochs = conn.execute(sa.text("SELECT e.epoch FROM epoch_metrics e JOIN results r ON e.result_id = r.id "
                                      "JOIN runs u ON r.run_pk = u.id WHERE u.run_id = :r ORDER BY e.epoch"),
                              {"r": killed_id}).scalars().all()
        resumed = conn.execute(sa.text("SELECT r.resumed_from_epoch FROM results r JOIN runs u ON r.run_pk = u.id "
                                       "WHERE u.run_id = :r"), {"r": killed_id}).scalar()
    engine.dispose()
    # one row per epoch, none twice, none missing (the CNN may stop early: up to killed_conf["epochs"])
    assert n_results == 1 and epochs == list(range(1, len(epochs) + 1)) and killed_after < len(epochs) <= \
        killed_conf["epochs"], (n_results, epochs)
    assert resumed is not None and resumed >= killed_after >= 1   # resumed from the checkpoint, not from scratch
