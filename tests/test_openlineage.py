"""The OpenLineage hooks without Airflow running: the provider stays disabled with nothing set (the project's own
settings register hooks only), the facets' contents, and the extractor on runs it does not know. The events of a
real run against a loopback receiver: tests/test_dag.py (dag.test)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tl_tasks.config import PROJECT_ROOT

IS_DISABLED = """
import json, os
from tl_tasks.airflow_local.env import airflow_env
os.environ.update(airflow_env())
from airflow.providers.openlineage import conf
from airflow.providers.openlineage.extractors.manager import ExtractorManager
print(json.dumps({"disabled": conf.is_disabled(), "extractor": ExtractorManager().extractors["_PythonDecoratedOperator"].__name__,
                  "facets": sorted(conf.custom_run_facets()), "thread": conf.execute_in_thread()}))
"""


def _provider_state(tmp_path, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPENLINEAGE"))}
    proc = subprocess.run([sys.executable, "-c", IS_DISABLED], capture_output=True, text=True, timeout=300,
                          cwd=PROJECT_ROOT, env={**base, "TL_AIRFLOW_HOME": str(tmp_path / "airflow"), **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env, disabled", [({}, True), ({"OPENLINEAGE_URL": "http://127.0.0.1:9"}, False),
                                           ({"AIRFLOW__OPENLINEAGE__TRANSPORT": '{"type": "console"}'}, False)])
@pytest.mark.slow
def test_off_unless_a_transport_is_configured(tmp_path, env, disabled):
    state = _provider_state(tmp_path, **env)
    assert state["disabled"] is disabled
    assert state["extractor"] == "RetrainingExtractor" and state["thread"] is True
    assert state["facets"] == ["tl_tasks.integrations.openlineage.retraining_run_facets"]


def _run(**extra) -> dict:
    return {"run_id": "r1", "dag_id": "cifar10_retraining", "data_source": "synthetic", "lineage": "a" * 64,
            "data_fingerprint": "b" * 64, "data_summary": {"counts": {"train": 300, "val": 20, "test": 80}},
            "params": {"profile": "smoke", "gate": {"alpha": 0.05}}, "versions": {"code": "0.12.0+abc"}, **extra}


def test_datasets_and_facets_from_a_stored_run(tmp_path):
    from openlineage.client.serde import Serde

    from tl_tasks.integrations import openlineage as ol

    published = tmp_path / "champions" / "cnn" / "v1"
    gate = {"decision": "bootstrap", "reason": "first", "accuracy_ci": [0.4, 0.6], "published": str(published),
            "p_value": None, "delta": None, "alpha": 0.05}
    run = _run(data_source=f"folder:{tmp_path / 'images.tar.gz'}", results={  # as the prepare stage stores it
        "cnn": {"variant": "cnn", "accuracy": 0.5, "model_sha256": "c" * 64, "gate": gate},
        "resnet50_v2": {"variant": "resnet50_v2", "accuracy": 0.4, "gate": {"decision": "kept"}}})
    lineage = json.loads(Serde.to_json(ol.task_lineage(run, "gate").outputs[0]))
    assert lineage["namespace"] == "file" and lineage["name"] == str(published)  # kept variants publish nothing
    assert lineage["facets"]["tl_gate"]["decision"] == "bootstrap"
    assert lineage["facets"]["tl_evaluation"]["accuracyInterval"] == [0.4, 0.6]
    assert lineage["facets"]["tl_model"]["sha256"] == "c" * 64
    assert ol.task_lineage(run, "train").outputs == []
    source = json.loads(Serde.to_json(ol.data_source_dataset(run)))
    assert (source["namespace"], source["name"]) == ("file", str(tmp_path / "images.tar.gz"))
    assert source["facets"]["tl_dataFingerprint"]["counts"] == {"train": 300, "val": 20, "test": 80}
    pickles = ol.data_source_dataset(_run(data_source=f"cifar10:{tmp_path / 'cifar-10-python.tar.gz'}"))
    assert (pickles.namespace, pickles.name) == ("file", str(tmp_path / "cifar-10-python.tar.gz"))
    assert ol.data_source_dataset(_run()).namespace == "tl-tasks"  # a built-in source is not a file
    assert ol.data_source_dataset(_run(data_source="cifar10")).namespace == "tl-tasks"  # Keras's download
    facets = {k: json.loads(Serde.to_json(v)) for k, v in ol.run_facets(run, {"profile": "smoke",
                                                                               "epochs": {"cnn": 1}}).items()}
    assert facets["tl_settings"]["settings"] == {"profile": "smoke", "epochs": {"cnn": 1}}
    assert facets["tl_settings"]["gate"] == {"alpha": 0.05} and facets["tl_codeVersion"]["codeVersion"] == "0.12.0+abc"


def test_the_extractor_finds_nothing_for_runs_of_other_dags(tl_home):
    from types import SimpleNamespace

    from tl_tasks.integrations.openlineage import RetrainingExtractor, retraining_run_facets
    from tl_tasks.store import connect

    with connect() as store:
        store.upsert_run("shared-id", dag_id="cifar10_retraining", state="running", data_source="synthetic")
    extractor = RetrainingExtractor(SimpleNamespace(task_id="gate"))
    other = SimpleNamespace(run_id="shared-id", dag_id="another_dag", task_id="gate")
    assert extractor.extract_on_complete(other).inputs == [] and retraining_run_facets(other, None) == {}
    ours = SimpleNamespace(run_id="shared-id", dag_id="cifar10_retraining", task_id="gate")
    assert [d.name for d in extractor.extract_on_failure(ours).inputs] == ["synthetic"]
