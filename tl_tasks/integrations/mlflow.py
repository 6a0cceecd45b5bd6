"""MLflow tracking and model registry: each variant of a run becomes one MLflow run; promotions become model
versions. The alias `champion-<lineage[:12]>` follows the metrics database's champion of each lineage (test set),
and `champion` only that of the lineage deployment follows (the deploy DAG's rule: TL_DEPLOY_LINEAGE, else the
deployed lineage, else the first non-smoke one), so a smoke run never moves it unless TL_DEPLOY_LINEAGE names it.

On when `TL_MLFLOW_TRACKING_URI` is set (see ENV below). Every fact comes from the metrics database after the
report is built, so the same code logs a finished run (`log_run_safely`, the report stage's hook, handed the
stage's open store, layout and settings) and exports older ones (`export`, `tl-tasks export mlflow`). Idempotent: MLflow runs are found again by the tags
`tl.run_id` + `tl.variant`, model versions by their MLflow run. A server that fails never fails a run.
"""
from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tl_tasks.config import Settings
from tl_tasks.gating.champions import DEPLOY_LINEAGE_ENV, deployed_lineage, off_deployed_lineage
from tl_tasks.gating.decision import PROMOTING
from tl_tasks.layout import RunLayout
from tl_tasks.store import MetricsStore, connect, mask_url
from tl_tasks.store.models import CODE_KEY, SKIP_KEY

log = logging.getLogger(__name__)

# Deployment facts (the environment), never run settings.
TRACKING_URI_ENV = "TL_MLFLOW_TRACKING_URI"   # unset = MLflow off
EXPERIMENT_ENV = "TL_MLFLOW_EXPERIMENT"       # default DEFAULT_EXPERIMENT
MODEL_PREFIX_ENV = "TL_MLFLOW_MODEL_PREFIX"   # registered model of a variant: <prefix><variant>
REGISTER_ENV = "TL_MLFLOW_REGISTER"           # "promoted" (default) or "all": also kept/regressed models
DEFAULT_EXPERIMENT = "cifar10_retraining"
DEFAULT_MODEL_PREFIX = "cifar10-"
REGISTER_CHOICES = ("promoted", "all")
CHAMPION_ALIAS = "champion"

TAG_RUN, TAG_VARIANT, TAG_LOGGED = "tl.run_id", "tl.variant", "tl.logged"
# A dead server must cost seconds, not MLflow's default 7 retries with back-off (minutes per call).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT_S = 5
METRICS_PER_CALL, PARAMS_PER_CALL = 1000, 100  # MLflow's limits per log_batch call


class MlflowUnavailable(RuntimeError):
    """The tracking server did not answer its health check."""


def tracking_uri() -> str | None:
    return (os.environ.get(TRACKING_URI_ENV) or "").strip() or None


def register_mode() -> str:
    mode = (os.environ.get(REGISTER_ENV) or "promoted").strip().lower()
    if mode not in REGISTER_CHOICES:
        raise ValueError(f"{REGISTER_ENV}={mode!r} is not one of {', '.join(REGISTER_CHOICES)}; "
                         "`all` also registers kept and regressed models")
    return mode


def model_name(variant: str) -> str:
    return f"{os.environ.get(MODEL_PREFIX_ENV, DEFAULT_MODEL_PREFIX)}{variant}"


# ------------------------------------------------------------------------------------------ entry points

def log_run_safely(store: MetricsStore, layout: RunLayout, settings: Settings | None = None) -> list[dict]:
    """The report stage's hook: `log_run` when MLflow is switched on; any failure is a warning, never an error."""
    if not tracking_uri():
        return []
    try:
        return log_run(store, layout, settings)
    except Exception as exc:  # the run's own results are already stored: MLflow is a copy
        log.warning("MLflow: could not log run %s to %s (the run goes on; `tl-tasks export mlflow` retries): %s",
                    layout.run_id, mask_url(tracking_uri()), _masked(" ".join(str(exc).split()))[:500])
        return []


def log_run(store: MetricsStore, layout: RunLayout, settings: Settings | None = None, *,
            client=None) -> list[dict]:
    """Log every variant of the stored run `layout.run_id` to MLflow and register its models; returns one summary
    per variant ({variant, mlflow_run_id, created, model_version, champion}). `settings` default: settings.json."""
    run_id = layout.run_id
    run = store.get_run(run_id)
    if run is None:
        raise ValueError(f"run {run_id!r} is not in the metrics database {store.url}")
    current = {v: (store.champion(v, lineage=run["lineage"]) or {}).get("run_id") if run.get("lineage") else None
               for v in run.get("results") or {}}
    client = client or connect_client()
    experiment = _experiment_id(client)
    params = _params(run, layout, settings)
    return [_log_variant(client, experiment, run, layout, params, result, current.get(variant) == run_id)
            for variant, result in (run.get("results") or {}).items()]


def export(since: datetime | None = None, *, limit: int = 10_000) -> list[dict]:
    """Log every stored run (at or after `since`) that MLflow lacks; already logged ones are left as they are."""
    with connect() as store:
        run_ids = [r["run_id"] for r in store.recent_runs(limit, since=since)]
        client = connect_client()
        out = []
        for run_id in reversed(run_ids):  # oldest first: the newest promotion moves the alias last
            out += [{"run_id": run_id, **row} for row in log_run(store, RunLayout(run_id), client=client)]
    return out


def connect_client():
    """An MlflowClient for TL_MLFLOW_TRACKING_URI, after a quick health check of an HTTP server."""
    uri = tracking_uri()
    if not uri:
        raise MlflowUnavailable(f"{TRACKING_URI_ENV} is not set: set it to the MLflow tracking server's URL, "
                                "e.g. http://mlflow.example:5000")
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).raise_for_status()
        except requests.RequestException as exc:
            raise MlflowUnavailable(f"MLflow server {mask_url(uri)} did not answer /health: {_masked(str(exc))}") \
                from None
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# -------------------------------------------------------------------------------------------- one variant

def _experiment_id(client) -> str:
    name = os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created meanwhile by a concurrent task
        return client.get_experiment_by_name(name).experiment_id


def _log_variant(client, experiment: str, run: dict, layout: RunLayout, params: dict[str, str], result: dict,
                 is_current: bool) -> dict:
    variant = result["variant"]
    mlrun, created = _find_or_create_run(client, experiment, run, variant)
    if mlrun.data.tags.get(TAG_LOGGED) != "1":
        _log_contents(client, mlrun.info.run_id, run, layout, params, result)
        client.set_tag(mlrun.info.run_id, TAG_LOGGED, "1")
        client.set_terminated(mlrun.info.run_id, "FINISHED" if result.get("state") == "success" else "FAILED")
    version, champion = _register(client, mlrun, run, result, is_current)
    return {"variant": variant, "mlflow_run_id": mlrun.info.run_id, "created": created,
            "model_version": version, "champion": champion}


def _find_or_create_run(client, experiment: str, run: dict, variant: str):
    query = f"tags.`{TAG_RUN}` = '{_quote(run['run_id'])}' and tags.`{TAG_VARIANT}` = '{variant}'"
    found = client.search_runs([experiment], filter_string=query, max_results=1)
    if found:
        return found[0], False
    mlrun = client.create_run(experiment, run_name=f"{variant} {run['run_id']}", tags=_tags(run, variant))
    return mlrun, True


def _tags(run: dict, variant: str) -> dict:
    tags = {TAG_RUN: run["run_id"], TAG_VARIANT: variant, "tl.lineage": run.get("lineage"),
            "tl.data_fingerprint": run.get("data_fingerprint"), "tl.data_source": run.get("data_source"),
            "tl.profile": run.get("profile"), "tl.code_version": (run.get("versions") or {}).get(CODE_KEY)}
    if run.get("dag_id"):  # a run of the Airflow DAG: its run id is Airflow's
        tags.update({"airflow.dag_id": run["dag_id"], "airflow.run_id": run["run_id"]})
    return {k: str(v) for k, v in tags.items() if v is not None}


def _log_contents(client, mlrun_id: str, run: dict, layout: RunLayout, params: dict[str, str],
                  result: dict) -> None:
    from mlflow.entities import Metric, Param, RunTag  # MLflow loads only when switched on

    now = int(time.time() * 1000)
    gate = result.get("gate") or {}
    metrics = []
    for row in result.get("history") or []:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if row.get(key) is not None:
                metrics.append(Metric(f"train_{key}", float(row[key]), now, int(row["epoch"])))
    final = {"test_accuracy": result.get("accuracy"), "test_loss": result.get("loss"),
             "test_top3_accuracy": result.get("top3_accuracy"), "test_macro_f1": result.get("macro_f1"),
             "gate_delta": gate.get("delta"), "gate_p_value": gate.get("p_value")}
    if gate.get("accuracy_ci"):
        final.update(test_accuracy_ci_low=gate["accuracy_ci"][0], test_accuracy_ci_high=gate["accuracy_ci"][1])
    metrics += [Metric(k, float(v), now, 0) for k, v in final.items() if v is not None]
    tags = [RunTag(k, str(v)) for k, v in {"tl.gate_decision": gate.get("decision"),
                                           "tl.state": result.get("state")}.items() if v is not None]
    params = [Param(k, v) for k, v in params.items()]
    client.log_batch(mlrun_id, tags=tags)
    for start in range(0, len(params), PARAMS_PER_CALL):  # MLflow's limits per log_batch call
        client.log_batch(mlrun_id, params=params[start:start + PARAMS_PER_CALL])
    for start in range(0, len(metrics), METRICS_PER_CALL):
        client.log_batch(mlrun_id, metrics=metrics[start:start + METRICS_PER_CALL])
    report = Path(run.get("report_path") or "")
    if report.is_file():
        client.log_artifacts(mlrun_id, str(report.parent), "report")
    evaluation = layout.evaluation_file(result["variant"])
    if evaluation.is_file():
        client.log_artifact(mlrun_id, str(evaluation), "evaluation")
    if _wants_model(result) and result.get("model_path") and Path(result["model_path"]).is_file():
        client.log_artifact(mlrun_id, result["model_path"], "model")
        if gate.get("published") and (Path(gate["published"]) / "champion.json").is_file():
            client.log_artifact(mlrun_id, str(Path(gate["published"]) / "champion.json"), "model")


def _register(client, mlrun, run: dict, result: dict, is_current: bool) -> tuple[str | None, bool]:
    """Register the variant's model (promotions; every model with TL_MLFLOW_REGISTER=all) once per MLflow run.
    The current champion of its lineage gets `champion-<lineage[:12]>`, and `champion` on deployment's lineage."""
    gate = result.get("gate") or {}
    promoted = gate.get("decision") in PROMOTING and bool(gate.get("published"))
    if not _wants_model(result) or result.get("state") != "success":
        return None, False
    name = model_name(result["variant"])
    _ensure_registered_model(client, name, result["variant"])
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{mlrun.info.run_id}'")
    if versions:
        version = versions[0].version
    else:
        source = f"{mlrun.info.artifact_uri.rstrip('/')}/model"
        tags = {"tl.run_id": run["run_id"], "tl.lineage": run.get("lineage") or "", "tl.profile": run.get("profile") or "",
                "tl.gate_decision": str(gate.get("decision")), "tl.model_sha256": result.get("model_sha256") or ""}
        version = client.create_model_version(name, source, run_id=mlrun.info.run_id, tags=tags,
                                              description=gate.get("reason")).version
    if not (promoted and is_current):
        return str(version), False
    client.set_registered_model_alias(name, lineage_alias(run["lineage"]), version)
    champion = _follows_deployment(client, name, run, result["variant"])
    if champion:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return str(version), champion


def lineage_alias(lineage: str) -> str:
    """The alias that always follows the champion of one lineage (test set), e.g. `champion-3f2a9c1b07d4`."""
    return f"{CHAMPION_ALIAS}-{lineage[:12]}"


def _follows_deployment(client, name: str, run: dict, variant: str) -> bool:
    """Whether `champion` may move to this run's model: the deploy DAG's rule (`champions.off_deployed_lineage`)
    for the lineage TL_DEPLOY_LINEAGE names, else the deployed one, else the one `champion` already follows."""
    wanted = (os.environ.get(DEPLOY_LINEAGE_ENV) or None) or deployed_lineage(variant) \
        or _alias_lineage(client, name)
    reason = off_deployed_lineage(run, wanted)
    if reason:
        log.info("MLflow: %s keeps alias %r where it is: %s", name, CHAMPION_ALIAS, reason)
    return reason is None


def _alias_lineage(client, name: str) -> str | None:
    """The lineage of the version `champion` points at, if that is not a smoke run's (set before the rule)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_model_version_by_alias(name, CHAMPION_ALIAS).tags
    except MlflowException:
        return None
    return None if tags.get("tl.profile") in (None, "", "smoke") else (tags.get("tl.lineage") or None)


def _ensure_registered_model(client, name: str, variant: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, tags={TAG_VARIANT: variant},
                                           description=f"CIFAR-10 {variant}; alias `{CHAMPION_ALIAS}` = the gate's "
                                                       "current champion")
        except MlflowException:  # registered meanwhile by a concurrent task
            client.get_registered_model(name)


def _wants_model(result: dict) -> bool:
    gate = result.get("gate") or {}
    promoted = gate.get("decision") in PROMOTING and bool(gate.get("published"))
    return promoted or (register_mode() == "all" and gate.get("decision") in ("kept", "regressed"))


# ---------------------------------------------------------------------------------------------- helpers

def _params(run: dict, layout: RunLayout, settings: Settings | None) -> dict[str, str]:
    """MLflow params: the run's settings (the stage's, else settings.json, else the stored params) and its gate
    options."""
    gate = {"gate": (run.get("params") or {}).get("gate") or {}}
    if settings is not None:
        return {**_flatten(settings.to_dict()), **_flatten(gate)}
    try:
        prepared = json.loads(layout.settings_file.read_text())
    except (OSError, ValueError):  # never prepared: what the metrics database kept
        prepared = {k: v for k, v in (run.get("params") or {}).items() if k not in ("gate", SKIP_KEY)}
    return {**_flatten(prepared), **_flatten(gate)}


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


def _masked(text: str) -> str:
    """`text` with the tracking URI's password (if any) replaced by ***: error texts may quote the URL."""
    try:
        password = urlsplit(tracking_uri() or "").password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")

