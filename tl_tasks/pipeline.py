"""A run, defined once: its stages in order (`STAGES`), the task entry points that hand each stage its
`RunContext`, and the local engine.

The Airflow DAG makes one task per entry of `STAGES` (same ids, mapping and trigger rules) and calls these
entry points; `python -m tl_tasks run --engine local` (`run_local`) calls the same ones in the same order in
one process, so skip-unchanged, `force` and failed variants behave alike on both engines. Every stage is a
transaction: rerunning it for the same run id replaces its files and its database rows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from tl_tasks.config import Settings
from tl_tasks.errors import BadInput, RunFailed
from tl_tasks.gating.decision import RegressionError
from tl_tasks.schema import settings_from_params
from tl_tasks.stages import context, evaluate, finish, gate, prepare, report, train
from tl_tasks.stages.context import one_line, open_run
from tl_tasks.stages.gate import GateOptions
from tl_tasks.store import connect
from tl_tasks.variants import get_variant

log = logging.getLogger(__name__)

# Deterministic failures: retrying the task cannot help, so the DAG's retry policy fails these at once.
# Everything else (network, database, a truncated checkpoint, a full disk, other ValueErrors) is retried.
NO_RETRY_EXCEPTIONS = (BadInput, RegressionError, RunFailed)


@dataclass(frozen=True)
class Stage:
    """One step of a run: a task of the DAG, a call of the local engine."""

    task_id: str
    per_variant: bool = False     # one task per variant, over the previous stage's outputs (Airflow: mapped)
    after_failures: bool = False  # runs even when an earlier task failed (Airflow: trigger rule all_done)


STAGES: tuple[Stage, ...] = (
    Stage("prepare_data"),                                   # -> one job per chosen variant; none when skipped
    Stage("train", per_variant=True),                        # each job -> its training summary
    Stage("evaluate", per_variant=True, after_failures=True),  # each trained variant -> its metrics
    Stage("gate", after_failures=True),
    Stage("build_report", after_failures=True),
    Stage("finalize", after_failures=True),                  # the run's verdict: fails the run when it failed
)


# ------------------------------------------------------------------------------------- entry points

def prepare_jobs(run_id: str, params: dict | None, *, dag_id: str | None = None,
                 logical_date: datetime | str | None = None) -> list[dict]:
    """prepare_data: resolve settings from the trigger params, prepare the data, and return one
    `{"variant", "settings"}` job per chosen variant (what `train` runs on); none when the run is unchanged
    since the last successful one and `params["force"]` is not set."""
    try:
        settings = settings_from_params(params)
    except ValueError as exc:
        with connect() as store:
            prepare.record_refused(store, run_id, params, exc, dag_id=dag_id, logical_date=logical_date)
        raise
    with open_run(run_id, settings) as ctx:
        prepare.prepare(ctx, dag_id=dag_id, logical_date=logical_date)
        if not (params or {}).get("force") and prepare.skip_if_unchanged(ctx):
            return []  # nothing to train: train/evaluate get no jobs; gate, report and finalize record the skip
    return [{"variant": v, "settings": settings.to_dict()} for v in settings.variants]


def prepare_stage(run_id: str, settings_dict: dict, *, dag_id: str | None = None,
                  logical_date: datetime | str | None = None) -> dict:
    """Prepare the run's data and open the run in the metrics database (no skip check): `prepare.prepare`."""
    with open_run(run_id, Settings.from_dict(settings_dict)) as ctx:
        return prepare.prepare(ctx, dag_id=dag_id, logical_date=logical_date)


def train_stage(run_id: str, variant: str, settings_dict: dict | None = None, *, verbose: int | None = None) -> dict:
    """train: one variant of a prepared run (settings default: the run's own): `train.train`."""
    v = get_variant(variant)  # a bad name is refused before anything is looked up
    with open_run(run_id, _settings(settings_dict)) as ctx:
        return train.train(ctx, v, verbose=verbose)


def evaluate_stage(run_id: str, variant: str, settings_dict: dict | None = None) -> dict:
    """evaluate: one trained variant on the test split: `evaluate.evaluate`."""
    v = get_variant(variant)
    with open_run(run_id, _settings(settings_dict)) as ctx:
        return evaluate.evaluate(ctx, v)


def gate_stage(run_id: str, settings_dict: dict | None = None, *, options: GateOptions | None = None,
               raise_on_regression: bool = True, **given) -> dict:
    """gate: each variant against its champion, promotions published: `gate.gate`. Options: `options`, or
    the gate's parameters by name (tolerance, alpha, fail_on_regression, force_promote)."""
    options = options or GateOptions.from_params(given)
    with open_run(run_id, _settings(settings_dict)) as ctx:
        return gate.gate(ctx, options, raise_on_regression=raise_on_regression)


def report_stage(run_id: str) -> str:
    """build_report: settle the run's state and write its HTML report; returns the report's path."""
    with open_run(run_id, prepared=False) as ctx:
        return report.report(ctx)


def finish_stage(run_id: str) -> dict:
    """finalize: the run's verdict (`finish.finish`); RunFailed when the run failed."""
    with open_run(run_id, prepared=False) as ctx:
        return finish.finish(ctx)


def load_settings(run_id: str) -> Settings:
    """The settings a run was prepared with (`runs/<key>/settings.json`)."""
    with open_run(run_id) as ctx:
        return ctx.settings


# ------------------------------------------------------------------------------------ local engine

def run_local(run_id: str, params: dict | None, *, dag_id: str | None = None) -> dict:
    """Every stage of `STAGES` in order in this process, without Airflow, on the DAG's trigger params.

    As in the DAG: an unchanged run trains nothing unless `force`; a variant whose training fails is not
    evaluated and does not stop the others; gate, report and finalize always run (a fatal regression fails the
    run in finalize). Only a failed prepare ends the run early (after writing its report) and is raised.

    Returns:
        `{"run_id", "state", "report_path", "failed": [variants], "decisions", "error"}`; the run's state is
        also in the metrics database.
    """
    options = GateOptions.from_params(params)  # refused before anything runs, as the trigger form does
    try:
        jobs = prepare_jobs(run_id, params, dag_id=dag_id)
    except Exception:
        _try_report(run_id)
        raise
    failed: list[str] = []
    trained = [out for job in jobs if (out := _variant_task(train_stage, run_id, job["variant"], failed,
                                                            job["settings"])) is not None]
    for summary in trained:
        _variant_task(evaluate_stage, run_id, summary["variant"], failed)
    decisions, error = {}, None
    try:
        decisions = gate_stage(run_id, options=options, raise_on_regression=False)["decisions"]
    except Exception as exc:  # the DAG's gate fails alone too: report and finalize still run
        error = one_line(exc)
        log.error("gate of run %s failed: %s", run_id, error)
    path = report_stage(run_id)
    try:
        state = finish_stage(run_id)["state"]
    except RunFailed as exc:
        state, error = "failed", str(exc)
    return {"run_id": run_id, "state": state, "report_path": path, "failed": failed, "decisions": decisions,
            "error": error}


def _variant_task(stage, run_id: str, variant: str, failed: list[str], *args):
    try:
        return stage(run_id, variant, *args)
    except Exception as exc:
        log.error("variant %s failed: %s", variant, one_line(exc))
        failed.append(variant)
        return None


def _try_report(run_id: str) -> None:
    try:
        report_stage(run_id)
    except Exception as exc:
        log.error("could not build the report of run %s: %s", run_id, one_line(exc))


def _settings(settings_dict: dict | None) -> Settings | None:
    return Settings.from_dict(settings_dict) if settings_dict else None


__all__ = ["NO_RETRY_EXCEPTIONS", "STAGES", "RunFailed", "Stage", "context", "evaluate_stage", "finish_stage",
           "gate_stage", "load_settings", "prepare_jobs", "prepare_stage", "report_stage", "run_local",
           "train_stage"]
