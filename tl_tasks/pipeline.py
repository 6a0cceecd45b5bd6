"""Stage entry points shared by the Airflow DAG and the command line; each stage records to the metrics store.

Every stage is a transaction: rerunning it for the same run id replaces its files and its database rows.
Heavy libraries (Keras, NumPy, SQLAlchemy) are imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import traceback
from datetime import UTC, datetime
from pathlib import Path

from tl_tasks.config import Settings
from tl_tasks.errors import BadInput, MissingInput, RunFailed, first_line
from tl_tasks.files import write_json_atomic
from tl_tasks.gating.decision import (
    DEFAULT_ALPHA,
    DEFAULT_TOLERANCE,
    Decision,
    RegressionError,
    validate_alpha,
    validate_tolerance,
)
from tl_tasks.layout import RunLayout, cache_root
from tl_tasks.stages import timeouts
from tl_tasks.stages.skip import skip_note
from tl_tasks.variants import get_variant

log = logging.getLogger(__name__)



# Deterministic failures: retrying the task cannot help, so the DAG's retry policy fails these at once.
# Everything else (network, database, a truncated checkpoint, a full disk, other ValueErrors) is retried.
NO_RETRY_EXCEPTIONS = (BadInput, RegressionError, RunFailed)


# ----------------------------------------------------------------------------------------- settings

def load_settings(run_id: str) -> Settings:
    """The settings a run was prepared with (`runs/<key>/settings.json`, written by prepare_stage)."""
    path = RunLayout(run_id).settings_file
    if not path.is_file():
        raise MissingInput(f"{path} is missing: run id {run_id!r} was never prepared; "
                                f"run `python -m tl_tasks prepare --run-id {run_id}` (or the DAG's prepare_data) first")
    return Settings.from_dict(json.loads(path.read_text()))


def _settings(run_id: str, settings_dict: dict | None) -> Settings:
    return Settings.from_dict(settings_dict) if settings_dict else load_settings(run_id)


def _require_prepared(run_id: str) -> None:
    layout = RunLayout(run_id)
    if not layout.data.meta.is_file():
        raise MissingInput(f"run id {run_id!r} was never prepared ({layout.data_dir} has no data); "
                                f"run `python -m tl_tasks prepare --run-id {run_id}` (or the DAG's prepare_data) first")


# ------------------------------------------------------------------------------------------- stages

def prepare_stage(run_id: str, settings_dict: dict, *, dag_id: str | None = None,
                  logical_date: datetime | str | None = None) -> dict:
    """Prepare the run's data under `runs/<key>/data/` and open the run in the metrics database.

    Returns:
        `PreparedData.summary()` plus `data_dir` and `run_id`.
    """
    from tl_tasks.data import prepare_data
    from tl_tasks.data.local import resolve_dataset

    settings = Settings.from_dict(settings_dict)
    layout = RunLayout(run_id)
    write_json_atomic(layout.settings_file, settings.to_dict())
    started = _now()
    with _store() as store:
        store.upsert_run(
            run_id, dag_id=dag_id, logical_date=logical_date or started, started_at=started, ended_at=None,
            state="running", profile=settings.profile, params=settings.to_dict(), seed=settings.seed,
            data_source=settings.dataset, data_fingerprint=None, lineage=None, data_summary=None, class_names=None,
            versions=versions(), error=None, report_path=None,
        )
        out = layout.data_dir
        try:
            source = resolve_dataset(settings.dataset)  # e.g. cifar10 -> a local copy (recorded as data_source)
            prepared = prepare_data(source, out, limit_per_class=settings.limit_per_class,
                                    val_fraction=settings.val_fraction, seed=settings.seed,
                                    image_size=settings.data_size, cache_dir=cache_root())
        except Exception as exc:
            store.upsert_run(run_id, state="failed", ended_at=_now(), error=f"prepare_data failed: {_one_line(exc)}")
            raise
        summary = prepared.summary()
        store.upsert_run(run_id, data_source=source, data_fingerprint=summary["fingerprint"],
                         lineage=summary["test_fingerprint"], data_summary=summary, class_names=summary["class_names"])
    log.info("prepared %s for run %s: %s images (fingerprint %s)", source, run_id,
             summary["counts"], summary["fingerprint"][:12])
    return {**summary, "data_dir": str(out), "run_id": run_id}


def prepare_jobs(run_id: str, params: dict | None, *, dag_id: str | None = None,
                 logical_date: datetime | str | None = None) -> list[dict]:
    """The DAG's prepare_data: resolve settings from the trigger params, prepare the data, and return one
    `{"variant", "settings"}` job per chosen variant (what `train` is mapped over)."""
    from tl_tasks.schema import settings_from_params

    try:
        settings = settings_from_params(params)
    except ValueError as exc:
        with _store() as store:  # keep a trace of the refused run, so its report can say why
            store.upsert_run(run_id, dag_id=dag_id, logical_date=logical_date or _now(), started_at=_now(),
                             ended_at=_now(), state="failed", params=dict(params or {}),
                             error=f"invalid parameters: {exc}")
        raise
    prepare_stage(run_id, settings.to_dict(), dag_id=dag_id, logical_date=logical_date)
    if not (params or {}).get("force") and skip_if_unchanged(run_id):
        return []  # nothing to train: the mapped tasks are skipped, gate/report/finalize record the skip
    return [{"variant": v, "settings": settings.to_dict()} for v in settings.variants]


def skip_if_unchanged(run_id: str) -> dict | None:
    """Record the run as `skipped: unchanged` when its data fingerprint, settings and code version equal the
    last successful run's; returns the skip note ({reason, same_as}) or None when the run must train."""
    from tl_tasks.stages.skip import SKIP_KEY, unchanged_reason

    with _store() as store:
        run = store.get_run(run_id)
        previous = store.last_successful_run(run_id)
        reason = unchanged_reason(run or {}, previous)
        if reason is None:
            return None
        note = {"reason": reason, "same_as": previous["run_id"]}
        store.upsert_run(run_id, state="skipped", params={**(run.get("params") or {}), SKIP_KEY: note})
    log.info("run %s skipped: %s (same data, settings and code as run %s); trigger with force=true to retrain",
             run_id, reason, previous["run_id"])
    return note


def train_stage(run_id: str, variant: str, settings_dict: dict | None = None, *, verbose: int | None = None) -> dict:
    """Train one variant on the run's prepared data into `runs/<key>/models/<variant>/` and record it.

    On failure the error is recorded for the variant (so the report shows it) and the exception re-raised.
    `verbose`: Keras fit verbosity (2 = one line per epoch; None = a progress bar on a terminal).

    Returns:
        `TrainResult.summary()`.
    """
    variant = get_variant(variant).name
    settings = _settings(run_id, settings_dict)
    _require_prepared(run_id)
    try:
        _set_up_process(settings)
        from tl_tasks.training.loop import train_variant

        limit = timeouts.train_deadline(settings.profile, get_variant(variant).family, settings.epochs_for(variant))
        with timeouts.deadline(limit, f"train {variant} of run {run_id!r}"):
            layout = RunLayout(run_id)
            summary = train_variant(variant, layout.data_dir, layout.model_dir(variant), settings,
                                    verbose=verbose, reuse_finished=not _recorded(run_id, variant, "trained_at")
                                    ).summary()
    except Exception as exc:
        _record_failure(run_id, variant, "train", exc)
        raise
    with _store() as store:
        store.record_training(run_id, variant, summary)
        if summary.get("device"):
            store.upsert_run(run_id, device=summary["device"])
    log.info("trained %s: %d epoch(s) in %.1f s", variant, summary.get("epochs_run", 0), summary.get("train_seconds", 0))
    return summary


def evaluate_stage(run_id: str, variant: str, settings_dict: dict | None = None) -> dict:
    """Evaluate a trained variant on the test split and record the metrics.

    Returns:
        The headline metrics: variant, accuracy, loss, top3_accuracy, macro_f1, inference_img_per_s,
        params_total, params_trainable, model_size_bytes, evaluation_path.
    """
    variant = get_variant(variant).name
    settings = _settings(run_id, settings_dict)
    _require_prepared(run_id)
    layout = RunLayout(run_id)
    model_dir = layout.model_dir(variant)
    try:
        _set_up_process(settings)
        from tl_tasks.training.evaluate import evaluate_variant

        with timeouts.deadline(timeouts.evaluate_deadline(settings.profile), f"evaluate {variant} of run {run_id!r}"):
            evaluation = evaluate_variant(variant, layout.data_dir, model_dir, settings).to_dict()
    except Exception as exc:
        _record_failure(run_id, variant, "evaluate", exc)
        raise
    with _store() as store:
        store.record_evaluation(run_id, variant, evaluation)
    log.info("evaluated %s: test accuracy %.4f", variant, evaluation["accuracy"])
    keys = ("variant", "accuracy", "loss", "top3_accuracy", "macro_f1", "inference_img_per_s",
            "params_total", "params_trainable", "model_size_bytes")
    return {**{k: evaluation.get(k) for k in keys}, "variant": variant,
            "evaluation_path": str(layout.evaluation_file(variant))}


def gate_stage(run_id: str, settings_dict: dict | None = None, tolerance: float = DEFAULT_TOLERANCE,
               fail_on_regression: bool = False, force_promote: bool = False, alpha: float = DEFAULT_ALPHA,
               *, raise_on_regression: bool = True) -> dict:
    """Gate each variant of the run against its champion and publish promotions: `tl_tasks.gating.gate.gate_run`
    (its docstring gives the result and the errors) on the run's settings and the metrics database."""
    from tl_tasks.gating.gate import gate_run

    settings = _settings(run_id, settings_dict)
    with _store() as store:
        return gate_run(store, run_id, settings, tolerance=tolerance, alpha=alpha,
                        fail_on_regression=fail_on_regression, force_promote=force_promote,
                        raise_on_regression=raise_on_regression)


def report_stage(run_id: str) -> str:
    """Settle the run's state in the metrics database and write its HTML report; returns the report's path."""
    from reports import build_report

    with _store() as store:
        run = store.get_run(run_id)
        if run is not None:
            state, problems = conclude(run)
            store.upsert_run(run_id, state=state, ended_at=_now(), error="; ".join(problems) or None)
        path = Path(build_report(run_id, store))
        store.upsert_run(run_id, report_path=str(path))
    log.info("report of run %s: %s", run_id, path)
    from tl_tasks.integrations.mlflow import log_run_safely  # off unless TL_MLFLOW_TRACKING_URI is set

    log_run_safely(run_id)
    return str(path)


def finish_stage(run_id: str) -> dict:
    """The run's verdict (the DAG's last task): `{"run_id", "state", "report_path"}`, or RunFailed when a variant
    failed, the gate or the report did not complete, or a regression was fatal (`fail_on_regression`)."""
    with _store() as store:
        run = store.get_run(run_id)
        if run is None:
            raise RunFailed(f"run {run_id!r} is not in the metrics database {store.url}: prepare_data never ran")
        state, problems = conclude(run)
        report = run.get("report_path")
        if not report or not Path(report).is_file():
            problems.append("the report was not built")
            state = "failed"
        error = "; ".join(problems) or None
        if (run.get("state"), run.get("error")) != (state, error) or not run.get("ended_at"):
            store.upsert_run(run_id, state=state, ended_at=run.get("ended_at") or _now(), error=error)
    if state not in ("success", "skipped"):
        raise RunFailed(f"run {run_id} failed: {error}" + (f"; report: {report}" if report else ""))
    return {"run_id": run_id, "state": state, "report_path": report}


def conclude(run: dict) -> tuple[str, list[str]]:
    """A stored run's state ("success" or "failed") and the reasons it failed, from its results and gate."""
    problems: list[str] = []
    params = run.get("params") or {}
    if not run.get("data_fingerprint"):
        problems.append(run.get("error") or "prepare_data did not complete")
        return "failed", problems
    if skip_note(run):
        return "skipped", problems
    results = run.get("results") or {}
    fatal_regression = bool((params.get("gate") or {}).get("fail_on_regression"))
    for variant in params.get("variants") or list(results):
        result = results.get(variant)
        if result is None:
            problems.append(f"{variant}: no result recorded")
        elif result["state"] == "failed":
            problems.append(f"{variant} failed in {result.get('stage') or 'a stage'}: {first_line(result.get('error'))}")
        elif result.get("gate") is None:
            problems.append(f"{variant}: no gate decision recorded")
        elif fatal_regression and result["gate"]["decision"] == Decision.REGRESSED:
            problems.append(f"{variant} regressed (fail_on_regression)")
    return ("failed" if problems else "success"), problems


# ------------------------------------------------------------------------------------ whole runs

def run_all(run_id: str, settings: Settings, *, tolerance: float = DEFAULT_TOLERANCE, fail_on_regression: bool = False,
            force_promote: bool = False, dag_id: str | None = None, alpha: float = DEFAULT_ALPHA) -> dict:
    """Every stage in order in this process, without Airflow: prepare, train and evaluate each variant (a
    failing variant does not stop the others), gate, report, finish.

    Returns:
        `{"run_id", "state", "report_path", "failed": [variants], "decisions", "error"}`; the run's state is
        also in the metrics database.
    """
    validate_tolerance(tolerance)
    validate_alpha(alpha)
    try:
        prepare_stage(run_id, settings.to_dict(), dag_id=dag_id)
    except Exception:
        _try_report(run_id)
        raise
    failed = []
    for variant in settings.variants:
        try:
            train_stage(run_id, variant, settings.to_dict())
            evaluate_stage(run_id, variant, settings.to_dict())
        except Exception as exc:
            log.error("variant %s failed: %s", variant, _one_line(exc))
            failed.append(variant)
    decisions, error = {}, None
    try:
        decisions = gate_stage(run_id, settings.to_dict(), tolerance, fail_on_regression, force_promote,
                               alpha)["decisions"]
    except (RegressionError, RunFailed) as exc:
        error = str(exc)
    report = report_stage(run_id)
    try:
        state = finish_stage(run_id)["state"]
    except RunFailed as exc:
        state, error = "failed", str(exc)
    return {"run_id": run_id, "state": state, "report_path": report, "failed": failed,
            "decisions": decisions, "error": error}


# -------------------------------------------------------------------------------------- helpers

def _try_report(run_id: str) -> None:
    try:
        report_stage(run_id)
    except Exception as exc:
        log.error("could not build the report of run %s: %s", run_id, _one_line(exc))


def versions() -> dict:
    """Versions of what the run's numbers depend on, read from package metadata (nothing is imported)."""
    from importlib import metadata

    from tl_tasks.stages.skip import CODE_KEY, code_version

    out = {"python": platform.python_version(), "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
           CODE_KEY: code_version()}
    for dist in ("keras", "tensorflow", "jax", "torch", "numpy", "apache-airflow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _set_up_process(settings: Settings) -> None:
    from tl_tasks.training import runtime  # sets TF_CPP_MIN_LOG_LEVEL & co. before Keras loads

    runtime.set_up_worker(settings.data_parallel)


def _store():
    from tl_tasks.store import connect

    return connect()


def _recorded(run_id: str, variant: str, field: str) -> bool:
    """Whether the database holds a successful result of `variant` with `field` set (e.g. trained_at).

    False also when the database cannot be read: then a finished model on disk is reused rather than retrained.
    """
    try:
        with _store() as store:
            result = ((store.get_run(run_id) or {}).get("results") or {}).get(variant) or {}
    except Exception as exc:
        log.warning("could not read %s's result from the metrics database (%s)", variant, exc)
        return False
    return result.get("state") == "success" and bool(result.get(field))


def _record_failure(run_id: str, variant: str, stage: str, exc: BaseException) -> None:
    text = f"{_one_line(exc)}\n\n{traceback.format_exc()}"
    try:
        with _store() as store:
            store.record_failure(run_id, variant, stage, text)
    except Exception as store_exc:  # never hide the original error behind a database problem
        log.error("could not record the %s failure of %s in the metrics database: %s", stage, variant, store_exc)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(str(exc))}"


def _now() -> datetime:
    return datetime.now(UTC)
