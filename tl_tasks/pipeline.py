"""Stage entry points shared by the Airflow DAG and the command line; each stage records to the metrics store.

Every stage is a transaction: rerunning it for the same run id replaces its files and its database rows.
Heavy libraries (Keras, NumPy, SQLAlchemy) are imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

from tl_tasks import config, devices, timeouts
from tl_tasks.config import Settings
from tl_tasks.errors import BadInput, MissingInput
from tl_tasks.files import write_json_atomic
from tl_tasks.layout import RunLayout, cache_root
from tl_tasks.gate import (
    DEFAULT_ALPHA, DEFAULT_TOLERANCE, RegressionError, compare_paired, decide, summarize, validate_alpha, validate_tolerance,
)
from tl_tasks.variants import VARIANT_NAMES, get_variant

log = logging.getLogger(__name__)

# Test hook: a comma-separated list of variants whose training raises ForcedFailure (e.g. resnet50_v2).
FAIL_VARIANTS_ENV = "TL_FAIL_VARIANTS"
# Trigger-form / command-line names of the Settings fields a run may override (None = profile default).
SETTING_PARAMS = ("dataset", "variants", "epochs", "image_size", "batch_size", "limit_per_class", "weights", "seed")
GATE_PARAMS = ("tolerance", "alpha", "fail_on_regression", "force_promote")
RUN_PARAMS = ("force",)  # force: train even when data, settings and code equal the last successful run's


class ForcedFailure(RuntimeError):
    """Raised by train_stage for a variant listed in $TL_FAIL_VARIANTS (tests of failure handling)."""


class RunFailed(RuntimeError):
    """The run as a whole failed: a variant failed, a stage left no result, or a regression was fatal."""


# Deterministic failures: retrying the task cannot help, so the DAG's retry policy fails these at once.
# Everything else (network, database, a truncated checkpoint, a full disk, other ValueErrors) is retried.
NO_RETRY_EXCEPTIONS = (BadInput, ForcedFailure, RegressionError, RunFailed)


# ----------------------------------------------------------------------------------------- settings

def settings_from_params(params: dict | None = None) -> Settings:
    """Settings of a run from DAG params or CLI options: `profile` plus overrides; None = profile default.

    `limit_per_class=0` means all images; `variants` is a list of variant names. Raises ValueError naming
    the bad value.
    """
    params = dict(params or {})
    unknown = set(params) - {"profile", *SETTING_PARAMS, *GATE_PARAMS, *RUN_PARAMS}
    if unknown:
        raise BadInput(f"unknown parameter(s) {sorted(unknown)}; valid: profile, "
                         + ", ".join((*SETTING_PARAMS, *GATE_PARAMS)))
    overrides = {k: params.get(k) for k in SETTING_PARAMS}
    all_images = overrides.get("limit_per_class") == 0
    if all_images:
        overrides["limit_per_class"] = None
    if overrides.get("variants") is not None:
        overrides["variants"] = list(overrides["variants"])
        if not overrides["variants"]:
            raise BadInput("variants is empty; choose at least one of " + ", ".join(VARIANT_NAMES))
    settings = config.resolve_settings(params.get("profile") or None, **overrides)
    if all_images:
        settings = dataclasses.replace(settings, limit_per_class=None)
    return settings


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
            prepared = prepare_data(settings.dataset, out, limit_per_class=settings.limit_per_class,
                                    val_fraction=settings.val_fraction, seed=settings.seed,
                                    image_size=settings.data_size, cache_dir=cache_root())
        except Exception as exc:
            store.upsert_run(run_id, state="failed", ended_at=_now(), error=f"prepare_data failed: {_one_line(exc)}")
            raise
        summary = prepared.summary()
        store.upsert_run(run_id, data_fingerprint=summary["fingerprint"], lineage=summary["test_fingerprint"],
                         data_summary=summary, class_names=summary["class_names"])
    log.info("prepared %s for run %s: %s images (fingerprint %s)", settings.dataset, run_id,
             summary["counts"], summary["fingerprint"][:12])
    return {**summary, "data_dir": str(out), "run_id": run_id}


def prepare_jobs(run_id: str, params: dict | None, *, dag_id: str | None = None,
                 logical_date: datetime | str | None = None) -> list[dict]:
    """The DAG's prepare_data: resolve settings from the trigger params, prepare the data, and return one
    `{"variant", "settings"}` job per chosen variant (what `train` is mapped over)."""
    try:
        settings = settings_from_params({k: v for k, v in (params or {}).items()
                                         if k not in (*GATE_PARAMS, *RUN_PARAMS)})
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
    from tl_tasks.skip import SKIP_KEY, unchanged_reason

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


def skip_note(run: dict | None) -> dict | None:
    from tl_tasks.skip import SKIP_KEY

    return ((run or {}).get("params") or {}).get(SKIP_KEY)


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
        forced = [v.strip() for v in os.environ.get(FAIL_VARIANTS_ENV, "").split(",") if v.strip()]
        if variant in forced:
            raise ForcedFailure(f"{FAIL_VARIANTS_ENV}={os.environ[FAIL_VARIANTS_ENV]!r} forces variant {variant!r} "
                                f"to fail (a test hook); unset {FAIL_VARIANTS_ENV} to train it")
        devices.claim_for(settings.data_parallel)  # before Keras loads: CUDA_VISIBLE_DEVICES = the claimed GPU
        _quiet_keras_import()
        from tl_tasks.train import train_variant

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
        devices.claim_for(settings.data_parallel)
        _quiet_keras_import()
        from tl_tasks.evaluate import evaluate_variant

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
    """Compare each variant of the run with its champion, image by image, record the decision, and publish
    promoted models under `$TL_HOME/champions/` (see `tl_tasks.gate` and `tl_tasks.champions`).

    The champion is the variant's latest promotion among earlier runs of the same lineage (the same test images);
    a run on other data never touches it. A variant without a result (its task was killed) or without an
    evaluation is recorded as failed first.

    A promoted model is published, then made the lineage's `current` champion only if the metrics database
    agrees it is the latest promotion (an older run's gate, rerun later, never rolls `current` back). A model
    that cannot be published is recorded as "kept" with the reason; the others are still gated.

    Returns:
        `{"run_id", "decisions": {variant: decision}, "summary": {decision: [variants]}, "tolerance": t,
        "alpha": a, "lineage": fingerprint, "promoted": {variant: published folder now current}}`.

    Raises:
        RegressionError: a variant regressed, `fail_on_regression` and `raise_on_regression` are set (after
            recording everything). The DAG passes `raise_on_regression=False` so that the gate task succeeds
            and emits its asset events; its `finalize` task fails the run instead.
        ChampionError: a promoted model could not be published (after recording every decision); a retry
            publishes it.
        RunFailed: the run's data was never prepared, so there is nothing to gate.
    """
    from tl_tasks import champions

    tolerance, alpha = validate_tolerance(tolerance), validate_alpha(alpha)
    settings = _settings(run_id, settings_dict)
    options = {"tolerance": tolerance, "alpha": alpha, "fail_on_regression": bool(fail_on_regression),
               "force_promote": bool(force_promote)}
    decisions: dict[str, dict] = {}
    published: dict[str, str] = {}
    publish_errors: list[str] = []
    with _store() as store:
        run = store.get_run(run_id)
        if run is None:
            raise ValueError(f"run id {run_id!r} is not in the metrics database {store.url}; prepare it first "
                             f"(python -m tl_tasks prepare --run-id {run_id})")
        if not run.get("data_fingerprint") or not run.get("lineage"):
            why = run.get("error") or "prepare_data did not complete"
            raise RunFailed(f"run {run_id!r} has no prepared data ({why}); there is nothing to gate")
        if skip_note(run):
            log.info("gate: run %s was skipped (unchanged since %s); nothing to gate", run_id, skip_note(run)["same_as"])
            return {"run_id": run_id, "decisions": {}, "summary": {}, "tolerance": tolerance, "alpha": alpha,
                    "lineage": run["lineage"], "promoted": {}, "skipped": skip_note(run)}
        store.upsert_run(run_id, params={**(run.get("params") or settings.to_dict()), "gate": options})
        y_test = None
        for variant in settings.variants:
            result = run["results"].get(variant)
            if result is None:
                result = store.record_failure(run_id, variant, "train",
                                              "no result was recorded: the train task was killed or never ran")
            elif result["state"] != "failed" and result.get("accuracy") is None:
                result = store.record_failure(run_id, variant, "evaluate",
                                              "no evaluation was recorded: the evaluate task was killed or never ran")
            failed = result["state"] == "failed"
            error = f"{result.get('stage') or 'a stage'} failed: {_first_line(result.get('error'))}" if failed else None
            champion = store.champion(variant, before_run_id=run_id, lineage=run["lineage"])
            paired, unpaired = None, None
            if champion is not None and not failed:
                if y_test is None:
                    y_test = _test_labels(run_id)
                paired, unpaired = _paired(result, champion, y_test, alpha)
            decision = decide(result.get("accuracy"), champion, paired=paired, tolerance=tolerance, alpha=alpha,
                              force_promote=force_promote, failed=failed, error=error,
                              test_images=(result.get("eval_info") or {}).get("test_images"),
                              unpaired_reason=unpaired)
            decision["lineage"] = run["lineage"]
            folder = None
            if decision["promoted"]:
                try:
                    folder = champions.publish(run, result, decision)
                    decision["published"] = str(folder)
                except (champions.ChampionError, OSError) as exc:
                    publish_errors.append(f"{variant}: {exc}")
                    decision.update(decision="kept", promoted=False,
                                    reason=f"promotion not published ({exc}); was: {decision['reason']}")
            store.record_gate(run_id, variant, decision)
            newest = store.champion(variant, lineage=run["lineage"]) if folder else None
            if newest is not None and newest["run_id"] == run_id:
                champions.make_current(folder)
                published[variant] = str(folder)
            elif folder is not None:
                log.warning("%s of run %s was promoted, but a later run's promotion is the current champion; "
                            "`current` stays on run %s", variant, run_id, newest and newest["run_id"])
            decisions[variant] = decision
            log.info("gate %s: %s (%s)", variant, decision["decision"], decision["reason"])
    out = {"run_id": run_id, "decisions": decisions, "summary": summarize(decisions), "tolerance": tolerance, "alpha": alpha,
           "lineage": run["lineage"], "promoted": published}
    if publish_errors:
        raise champions.ChampionError("could not publish: " + "; ".join(publish_errors)
                                      + " (the decisions are stored; a retry publishes again)")
    regressed = [v for v, d in decisions.items() if d["decision"] == "regressed"]
    if regressed and fail_on_regression and raise_on_regression:
        details = "; ".join(f"{v}: {decisions[v]['reason']}" for v in regressed)
        raise RegressionError(f"regression beyond tolerance {tolerance:g} in {', '.join(regressed)} ({details}); "
                              "the decisions are stored and shown in the report")
    return out


def _test_labels(run_id: str):
    from tl_tasks.data import load_array

    return load_array(RunLayout(run_id), "y_test")


def _paired(result: dict, champion: dict, y_test, alpha: float) -> tuple[dict | None, str | None]:
    """The paired comparison of a result with its champion, or (None, why not)."""
    from tl_tasks.predictions import PredictionsUnavailable, load_predictions

    try:
        new = load_predictions(result.get("predictions_path"), result.get("predictions_sha256"),
                               expected_len=len(y_test))
        old = _champion_predictions(champion, len(y_test))
    except PredictionsUnavailable as exc:
        log.warning("no paired comparison for %s: %s", result["variant"], exc)
        return None, str(exc)
    return compare_paired(y_test, new, old, alpha=alpha), None


def _champion_predictions(champion: dict, n: int):
    """The champion's per-image predictions: from its run folder, else from its published copy."""
    from tl_tasks.predictions import PredictionsUnavailable, load_predictions

    try:
        return load_predictions(champion.get("predictions_path"), champion.get("predictions_sha256"), expected_len=n)
    except PredictionsUnavailable as first:
        published = (champion.get("gate") or {}).get("published")
        if published and champion.get("predictions_path"):
            copy = Path(published) / Path(champion["predictions_path"]).name
            if copy.is_file():
                return load_predictions(copy, champion.get("predictions_sha256"), expected_len=n)
        raise PredictionsUnavailable(f"the champion (run {champion.get('run_id')}): {first}") from None


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
            problems.append(f"{variant} failed in {result.get('stage') or 'a stage'}: {_first_line(result.get('error'))}")
        elif result.get("gate") is None:
            problems.append(f"{variant}: no gate decision recorded")
        elif fatal_regression and result["gate"]["decision"] == "regressed":
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

    from tl_tasks.skip import CODE_KEY, code_version

    out = {"python": platform.python_version(), "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
           CODE_KEY: code_version()}
    for dist in ("keras", "tensorflow", "jax", "torch", "numpy", "apache-airflow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _quiet_keras_import() -> None:
    """Import Keras (and TensorFlow, finding its devices) with file descriptor 2 silenced.

    TensorFlow's C++ start-up lines (oneDNN notice, CUDA probing, "All log messages before
    absl::InitializeLog()") go straight to fd 2 before TF_CPP_MIN_LOG_LEVEL applies; they would open every
    task log. Errors still surface: an import failure raises after stderr is restored.
    """
    if "keras" in sys.modules:
        return
    from tl_tasks import runtime  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL & co. before the import)

    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        import keras  # noqa: F401
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            devices.configure_tensorflow_cpus(tf)  # TL_CPU_DEVICES: before TF initialises its devices
            tf.config.list_physical_devices()
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


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
    return f"{type(exc).__name__}: {_first_line(str(exc))}"


def _first_line(text: str | None) -> str:
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return lines[0].strip() if lines else "(no message)"


def _now() -> datetime:
    return datetime.now(timezone.utc)
