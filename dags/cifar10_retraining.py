"""Retrain the CIFAR-10 classifiers, evaluate them, gate them against their champions and write a report.

Wiring only: one task per stage of `tl_tasks.pipeline.STAGES` (its ids, mapping and trigger rules), each body one
call into `tl_tasks.pipeline` (the gate task also emits its asset events through `tl_tasks.gating.assets`). Keras
loads only inside a task, so parsing this file stays cheap (no TensorFlow, Keras or matplotlib; a test checks).
"""
from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    ExceptionRetryPolicy,
    RetryAction,
    RetryRule,
    TriggerRule,
    dag,
    task,
)

from tl_tasks import pipeline, schema  # no heavy imports: Keras loads inside the train and evaluate tasks
from tl_tasks.config import DAG_ID, GPU_POOL, schedule_from_env  # the pool has TL_GPU_POOL_SLOTS slots
from tl_tasks.data.watch import DATASET_ASSET, dataset_for_run
from tl_tasks.gating.assets import champion_alias, champion_asset, emit_promotions
from tl_tasks.notify.notifier import RetrainingNotifier
from tl_tasks.pipeline import NO_RETRY_EXCEPTIONS, STAGES
from tl_tasks.stages.gate import GateOptions
from tl_tasks.stages.timeouts import DAGRUN_TIMEOUT, HARD
from tl_tasks.variants import VARIANT_NAMES

GPU_QUEUE = "gpu"    # Celery queue served by the GPU worker(s)


SCHEDULE = schedule_from_env("TL_SCHEDULE", "@weekly")  # `none` = triggered runs only
# On the clock OR when the data watcher (dags/tl_data_watcher.py) reports new, removed or changed images.
TIMETABLE = (AssetOrTimeSchedule(timetable=CronTriggerTimetable(SCHEDULE, timezone="UTC"), assets=[Asset(DATASET_ASSET)])
             if SCHEDULE else [Asset(DATASET_ASSET)])
RETRY_DELAY_S = int(os.environ.get("TL_RETRY_DELAY_S", "60"))   # wait before a retry (tests shorten it)
STAGE = {s.task_id: s for s in STAGES}


def _rule(task_id: str) -> TriggerRule:
    return TriggerRule.ALL_DONE if STAGE[task_id].after_failures else TriggerRule.ALL_SUCCESS


# The trigger form: one field per run parameter of tl_tasks/schema.py (defaults quote each profile's values).
PARAMS = schema.dag_params()

DOC_MD = f"""
### CIFAR-10 transfer-learning retraining

{" → ".join(f"`{s.task_id}`" + (" (mapped: one task per variant)" if s.per_variant else "") for s in STAGES)}

* **prepare_data** resolves the run's settings (trigger form ▸ profile; the environment sets none) and writes
  validated uint8 arrays under `$TL_HOME/runs/<run>/data/` (`cifar10` is read from a local copy when there is
  one, else downloaded; the run records which).
* **train** / **evaluate** run one variant each ({", ".join(f"`{v}`" for v in VARIANT_NAMES)}), in pool
  `{GPU_POOL}` and on Celery queue `{GPU_QUEUE}`: on a GPU worker several variants train at once, on a laptop
  the pool's slots (`TL_GPU_POOL_SLOTS`, default 2, set by `make airflow` / `make run`) keep the cores from
  thrashing. A variant whose training fails is not evaluated; the others are.
* **gate** compares each variant with its *champion* (its latest promotion on the same test images: the
  lineage) image by image: *promoted* when significantly better (exact McNemar test, p < *alpha*),
  *regressed* when the paired 95% interval lies wholly below -*tolerance*, else *kept*; the first run of a
  lineage promotes (bootstrap). Promoted models are published under `$TL_HOME/champions/<variant>/` and get an
  event on asset `tl_champion_<variant>` (see the `deploy_champion` example DAG). `fail_on_regression` fails
  the run (in `finalize`, after the gate emitted its events) so Airflow alerts; `force_promote` promotes
  regardless.
* **build_report** always runs and writes `$TL_HOME/runs/<run>/report/index.html` (failed variants included);
  see *Browse → Retraining reports*.
* **finalize** fails the run when a variant failed (or regressed with `fail_on_regression`).

Every result is in the metrics database (`TL_METRICS_DB_URL`). Schedule: `TL_SCHEDULE`
(now `{SCHEDULE}`; `none` = no clock) **or** an event on the `{DATASET_ASSET}` asset, emitted by the
`tl_data_watcher` DAG when the watched images change. Tasks retry twice, except on bad input (`BadInput`).
Time limits: a hard `execution_timeout` per task and a `dagrun_timeout` of {DAGRUN_TIMEOUT.days} days; train and
evaluate also stop at a deadline from the run's profile, variant and epochs (`tl_tasks/stages/timeouts.py`).
"""

# Bad input, a failed run or a fatal regression fail at once: retrying cannot change them.
RETRY_POLICY = ExceptionRetryPolicy(rules=[RetryRule(exception=list(NO_RETRY_EXCEPTIONS), action=RetryAction.FAIL,
                                                     reason="deterministic failure: a retry cannot help")])


@dag(
    dag_id=DAG_ID,
    description="Retrain, evaluate and gate the CIFAR-10 CNN and ResNet50 variants; HTML report",
    doc_md=DOC_MD,
    schedule=TIMETABLE,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=DAGRUN_TIMEOUT,
    tags=["ml", "cifar10", "transfer-learning", "retraining"],
    params=PARAMS,
    # One message per run when a variant regressed or failed, the per-class check blocked a promotion, or the
    # run failed (off unless configured).
    on_success_callback=RetrainingNotifier(),
    on_failure_callback=RetrainingNotifier(run_failed=True),
    default_args={
        "owner": "ml",
        "retries": 2,
        "retry_delay": timedelta(seconds=RETRY_DELAY_S),
        "retry_policy": RETRY_POLICY,
    },
)
def cifar10_retraining():
    @task(trigger_rule=_rule("prepare_data"), execution_timeout=HARD["prepare_data"])
    def prepare_data(params=None, run_id=None, dag_run=None, triggering_asset_events=None) -> list[dict]:
        """Prepare the data; returns one {variant, settings} job per chosen variant."""
        params = dict(params)  # no dataset given: a watcher or clock run trains on the watched data (TL_WATCH_SOURCE)
        manual = str(getattr(dag_run.run_type, "value", dag_run.run_type)) == "manual"
        params["dataset"] = dataset_for_run(params.get("dataset"), triggering_asset_events, manual=manual)
        return pipeline.prepare_jobs(run_id, params, dag_id=DAG_ID, logical_date=dag_run.logical_date or dag_run.run_after)

    @task(pool=GPU_POOL, queue=GPU_QUEUE, trigger_rule=_rule("train"), execution_timeout=HARD["train"],
          multiple_outputs=False, map_index_template="{{ task.op_kwargs['variant'] }}")
    def train(variant: str, settings: dict, run_id=None) -> dict:
        return pipeline.train_stage(run_id, variant, settings, verbose=2)  # one log line per epoch

    @task(pool=GPU_POOL, queue=GPU_QUEUE, trigger_rule=_rule("evaluate"), execution_timeout=HARD["evaluate"],
          multiple_outputs=False, map_index_template="{{ task.op_kwargs['trained']['variant'] }}")
    def evaluate(trained: dict, run_id=None) -> dict:
        # Mapped over train's results: only variants whose training succeeded are evaluated.
        return pipeline.evaluate_stage(run_id, trained["variant"])

    @task(trigger_rule=_rule("gate"), execution_timeout=HARD["gate"], multiple_outputs=False,
          inlets=[champion_asset(v) for v in VARIANT_NAMES], outlets=[champion_alias()])
    def gate(params=None, run_id=None, outlet_events=None) -> dict:
        # The champion assets are declared (inlets register them); events go out only for promoted variants.
        # A regression with fail_on_regression fails the run in `finalize`, not here: a failed task would
        # emit no asset events, and the promotions of the other variants must still reach deployment.
        result = pipeline.gate_stage(run_id, options=GateOptions.from_params(params), raise_on_regression=False)
        emit_promotions(outlet_events, result)
        return result

    @task(trigger_rule=_rule("build_report"), execution_timeout=HARD["build_report"])
    def build_report(run_id=None) -> str:
        return pipeline.report_stage(run_id)

    @task(trigger_rule=_rule("finalize"), execution_timeout=HARD["finalize"], multiple_outputs=False)
    def finalize(run_id=None) -> dict:
        # The run's only leaf: Airflow derives the run's state from it, so a failed variant fails the run
        # (its RunFailed is in NO_RETRY_EXCEPTIONS: no pointless retries).
        return pipeline.finish_stage(run_id)

    trained = train.expand_kwargs(prepare_data())
    evaluate.expand(trained=trained) >> gate() >> build_report() >> finalize()


retraining_dag = cifar10_retraining()
