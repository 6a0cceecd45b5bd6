"""The Airflow DAG: integrity (parses without import errors or heavy imports, task ids, edges, tags, retries,
schedule, params schema), each task callable on its own, and dag.test() end to end on the smoke profile,
including a run where one variant is forced to fail.

The end-to-end runs go through tl_tasks.airflow_local.run_dag (what `make run` uses) in a subprocess with their own
AIRFLOW_HOME, so this test process never configures Airflow against a real database or runs TensorFlow in it
on Airflow's behalf. Runs that need no settings of their own share one subprocess (`smoke_runs`): Airflow, Keras
and the in-process execution API start once for them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = PROJECT_ROOT / "dags" / "cifar10_retraining.py"
RUN_DAG = [sys.executable, "-m", "tl_tasks.airflow_local.run_dag"]
# Importing Airflow in this process must not touch ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", str(Path(tempfile.gettempdir()) / "tl-test-airflow-home"))

from tl_tasks.errors import BadInput, MissingInput  # noqa: E402
from tl_tasks.gating.assets import champion_alias  # noqa: E402
from tl_tasks.stages.timeouts import DAGRUN_TIMEOUT, HARD  # noqa: E402
from tl_tasks.store import connect  # noqa: E402
from tl_tasks.variants import VARIANT_NAMES  # noqa: E402

TASK_IDS = {"prepare_data", "train", "evaluate", "gate", "build_report", "finalize"}
EDGES = {"prepare_data": {"train"}, "train": {"evaluate"}, "evaluate": {"gate"}, "gate": {"build_report"},
         "build_report": {"finalize"}, "finalize": set()}
HEAVY_MODULES = ("tensorflow", "keras", "matplotlib", "jax", "torch")


@pytest.fixture(scope="module")
def run_dag_module():
    from tl_tasks.airflow_local import run_dag

    return run_dag


@pytest.fixture(scope="module")
def dag(run_dag_module):
    return run_dag_module.load_dag()


def _python(code: str, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TL_SCHEDULE", "PYTHONPATH"))}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd or tempfile.gettempdir(), env={**base, **(env or {})})


# ----------------------------------------------------------------------------------------- integrity

PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("cifar10_retraining")
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
    "heavy": sorted(m for m in sys.argv[2].split(",") if m in sys.modules),
    # the clock of the AssetOrTimeSchedule (None: the data asset alone) and whether the data asset triggers it
    "schedule": None if dag is None else getattr(getattr(dag.timetable, "timetable", None), "expression", None),
    "on_data_asset": dag is not None and "tl_training_data" in repr(dag.timetable),
}))
"""


def _parse(tmp_path, **env) -> dict:
    proc = _python(PARSE, str(DAG_FILE.parent), ",".join(HEAVY_MODULES),
                   env={"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_dag_parses_without_errors_or_heavy_imports(tmp_path):
    # Run from a foreign folder with no PYTHONPATH: the DAG file must find tl_tasks by itself.
    parsed = _parse(tmp_path)
    assert parsed["errors"] == {}
    assert parsed["dag_ids"] == ["cifar10_retraining", "deploy_champion", "tl_data_watcher", "tl_maintenance"]
    assert parsed["heavy"] == [], f"parsing the DAG imported {parsed['heavy']}"
    assert parsed["schedule"] == "0 0 * * 0" and parsed["on_data_asset"]  # @weekly or new data


@pytest.mark.slow
@pytest.mark.parametrize("value, expected", [("None", None), ("0 3 * * *", "0 3 * * *")])
def test_schedule_from_tl_schedule(tmp_path, value, expected):
    parsed = _parse(tmp_path, TL_SCHEDULE=value)
    assert parsed["schedule"] == expected and parsed["on_data_asset"]


def test_dag_id_tags_doc_and_run_settings(dag):
    assert dag.dag_id == DAG_FILE.stem == "cifar10_retraining"
    assert {"ml", "cifar10"} <= set(dag.tags)
    assert "gate" in dag.doc_md and "`gpu`" in dag.doc_md and "TL_SCHEDULE" in dag.doc_md
    assert dag.catchup is False and dag.max_active_runs == 1


def test_task_ids_and_edges(dag):
    assert set(dag.task_ids) == TASK_IDS
    for task_id, downstream in EDGES.items():
        assert set(dag.get_task(task_id).downstream_task_ids) == downstream, task_id
    assert [t.task_id for t in dag.tasks if not t.downstream_task_ids] == ["finalize"]  # the run's only leaf


def test_the_dag_runs_the_pipelines_stages_in_their_order(dag):
    # one definition of the stage sequence: the DAG's tasks are pipeline.STAGES (the local engine runs them too)
    from tl_tasks.pipeline import STAGES

    order = [t.task_id for t in dag.topological_sort()]
    assert order == [s.task_id for s in STAGES]
    for stage in STAGES:
        task = dag.get_task(stage.task_id)
        rule = str(getattr(task.trigger_rule, "value", task.trigger_rule))
        assert rule == ("all_done" if stage.after_failures else "all_success"), stage.task_id
        assert type(task).__name__.endswith("MappedOperator") == stage.per_variant, stage.task_id


def test_retries_trigger_rules_pools_and_map_labels(dag):
    from airflow.sdk import RetryAction

    for task in dag.tasks:
        assert task.retries >= 2 and task.retry_delay >= timedelta(seconds=30), task.task_id
        policy = task.retry_policy
        assert policy.evaluate(BadInput("bad input"), 1, 3).action == RetryAction.FAIL
        assert policy.evaluate(MissingInput("no such dataset"), 1, 3).action == RetryAction.FAIL
        assert policy.evaluate(RuntimeError("transient"), 1, 3).action == RetryAction.DEFAULT
        # not every ValueError / FileNotFoundError is bad input: a truncated file or a vanished NFS file retries
        assert policy.evaluate(ValueError("truncated checkpoint"), 1, 3).action == RetryAction.DEFAULT
        assert policy.evaluate(FileNotFoundError("model.keras"), 1, 3).action == RetryAction.DEFAULT
        assert task.execution_timeout is not None and task.execution_timeout <= HARD["train"], task.task_id
    assert dag.dagrun_timeout == DAGRUN_TIMEOUT
    train, evaluate = dag.get_task("train"), dag.get_task("evaluate")
    assert (train.pool, train.queue, evaluate.pool, evaluate.queue) == ("gpu", "gpu", "gpu", "gpu")
    assert "variant" in train.map_index_template and "variant" in evaluate.map_index_template
    rules = {t.task_id: str(getattr(t.trigger_rule, "value", t.trigger_rule)) for t in dag.tasks}
    assert rules == {"prepare_data": "all_success", "train": "all_success", "evaluate": "all_done",
                     "gate": "all_done", "build_report": "all_done", "finalize": "all_done"}


def test_params_defaults(dag, run_dag_module):
    params = run_dag_module.validate_conf(dag, {})
    assert params["variants"] == list(VARIANT_NAMES)
    assert params["tolerance"] == 0.005 and params["alpha"] == 0.05
    assert params["fail_on_regression"] is False and params["force_promote"] is False
    assert params["class_gate"] is True and params["class_tolerance"] == 0.03  # the per-class gate is on
    assert params["force"] is False  # an unchanged run is skipped unless forced
    assert params["profile"] == "quick"   # the form shows the profile a run will use
    for name in ("dataset", "epochs", "image_size", "batch_size", "limit_per_class", "weights", "seed",
                 "mixed_precision", "data_parallel", "eval_batch_size", "robustness_images"):
        assert params[name] is None, name  # = the profile's, resolved at run time
    good = {"profile": "smoke", "dataset": "synthetic", "variants": ["cnn", "resnet50_v4"], "epochs": 2,
            "image_size": 64, "batch_size": 16, "limit_per_class": 50, "weights": "none", "seed": 1,
            "tolerance": 0.05, "alpha": 0.01, "fail_on_regression": True, "force_promote": False, "force": True,
            "mixed_precision": "off", "data_parallel": False, "class_gate": False, "class_tolerance": 0.05,
            "eval_batch_size": 40, "robustness_images": 60}
    assert run_dag_module.validate_conf(dag, good) == good


@pytest.mark.parametrize("conf, match", [
    ({"profile": "huge"}, "profile"),
    ({"variants": []}, "variants"),
    ({"variants": ["vgg"]}, "variants"),
    ({"variants": ["cnn", "cnn"]}, "variants"),
    ({"variants": "cnn"}, "variants"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": "3"}, "epochs"),
    ({"epochs": 2.5}, "epochs"),
    ({"image_size": 4}, "image_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"limit_per_class": 1}, "limit_per_class"),
    ({"weights": ""}, "weights"),
    ({"dataset": ""}, "dataset"),
    ({"seed": -1}, "seed"),
    ({"tolerance": 1.5}, "tolerance"),
    ({"tolerance": -0.1}, "tolerance"),
    ({"alpha": 0}, "alpha"),
    ({"alpha": 0.5}, "alpha"),
    ({"fail_on_regression": "yes"}, "fail_on_regression"),
    ({"force_promote": 1}, "force_promote"),
    ({"mixed_precision": "fast"}, "mixed_precision"),
    ({"data_parallel": "yes"}, "data_parallel"),
    ({"epoch": 3}, "unknown run parameter"),
])
def test_params_schema_refuses_bad_values(dag, run_dag_module, conf, match):
    with pytest.raises(ValueError, match=match) as exc:
        run_dag_module.validate_conf(dag, conf)
    assert "\n" not in str(exc.value)  # one line, naming the param


@pytest.mark.slow
def test_run_dag_refuses_bad_conf_before_running(tmp_path):
    proc = subprocess.run([*RUN_DAG, "--skip-setup", "--conf", '{"epochs": 0}'],
                          capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT,
                          env={**os.environ, "TL_AIRFLOW_HOME": str(tmp_path / "airflow")})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: Invalid input for param epochs: 0 is less than the minimum of 1"


# ------------------------------------------------------------------------------- tasks on their own

@pytest.mark.slow
def test_each_task_callable_runs_on_its_own(dag, run_dag_module, tl_home):
    run_id = "manual__2026-01-05T00:00:00+00:00"
    params = run_dag_module.validate_conf(dag, {"profile": "smoke", "variants": ["cnn"]})
    dag_run = SimpleNamespace(logical_date=None, run_after=datetime(2026, 1, 5, tzinfo=UTC), run_type="manual")

    jobs = dag.get_task("prepare_data").python_callable(params=params, run_id=run_id, dag_run=dag_run)
    assert [job["variant"] for job in jobs] == ["cnn"]
    trained = dag.get_task("train").python_callable(**jobs[0], run_id=run_id)
    assert trained["variant"] == "cnn" and Path(trained["model_path"]).is_file()
    evaluated = dag.get_task("evaluate").python_callable(trained=trained, run_id=run_id)
    assert 0 <= evaluated["accuracy"] <= 1
    emitted = []
    outlet_events = {champion_alias(): SimpleNamespace(add=lambda asset, extra: emitted.append((asset.name, extra)))}
    gate = dag.get_task("gate").python_callable(params=params, run_id=run_id, outlet_events=outlet_events)
    assert gate["decisions"]["cnn"]["decision"] == "bootstrap"
    assert [name for name, _ in emitted] == ["tl_champion_cnn"]  # one asset event, for the promoted variant
    assert emitted[0][1]["run_id"] == run_id and Path(emitted[0][1]["published"]).is_dir()
    report = dag.get_task("build_report").python_callable(run_id=run_id)
    assert Path(report).is_file() and report.startswith(str(tl_home))
    assert dag.get_task("finalize").python_callable(run_id=run_id)["state"] == "success"
    # XCom carries paths and small JSON dicts only
    for value in (jobs, trained, evaluated, gate, report):
        assert len(json.dumps(value)) < 20_000
    with connect() as store:
        run = store.get_run(run_id)
    assert run["dag_id"] == "cifar10_retraining" and run["logical_date"].startswith("2026-01-05")
    assert run["state"] == "success" and run["results"]["cnn"]["gate"]["decision"] == "bootstrap"


# ------------------------------------------------------------------------------------ dag.test() runs

@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory, airflow_home_with_db) -> Path:
    """An Airflow home for the dag.test() runs of this module: a copy of the session's migrated database (gpu pool)."""
    return airflow_home_with_db(tmp_path_factory.mktemp("airflow_home"))


def _dag_test(airflow_home: Path, conf: dict, **env) -> tuple[subprocess.CompletedProcess, str]:
    [result] = _dag_tests(airflow_home, [conf], **env)
    return result


# Runs several dag.test() runs, one after another, in one process (as `make run` runs one): Airflow, Keras and the
# in-process execution API start once. Each run's output ends with a marker line on stdout and stderr.
_RUNS_SCRIPT = """
import json, sys, traceback
from tl_tasks.airflow_local import run_dag
for conf in json.loads(sys.argv[1]):
    try:
        rc = run_dag.run_dag(conf, setup=False)
    except BaseException:
        traceback.print_exc()
        rc = 3
    for stream in (sys.stdout, sys.stderr):
        print(f"\\n=== dag.test exit {rc}", file=stream, flush=True)
"""
_RUN_END = re.compile(r"^=== dag.test exit (-?\d+)\n", re.M)


def _dag_tests(airflow_home: Path, confs: list[dict], *, base_env: dict | None = None,
               **env) -> list[tuple[subprocess.CompletedProcess, str]]:
    """dag.test() of each conf in `confs`, in order, in one subprocess whose environment is `base_env` (default
    this process's) plus `env`: (output, run id) per run, where output's returncode, stdout and stderr are that
    run's."""
    proc = subprocess.run([sys.executable, "-c", _RUNS_SCRIPT, json.dumps(confs)],
                          capture_output=True, text=True, timeout=1500, cwd=PROJECT_ROOT,
                          env={**(os.environ if base_env is None else base_env),
                               "TL_AIRFLOW_HOME": str(airflow_home), **env})
    outs, errs = _RUN_END.split(proc.stdout), _RUN_END.split(proc.stderr)
    ended = len(outs) // 2
    assert proc.returncode == 0 and ended == len(confs) == len(errs) // 2, \
        f"rc={proc.returncode}, {ended} of {len(confs)} runs ended\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    results = []
    for i in range(len(confs)):
        run = subprocess.CompletedProcess(proc.args, int(outs[2 * i + 1]), outs[2 * i], errs[2 * i])
        found = re.search(r"^DAG run (\S+): (\w+)", run.stdout, re.M)
        assert found, f"run {i}: rc={run.returncode}\n{run.stdout[-5000:]}\n{run.stderr[-5000:]}"
        results.append((run, found.group(1)))
    return results


def _report_line(proc) -> Path:
    """The report's path, which run_dag prints after the task states. Log lines of the OpenLineage provider's
    background thread may still follow it (emitted after the run), so it need not be the very last line."""
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("report: ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    return Path(lines[0].removeprefix("report: "))


SKIP_CONF = {"profile": "smoke", "variants": ["cnn"], "limit_per_class": 10}


@pytest.fixture(scope="module")
def smoke_runs(airflow_home, tmp_path_factory) -> tuple[Path, list[tuple[subprocess.CompletedProcess, str]]]:
    """(TL_HOME, runs) of four dag.test() runs in one process, under a TL_HOME of their own: all five variants on
    the smoke profile, then a CNN run three times: new, unchanged (skipped), unchanged with force (retrained)."""
    home = tmp_path_factory.mktemp("smoke_runs") / "tl_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not (k.startswith("TL_") and not k.startswith("TL_TEST_"))}
    env.update(TL_HOME=str(home), TL_DATA_ROOTS=str(tmp_path_factory.getbasetemp()))
    confs = [{"profile": "smoke"}, SKIP_CONF, SKIP_CONF, {**SKIP_CONF, "force": True}]
    return home, _dag_tests(airflow_home, confs, base_env=env)


@pytest.mark.airflow
def test_dag_test_end_to_end_smoke(smoke_runs, airflow_home, monkeypatch):
    tl_home, [(proc, run_id), *_] = smoke_runs
    monkeypatch.setenv("TL_HOME", str(tl_home))
    assert proc.returncode == 0, proc.stdout[-8000:]
    report = _report_line(proc)
    assert report.is_file() and report.is_relative_to(tl_home)
    with connect() as store:
        run = store.get_run(run_id)
    assert run["state"] == "success" and run["dag_id"] == "cifar10_retraining" and run["report_path"] == str(report)
    assert sorted(run["results"]) == sorted(VARIANT_NAMES)  # one row per variant
    for variant, result in run["results"].items():
        assert result["state"] == "success" and result["accuracy"] is not None, variant
        assert result["gate"]["decision"] in ("bootstrap", "promoted", "kept", "regressed"), variant
    for variant in VARIANT_NAMES:
        assert f"train[{variant}]: success" in proc.stdout and f"evaluate[{variant}]: success" in proc.stdout
    # every variant bootstrapped, so each champion asset got exactly one event, with the published folder
    events = [(name, extra) for name, extra in _asset_events(airflow_home) if extra.get("run_id") == run_id]
    assert sorted(name for name, _ in events) == sorted(f"tl_champion_{v}" for v in VARIANT_NAMES)
    for _name, extra in events:
        assert extra["run_id"] == run_id and Path(extra["published"]).is_relative_to(tl_home / "champions"), extra
    # task logs: one line per epoch, no progress bars, no TensorFlow start-up chatter
    log = proc.stdout + proc.stderr
    assert len(re.findall(r"^\d+/\d+ - \d+s - .*val_accuracy", log, re.M)) == len(VARIANT_NAMES)
    for noise in ("━━", "oneDNN custom operations", "absl::InitializeLog", "cuInit", "cudart_stub"):
        assert noise not in log, noise


def _asset_events(airflow_home: Path) -> list[tuple[str, dict]]:
    """(asset name, extra) of every asset event in the dag.test() runs' Airflow database."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{airflow_home / 'airflow.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT a.name, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                                        "ORDER BY e.id")).all()
    finally:
        engine.dispose()
    return [(name, json.loads(extra) if isinstance(extra, str) else extra) for name, extra in rows]


@pytest.mark.airflow
def test_dag_test_with_a_failing_variant_notifies_and_feeds_lineage_and_mlflow(airflow_home, tl_home, webhook_server,
                                                                                mlflow_server):
    # One run, cnn + resnet50_v2, where only resnet50_v2 meets a real fault: its weights file does not exist (the
    # CNN uses no weights). It feeds the failure notification (webhook), OpenLineage (the provider's HTTP
    # transport, to the same server) and MLflow (the report task's hook).
    url, received = webhook_server
    before = len(_asset_events(airflow_home))
    conf = {"profile": "smoke", "variants": ["cnn", "resnet50_v2"], "weights": str(tl_home / "missing-weights.h5")}
    proc, run_id = _dag_test(airflow_home, conf, TL_NOTIFY_WEBHOOK_URL=url,
                             OPENLINEAGE_URL=url.split("/hooks/")[0], OPENLINEAGE_NAMESPACE="tl-test",
                             TL_MLFLOW_TRACKING_URI=mlflow_server)
    posts = [payload for path, _, payload in received if path != "/api/v1/lineage"]
    # the DAG's failure callback (RetrainingNotifier) sent exactly one message for the run
    assert [(p["run_id"], p["state"], [f["variant"] for f in p["failed"]]) for p in posts] == [
        (run_id, "failed", ["resnet50_v2"])], proc.stdout[-4000:]
    assert proc.returncode == 1, proc.stdout[-8000:]
    for line in ("train[cnn]: success", "train[resnet50_v2]: failed", "evaluate[cnn]: success", "gate: success",
                 "build_report: success", "finalize: failed", f"DAG run {run_id}: failed"):
        assert line in proc.stdout, line
    assert "evaluate[resnet50_v2]" not in proc.stdout  # only variants whose training succeeded are evaluated
    report = _report_line(proc)
    html = report.read_text()
    assert "resnet50_v2" in html and "missing-weights.h5" in html
    with connect() as store:
        run = store.get_run(run_id)
    assert run["state"] == "failed" and "resnet50_v2 failed in train" in run["error"]
    cnn, v2 = run["results"]["cnn"], run["results"]["resnet50_v2"]
    assert cnn["state"] == "success" and cnn["accuracy"] is not None and cnn["gate"]["decision"] == "bootstrap"
    assert v2["state"] == "failed" and v2["stage"] == "train" and v2["gate"]["decision"] == "failed"
    new_events = _asset_events(airflow_home)[before:]  # a failed variant is not promoted: no event for it
    assert [name for name, _ in new_events] == ["tl_champion_cnn"]

    # OpenLineage: a START for every task, a FAIL for train and finalize, COMPLETE for the gate
    events = [payload for path, _, payload in received if path == "/api/v1/lineage"]
    tasks = [e for e in events if e["job"]["namespace"] == "tl-test" and "." in e["job"]["name"]]  # <dag>.<task>
    by_job = {}
    for e in tasks:
        by_job.setdefault((e["job"]["name"].split(".", 1)[1], e["eventType"]), []).append(e)
    for task_id in ("prepare_data", "train", "evaluate", "gate", "build_report", "finalize"):
        assert (task_id, "START") in by_job, sorted(by_job)
    assert ("train", "FAIL") in by_job and ("gate", "COMPLETE") in by_job and ("finalize", "FAIL") in by_job

    # inputs: the data source, with the lineage (test-set fingerprint) and the data fingerprint
    source = by_job[("prepare_data", "COMPLETE")][0]["inputs"][0]
    assert source["name"] == run["data_source"]
    assert source["facets"]["tl_lineage"]["testSetFingerprint"] == run["lineage"]
    assert source["facets"]["tl_dataFingerprint"]["fingerprint"] == run["data_fingerprint"]
    assert by_job[("train", "FAIL")][0]["inputs"][0]["facets"]["tl_lineage"]["testSetFingerprint"] == run["lineage"]
    # outputs: the gate's published champion, with the model's sha256, the accuracy and interval, the decision
    [champion] = by_job[("gate", "COMPLETE")][0]["outputs"]
    assert champion["name"] == cnn["gate"]["published"] and Path(champion["name"]).is_dir()
    facets = champion["facets"]
    assert facets["tl_model"]["sha256"] == cnn["model_sha256"] == facets["version"]["datasetVersion"]
    assert facets["tl_evaluation"]["testAccuracy"] == cnn["accuracy"]
    assert facets["tl_evaluation"]["accuracyInterval"] == cnn["gate"]["accuracy_ci"]
    assert facets["tl_gate"]["decision"] == "bootstrap"
    # run facets: the settings (recipe) and the code version, on the events after prepare_data wrote them
    settings = by_job[("gate", "START")][0]["run"]["facets"]["tl_settings"]
    assert settings["profile"] == "smoke" and settings["settings"]["variants"] == ["cnn", "resnet50_v2"]
    code = by_job[("evaluate", "COMPLETE")][0]["run"]["facets"]["tl_codeVersion"]["codeVersion"]
    assert code == run["versions"]["code"]

    # MLflow: one run per variant, tagged with the Airflow run; the promoted cnn registered under its lineage's alias
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("cifar10_retraining")
    logged = {r.data.tags["tl.variant"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(logged) == ["cnn", "resnet50_v2"]
    assert logged["cnn"].data.tags["airflow.run_id"] == run_id and logged["resnet50_v2"].info.status == "FAILED"
    assert logged["cnn"].data.metrics["test_accuracy"] == pytest.approx(cnn["accuracy"])
    version = client.get_model_version_by_alias("cifar10-cnn", f"champion-{run['lineage'][:12]}")
    assert version.run_id == logged["cnn"].info.run_id and version.tags["tl.lineage"] == run["lineage"]
    assert "champion" not in client.get_registered_model("cifar10-cnn").aliases  # a smoke run never deploys


@pytest.mark.airflow
def test_dag_test_skips_an_unchanged_run_and_force_retrains(smoke_runs, monkeypatch):
    tl_home, [_, (first, first_id), (second, second_id), (forced, _)] = smoke_runs
    monkeypatch.setenv("TL_HOME", str(tl_home))
    assert first.returncode == 0 and "train[cnn]: success" in first.stdout, first.stdout[-8000:]
    assert second.returncode == 0, second.stdout[-8000:]
    assert f"DAG run {second_id}: success" in second.stdout and "train[cnn]: success" not in second.stdout
    with connect() as store:
        run = store.get_run(second_id)
    assert run["state"] == "skipped" and run["results"] == {}
    assert run["params"]["skipped"] == {"reason": "unchanged", "same_as": first_id}
    assert "Skipped: unchanged" in _report_line(second).read_text()
    assert forced.returncode == 0 and "train[cnn]: success" in forced.stdout, forced.stdout[-8000:]
