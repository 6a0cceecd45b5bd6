"""Champions you can deploy: publication on promotion (model, predictions, champion.json), history kept,
verification against the database, the `champion` command, and the example deployment (which adds the
SavedModel)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tl_tasks import config, pipeline, schema
from tl_tasks.__main__ import main
from tl_tasks.gating import champions
from tl_tasks.layout import RunLayout
from tl_tasks.store import connect

# Plain Keras in a separate process: model.keras loads only after importing what champion.json's load_requires names.
LOAD = """
import importlib, json, sys
import keras
try:
    keras.models.load_model(sys.argv[1], compile=False)
    plain = "loaded"
except Exception as exc:
    plain = str(exc)
for module in json.loads(sys.argv[2]):
    importlib.import_module(module)
keras.models.load_model(sys.argv[1], compile=False)
print(json.dumps({"plain": plain}))
"""

# A separate process with plain TensorFlow (no Keras, no tl_tasks): what a serving system would run.
SERVE = """
import json, sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
probs = np.concatenate([model.serve(tf.constant(x[i:i + 64])).numpy() for i in range(0, len(x), 64)])
print(json.dumps({"probs": probs.tolist(), "tl_tasks": any(m.startswith("tl_tasks") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def promoted_home(tmp_path_factory):
    """Two smoke runs of the CNN on the same synthetic data, once per module: the first bootstraps, the second
    is forced. Returns (TL_HOME they ran in, an untouched copy of it, their results)."""
    home = tmp_path_factory.mktemp("champions") / "tl_home"
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("TL_") and not k.startswith("TL_TEST_")]:
            patch.delenv(key)
        patch.setenv("TL_HOME", str(home))
        patch.setenv("TL_DATA_ROOTS", str(tmp_path_factory.getbasetemp()))
        params = {"profile": "smoke", "variants": ["cnn"]}
        first = pipeline.run_local("champ-1", params)
        second = pipeline.run_local("champ-2", {**params, "force": True, "force_promote": True})  # same data: forced
    pristine = home.with_name("pristine")
    shutil.copytree(home, pristine, symlinks=True)
    return home, pristine, (first, second)


@pytest.fixture
def promoted_cnn(promoted_home, tl_home, monkeypatch):
    """The two runs of `promoted_home`, restored to their pristine state for this test and made its TL_HOME
    (at the same path: the metrics database holds absolute paths)."""
    home, pristine, results = promoted_home
    shutil.rmtree(home)
    shutil.copytree(pristine, home, symlinks=True)
    monkeypatch.setenv("TL_HOME", str(home))
    return results


@pytest.mark.slow  # two whole pipeline runs per module (promoted_home)
def test_promotion_publishes_a_servable_champion_and_keeps_history(promoted_cnn):
    first, second = promoted_cnn
    assert first["decisions"]["cnn"]["decision"] == "bootstrap"
    assert second["decisions"]["cnn"]["forced"] is True
    with connect() as store:
        run = store.get_run("champ-2")
        result = run["results"]["cnn"]
        assert store.champion("cnn", lineage=run["lineage"])["run_id"] == "champ-2"
    home = champions.lineage_dir("cnn", run["lineage"])
    versions = sorted(p.name for p in (home / "versions").iterdir() if not p.name.startswith("."))
    assert versions == [config.run_key("champ-1"), config.run_key("champ-2")]  # the old one is history
    current = home / "current"
    assert current.is_symlink() and current.resolve() == (home / "versions" / config.run_key("champ-2")).resolve()

    meta = champions.read_champion(current)
    assert meta["run_id"] == "champ-2" and meta["lineage"] == run["lineage"] and meta["variant"] == "cnn"
    assert meta["model_sha256"] == result["model_sha256"] and len(meta["model_sha256"]) == 64
    assert meta["accuracy"] == pytest.approx(result["accuracy"])
    low, high = meta["accuracy_ci"]
    assert low <= meta["accuracy"] <= high
    assert meta["versions"]["keras"] and meta["versions"]["tensorflow"] and meta["published_at"]
    assert meta["forced"] is True
    assert meta["load_requires"]["custom_layers"] == ["tl_tasks>RandomAugment"]
    assert meta["load_requires"]["import"] == [champions.CUSTOM_LAYERS_MODULE]
    assert (current / "model.keras").read_bytes() == Path(result["model_path"]).read_bytes()

    # A promotion publishes model.keras only; the first deployment adds the SavedModel to the version, whole,
    # and leaves every published file as it was.
    assert meta["serving"]["format"] is None and "deployed" in meta["serving"]["reason"]
    assert not (current / "serving").exists()
    before = {p.name: p.read_bytes() for p in current.iterdir() if p.name != "champion.json"}
    deployed = champions.deploy(home / "versions" / config.run_key("champ-2"), "cnn", lineage=run["lineage"])
    served_dir = Path(deployed["deployed"])
    meta = champions.read_champion(served_dir)
    assert meta["serving"]["format"] == "tf_saved_model" and meta["serving"]["endpoint"] == "serve"
    assert champions.read_champion(current)["serving"] == meta["serving"]  # the champion's own folder has it
    assert {p.name: p.read_bytes() for p in current.iterdir() if p.is_file() and p.name != "champion.json"} == before
    assert champions.verify({"published": str(home / "versions" / config.run_key("champ-2")), "run_id": "champ-2",
                             "model_sha256": result["model_sha256"]}, current=True) == []

    # The SavedModel loads with plain TensorFlow in another process and reproduces the stored predictions.
    x_test = RunLayout("champ-2").data_dir / "x_test.npy"
    proc = subprocess.run([sys.executable, "-c", SERVE, str(served_dir / "serving"), str(x_test)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["tl_tasks"] is False  # nothing of this project is needed to serve it
    proc = subprocess.run([sys.executable, "-c", LOAD, str(current / "model.keras"),
                           json.dumps(meta["load_requires"]["import"])], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RandomAugment" in json.loads(proc.stdout.strip().splitlines()[-1])["plain"]  # not without the import
    probs = np.array(served["probs"])
    stored = np.load(current / "predictions.npy")
    # The same predictions, up to float rounding: a one-epoch smoke model trained with label smoothing has
    # near-ties, so compare the classes wherever the top two probabilities are more than 1e-4 apart.
    top2 = np.sort(probs, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert clear.mean() > 0.9, clear.mean()
    assert np.array_equal(probs.argmax(axis=1)[clear], stored[clear])


@pytest.mark.slow  # two whole pipeline runs per module (promoted_home)
def test_champion_command_verifies_files(promoted_cnn, capsys):
    assert main(["champion", "show"]) == 0
    out = capsys.readouterr().out
    assert "cnn" in out and "champ-2" in out and "ok" in out and "champ-1" not in out
    assert main(["champion", "history", "--variant", "cnn", "--json"]) == 0
    history = json.loads(capsys.readouterr().out)["champions"]
    assert [h["run_id"] for h in history] == ["champ-2", "champ-1"]
    assert all(h["problems"] == [] and len(h["model_sha256"]) == 64 for h in history)

    # an altered champion is reported clearly, and the command fails
    current = Path(history[0]["published"])
    (current / "model.keras").write_bytes(b"tampered")
    assert main(["champion", "show"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "sha256" in out
    # a missing one too
    (current / "model.keras").unlink()
    assert main(["champion", "show", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)["champions"]
    assert any("is missing" in p for p in rows[0]["problems"])


@pytest.mark.slow
def test_publish_refuses_a_model_that_changed_since_evaluation(tl_home):
    settings = schema.settings_from_params({"profile": "smoke", "variants": ["cnn"]})
    pipeline.prepare_stage("chg", settings.to_dict())
    pipeline.train_stage("chg", "cnn", settings.to_dict())
    pipeline.evaluate_stage("chg", "cnn", settings.to_dict())
    model = RunLayout("chg").model_dir("cnn") / "model.keras"
    model.write_bytes(model.read_bytes() + b"\0")  # e.g. a retrain that overwrote it after evaluate
    with pytest.raises(champions.ChampionError, match="changed since it was evaluated"):
        pipeline.gate_stage("chg", settings.to_dict())
    assert not list((tl_home / "champions").glob("cnn/*/current"))  # nothing half-published


@pytest.mark.slow  # two whole pipeline runs per module (promoted_home)
def test_example_deployment_points_at_a_verified_champion_of_one_lineage(promoted_cnn):
    tl_home = config.tl_home()
    with connect() as store:
        published = store.champion_history("cnn")[0]["published"]
    lineage = champions.read_champion(published)["lineage"]
    target = tl_home / "deployed" / "cnn"
    # a smoke run's champion is not deployed unless its lineage is chosen
    first = champions.deploy(published, "cnn")
    assert first["deployed"] is None and "smoke run" in first["skipped"] and not target.exists()
    out = champions.deploy(published, "cnn", lineage=lineage[:12])
    assert out["deployed"] == str(target) and target.resolve() == Path(published).resolve()
    # a champion of another test set does not replace the deployed model
    other = pipeline.run_local("champ-other", {"profile": "smoke", "variants": ["cnn"], "seed": 9})["decisions"]["cnn"]
    assert other["decision"] == "bootstrap" and other["lineage"] != lineage
    skipped = champions.deploy(other["published"], "cnn")
    assert skipped["deployed"] is None and "another test set" in skipped["skipped"]
    assert target.resolve() == Path(published).resolve()
    # unless asked to switch lineages
    assert champions.deploy(other["published"], "cnn", lineage=other["lineage"][:12])["deployed"] == str(target)
    assert target.resolve() == Path(other["published"]).resolve()


@pytest.mark.slow  # two whole pipeline runs per module (promoted_home)
def test_deploy_exports_the_version_itself_once_whatever_path_names_it(promoted_cnn, monkeypatch, capsys):
    with connect() as store:
        run = store.get_run("champ-2")
    home = champions.lineage_dir("cnn", run["lineage"])
    version = home / "versions" / config.run_key("champ-2")
    monkeypatch.setenv("TL_SERVING_EXPORT", "0")  # a worker without TensorFlow: model.keras only
    assert champions.deploy(version, "cnn", lineage=run["lineage"])["deployed"]
    assert not (version / "serving").exists()
    monkeypatch.delenv("TL_SERVING_EXPORT")
    # through the lineage's `current` link, then through the hidden folder it resolves to: the version itself
    # gets serving/, `current` stays a link to it, and deployed/cnn names the version
    out = champions.deploy(home / "current", "cnn", lineage=run["lineage"])
    assert (version / "serving" / "saved_model.pb").is_file()
    assert (home / "current").is_symlink() and (home / "current").resolve() == version.resolve()
    assert Path(out["deployed"]).resolve() == version.resolve()
    exported = version.resolve()
    champions.deploy(exported, "cnn", lineage=run["lineage"])  # already exported: not published again
    assert version.resolve() == exported and os.readlink(Path(out["deployed"])) == str(version)
    assert main(["champion", "show"]) == 0 and "ok" in capsys.readouterr().out


@pytest.mark.slow  # two whole pipeline runs per module (promoted_home)
def test_deployment_refuses_what_the_database_did_not_promote(promoted_cnn):
    tl_home = config.tl_home()
    with connect() as store:
        published = store.champion_history("cnn")[0]["published"]
    with pytest.raises(champions.ChampionError, match="not a published champion of resnet50_v1"):
        champions.deploy(published, "resnet50_v1")  # a folder of another variant
    with pytest.raises(champions.ChampionError, match="not a published champion"):
        champions.deploy(tl_home, "cnn")
    with pytest.raises(ValueError, match="variant"):
        champions.deploy(published, "../../etc")
    (Path(published) / "model.keras").write_bytes(b"tampered")
    with pytest.raises(champions.ChampionError, match="refusing to deploy"):
        champions.deploy(published, "cnn")


# In a fresh interpreter (as a worker runs the deploy DAG; Keras loads only for the SavedModel export): the gate's own emission
# (`emit_promotions` into Airflow's OutletEventAccessors), turned into the events Airflow hands a DAG run that
# the champion asset triggered (AssetEventDagRunReferenceResult, through the alias, in a
# TriggeringAssetEventsAccessor), then the deploy DAG's task as parsed from its file, called with them.
DEPLOY_ON_EVENTS = """
import json, sys
from datetime import UTC, datetime
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.api.datamodels._generated import AssetAliasReferenceAssetEventDagRun, AssetReferenceAssetEventDagRun
from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
from airflow.sdk.execution_time.context import OutletEventAccessors, TriggeringAssetEventsAccessor
from tl_tasks.gating.assets import champion_alias, emit_promotions

dag_file, gate_results = sys.argv[1], json.loads(sys.argv[2])
events = []
for gate_result in gate_results:
    outlets = OutletEventAccessors()
    emit_promotions(outlets, gate_result)
    for e in outlets[champion_alias()].asset_alias_events:
        events.append(AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=e.dest_asset_key.name, uri=e.dest_asset_key.uri, extra={}),
            extra=e.extra, source_task_id="gate", source_dag_id="cifar10_retraining",
            source_run_id=gate_result["run_id"], source_map_index=-1,
            source_aliases=[AssetAliasReferenceAssetEventDagRun(name=e.source_alias_name)],
            timestamp=datetime.now(UTC)))
triggering = TriggeringAssetEventsAccessor.build(events)
bag = DagBag(dag_folder=dag_file)
assert not bag.import_errors, bag.import_errors
try:
    out = bag.dags["deploy_champion"].get_task("deploy").python_callable(triggering_asset_events=triggering)
    print(json.dumps({"deployed": out}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _deploy_on_events(gate_results: list[dict]) -> dict:
    proc = subprocess.run([sys.executable, "-c", DEPLOY_ON_EVENTS, str(config.PROJECT_ROOT / "dags" / "deploy_champion.py"),
                           json.dumps(gate_results)], capture_output=True, text=True, timeout=300,
                          cwd=config.PROJECT_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two whole pipeline runs per module (promoted_home)
def test_deploy_dag_task_deploys_each_real_asset_event_and_reports_refusals(promoted_cnn, monkeypatch):
    _, second = promoted_cnn
    tl_home = config.tl_home()
    with connect() as store:
        history = store.champion_history("cnn")
    lineage = history[0]["lineage"]
    monkeypatch.setenv("TL_DEPLOY_LINEAGE", lineage[:12])
    promoted = {"run_id": "champ-2", "lineage": lineage, "decisions": second["decisions"],
                "promoted": {"cnn": history[0]["published"]}}
    out = _deploy_on_events([promoted])
    assert out == {"deployed": [{"variant": "cnn", "lineage": lineage, "deployed": str(tl_home / "deployed" / "cnn"),
                                 "skipped": None}]}, "one event, one deployment"
    assert (tl_home / "deployed" / "cnn").resolve() == Path(history[0]["published"]).resolve()
    bad = {**promoted, "run_id": "x", "promoted": {"cnn": "/etc"}}
    refused = _deploy_on_events([bad, promoted])
    assert refused["error"] == "ChampionError"
    assert refused["message"].startswith("refused to deploy 'cnn' of run 'x': /etc is not a published champion")


@pytest.mark.slow  # two whole pipeline runs per module (promoted_home)
def test_an_older_runs_gate_rerun_does_not_roll_current_back(promoted_cnn):
    with connect() as store:
        run = store.get_run("champ-1")
    out = pipeline.gate_stage("champ-1", force_promote=True)  # e.g. the older run's gate task cleared later
    assert out["decisions"]["cnn"]["decision"] in ("promoted", "bootstrap") and out["promoted"] == {}
    current = champions.current_dir("cnn", run["lineage"])
    assert champions.read_champion(current)["run_id"] == "champ-2"
    assert main(["champion", "show"]) == 0


PARSE_DEPLOY_DAG = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags["deploy_champion"]
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "assets": sorted(a.name for a in dag.timetable.asset_condition.objects),
                  "tasks": dag.task_ids, "calls": dag.get_task("deploy").python_callable.__code__.co_names}))
"""


@pytest.mark.slow
def test_deploy_dag_is_scheduled_on_every_champion_asset():
    # In a subprocess, as the DAG-integrity tests do: parsing DAGs in this process (after Keras ran) is not
    # what the dag-processor does and has been seen to break pytest's captured stderr.
    from tl_tasks.variants import VARIANT_NAMES

    proc = subprocess.run([sys.executable, "-c", PARSE_DEPLOY_DAG, str(config.PROJECT_ROOT / "dags" / "deploy_champion.py")],
                          capture_output=True, text=True, timeout=300, cwd=config.PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {} and parsed["tasks"] == ["deploy"]
    assert parsed["assets"] == sorted(f"tl_champion_{v}" for v in VARIANT_NAMES)
    assert "deploy_events" in parsed["calls"]
