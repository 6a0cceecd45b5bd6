"""The MLflow integration against a real tracking server (tests/conftest.py's mlflow_server): runs, metrics,
artifacts, registered versions, the per-lineage alias and `champion` (deployment's lineage only); idempotent
re-logging and export; an unreachable server only warns, its password masked. Runs go through the local engine (the same stages and report hook as the DAG's tasks).
"""
from __future__ import annotations

import json
import logging
import os

import pytest

from tests.airflow_harness import free_port
from tl_tasks import pipeline
from tl_tasks.integrations import mlflow as tl_mlflow
from tl_tasks.layout import RunLayout
from tl_tasks.store import connect

pytestmark = pytest.mark.slow  # starts an MLflow server process (make mlflow-venv)

MODEL = "cifar10-cnn"


def _smoke(run_id: str, **params) -> dict:
    # force: the same recipe on the same data trains again instead of being skipped as unchanged
    return pipeline.run_local(run_id, {"profile": "smoke", "variants": ["cnn"], "force": True, **params})


def _client(url):
    from mlflow import MlflowClient

    return MlflowClient(url)


def _runs(client, run_id: str | None = None) -> list:
    experiment = client.get_experiment_by_name(os.environ[tl_mlflow.EXPERIMENT_ENV])
    if experiment is None:
        return []
    query = f"tags.`tl.run_id` = '{run_id}'" if run_id else ""
    return client.search_runs([experiment.experiment_id], filter_string=query)


@pytest.fixture
def mlflow_on(mlflow_server, monkeypatch):
    monkeypatch.setenv(tl_mlflow.TRACKING_URI_ENV, mlflow_server)
    # each test its own experiment and registered model, so module-scoped server state never leaks between tests
    suffix = str(free_port())
    monkeypatch.setenv(tl_mlflow.EXPERIMENT_ENV, f"{tl_mlflow.DEFAULT_EXPERIMENT}-{suffix}")
    monkeypatch.setenv(tl_mlflow.MODEL_PREFIX_ENV, f"cifar10-{suffix}-")
    return _client(mlflow_server), f"cifar10-{suffix}-cnn"


def _alias_run(client, model: str, alias: str) -> str | None:
    """The tl.run_id of the version `alias` points at, None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model, alias).tags["tl.run_id"]
    except MlflowException:
        return None


def test_a_promotion_is_logged_registered_and_gets_the_champion_alias_a_weaker_run_leaves_it(mlflow_on,
                                                                                             monkeypatch):
    client, model = mlflow_on
    first = _smoke("first")
    assert first["decisions"]["cnn"]["decision"] == "bootstrap"
    lineage = first["decisions"]["cnn"]["lineage"]
    with connect() as store:
        stored = store.get_run("first")["results"]["cnn"]
    [logged] = _runs(client, "first")
    tags, metrics, params = logged.data.tags, logged.data.metrics, logged.data.params
    assert tags["tl.variant"] == "cnn" and tags["tl.lineage"] and tags["tl.data_fingerprint"] and tags["tl.code_version"]
    assert metrics["test_accuracy"] == pytest.approx(stored["accuracy"])
    assert metrics["test_top3_accuracy"] == pytest.approx(stored["top3_accuracy"])
    assert metrics["test_macro_f1"] == pytest.approx(stored["macro_f1"])
    history = client.get_metric_history(logged.info.run_id, "train_val_accuracy")
    assert [m.step for m in history] == [row["epoch"] for row in stored["history"]]
    assert params["profile"] == "smoke" and params["epochs.cnn"] == "1" and params["gate.alpha"] == "0.05"
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert artifacts == {"report", "evaluation", "model"}
    assert {a.path for a in client.list_artifacts(logged.info.run_id, "model")} == {"model/model.keras",
                                                                                  "model/champion.json"}
    # a smoke run's champion gets its lineage's alias, never `champion`: deployment does not follow it either
    per_lineage = tl_mlflow.lineage_alias(lineage)
    assert per_lineage == f"champion-{lineage[:12]}"
    champion = client.get_model_version_by_alias(model, per_lineage)
    assert champion.run_id == logged.info.run_id and champion.tags["tl.run_id"] == "first"
    assert _alias_run(client, model, "champion") is None

    # once TL_DEPLOY_LINEAGE names the lineage, `champion` follows it (a retried report stage applies the rule)
    monkeypatch.setenv("TL_DEPLOY_LINEAGE", lineage[:12])
    pipeline.report_stage("first")
    assert client.get_model_version_by_alias(model, "champion").version == champion.version

    # the same recipe again: identical predictions, so the gate keeps the champion; nothing is registered
    second = _smoke("second")
    assert second["decisions"]["cnn"]["decision"] in ("kept", "regressed")
    [kept] = _runs(client, "second")
    assert kept.data.tags["tl.gate_decision"] == second["decisions"]["cnn"]["decision"]
    assert "gate_p_value" in kept.data.metrics and "gate_delta" in kept.data.metrics
    assert "model" not in {a.path for a in client.list_artifacts(kept.info.run_id)}
    assert client.get_model_version_by_alias(model, "champion").version == champion.version
    assert len(client.search_model_versions(f"name = '{model}'")) == 1

    # a forced promotion moves both aliases to a new version
    third = _smoke("third", force_promote=True)
    assert third["decisions"]["cnn"]["decision"] == "promoted"
    moved = client.get_model_version_by_alias(model, "champion")
    assert moved.version != champion.version and moved.tags["tl.run_id"] == "third"
    assert _alias_run(client, model, per_lineage) == "third"

    # rerunning the report stage (what a task retry does) adds no run and no version
    pipeline.report_stage("third")
    assert len(_runs(client)) == 3 and len(client.search_model_versions(f"name = '{model}'")) == 2

    # a champion of another test set gets its own lineage's alias; `champion` stays on the deployed lineage
    other = _smoke("other-data", seed=9)["decisions"]["cnn"]
    assert other["decision"] == "bootstrap" and other["lineage"] != lineage
    assert _alias_run(client, model, tl_mlflow.lineage_alias(other["lineage"])) == "other-data"
    assert _alias_run(client, model, "champion") == "third"


def test_register_all_registers_kept_models_without_moving_the_alias(mlflow_on, monkeypatch):
    client, model = mlflow_on
    lineage = _smoke("first")["decisions"]["cnn"]["lineage"]
    monkeypatch.setenv(tl_mlflow.REGISTER_ENV, "all")
    assert _smoke("second")["decisions"]["cnn"]["decision"] == "kept"
    versions = {v.tags["tl.run_id"]: v for v in client.search_model_versions(f"name = '{model}'")}
    assert sorted(versions) == ["first", "second"] and versions["second"].tags["tl.gate_decision"] == "kept"
    assert _alias_run(client, model, tl_mlflow.lineage_alias(lineage)) == "first"


def test_export_logs_earlier_runs_once(mlflow_server, tmp_path, monkeypatch):
    from tl_tasks.__main__ import main

    _smoke("offline")  # MLflow off: nothing logged
    monkeypatch.setenv(tl_mlflow.TRACKING_URI_ENV, mlflow_server)
    monkeypatch.setenv(tl_mlflow.EXPERIMENT_ENV, "exported")
    client = _client(mlflow_server)
    assert main(["export", "mlflow", "--since", "2020-01-01"]) == 0
    experiment = client.get_experiment_by_name("exported")
    [logged] = client.search_runs([experiment.experiment_id])
    assert logged.data.tags["tl.run_id"] == "offline" and "test_accuracy" in logged.data.metrics
    lineage = logged.data.tags["tl.lineage"]
    assert _alias_run(client, MODEL, tl_mlflow.lineage_alias(lineage)) == "offline"
    assert _alias_run(client, MODEL, "champion") is None  # a smoke run's lineage, none chosen: as deploy
    assert main(["export", "mlflow"]) == 0  # idempotent: found again by its tags
    assert len(client.search_runs([experiment.experiment_id])) == 1
    monkeypatch.setenv("TL_DEPLOY_LINEAGE", lineage[:12])  # the same rule as the logging hook's
    assert main(["export", "mlflow"]) == 0
    assert _alias_run(client, MODEL, "champion") == "offline"


def test_export_of_nothing_prints_an_empty_list(mlflow_server, monkeypatch, capsys):
    from tl_tasks.__main__ import main

    monkeypatch.setenv(tl_mlflow.TRACKING_URI_ENV, mlflow_server)
    assert main(["export", "mlflow"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_an_unreachable_server_only_warns(monkeypatch, caplog):
    monkeypatch.setenv(tl_mlflow.TRACKING_URI_ENV, f"http://alice:s3cret@127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="tl_tasks.integrations.mlflow"):
        result = _smoke("offline-server")
    assert result["state"] == "success" and result["decisions"]["cnn"]["decision"] == "bootstrap"
    [warning] = [r.getMessage() for r in caplog.records if "MLflow: could not log run offline-server" in r.getMessage()]
    assert "/health" in warning and "alice:***@127.0.0.1" in warning and "s3cret" not in warning
    with pytest.raises(tl_mlflow.MlflowUnavailable) as raised:
        tl_mlflow.connect_client()
    assert "alice:***@" in str(raised.value) and "s3cret" not in str(raised.value)


def test_off_without_a_tracking_uri(monkeypatch):
    monkeypatch.setattr(tl_mlflow, "connect_client", lambda: pytest.fail("MLflow contacted while switched off"))
    with connect() as store:
        assert tl_mlflow.log_run_safely(store, RunLayout("any-run")) == []


def test_register_mode_names_the_bad_value(monkeypatch):
    monkeypatch.setenv(tl_mlflow.REGISTER_ENV, "sometimes")
    with pytest.raises(ValueError, match=r"TL_MLFLOW_REGISTER='sometimes'.*promoted, all"):
        tl_mlflow.register_mode()
