"""Stage entry points (tl_tasks.pipeline): settings from params, each stage's files and database rows,
reruns replacing rather than duplicating, failures recorded, the gate over stored results, the run's verdict.

Training runs the small CNN only (seconds); gate/report tests use results written straight to the store.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tl_tasks import config, pipeline, schema
from tl_tasks.files import write_json_atomic
from tl_tasks.gating.champions import ChampionError
from tl_tasks.gating.decision import RegressionError
from tl_tasks.layout import RunLayout
from tl_tasks.store import connect

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def _run(run_id):
    with connect() as store:
        return store.get_run(run_id)


TEST_IMAGES = 1000


def _fake_run(run_id: str, accuracies: dict, *, when: datetime, errors: dict | None = None,
              source: str = "synthetic", lineage: str = "L" * 64) -> dict:
    """A prepared run whose variants were evaluated with `accuracies` (None = failed in train) - no training.

    The test set has TEST_IMAGES images of class 0; a model of accuracy a gets the first a * TEST_IMAGES right,
    so two models' per-image predictions are nested (the better one fixes images, never breaks any).
    """
    import numpy as np

    from tl_tasks.training.predictions import write_predictions

    settings = schema.settings_from_params({"profile": "smoke", "variants": list(accuracies)})
    write_json_atomic(RunLayout(run_id).settings_file, settings.to_dict())
    data = RunLayout(run_id).data_dir
    data.mkdir(parents=True, exist_ok=True)
    np.save(data / "y_test.npy", np.zeros(TEST_IMAGES, dtype=np.int64))
    with connect() as store:
        store.upsert_run(run_id, logical_date=when, started_at=when, state="running", profile="smoke",
                         params=settings.to_dict(), data_fingerprint="f" * 64, class_names=["a", "b"],
                         lineage=lineage, data_source=source,
                         data_summary={"source": source, "class_names": ["a", "b"], "counts": {"test": TEST_IMAGES}})
        for variant, accuracy in accuracies.items():
            if accuracy is None:
                store.record_failure(run_id, variant, "train", (errors or {}).get(variant, "RuntimeError: boom"))
            else:
                model_dir = RunLayout(run_id).model_dir(variant)
                model_dir.mkdir(parents=True, exist_ok=True)
                (model_dir / "model.keras").write_bytes(f"model {run_id} {variant}".encode())
                predicted = (np.arange(TEST_IMAGES) >= round(accuracy * TEST_IMAGES)).astype(np.int64)
                sha = write_predictions(model_dir / "predictions.npy", predicted)
                store.record_training(run_id, variant, {"variant": variant, "state": "success", "epochs_run": 1,
                                                        "model_path": str(model_dir / "model.keras"),
                                                        "history": [{"epoch": 1, "loss": 1.0, "accuracy": accuracy}]})
                store.record_evaluation(run_id, variant, {"variant": variant, "accuracy": accuracy, "loss": 1.0,
                                                          "class_names": ["a", "b"], "test_images": TEST_IMAGES,
                                                          "predictions_path": str(model_dir / "predictions.npy"),
                                                          "predictions_sha256": sha,
                                                          "confusion_matrix": [[1, 0], [0, 1]]})
    return settings.to_dict()


# ----------------------------------------------------------------------------------------- settings

def test_settings_from_params_profile_defaults_and_overrides(monkeypatch):
    s = schema.settings_from_params({"profile": "smoke"})
    assert (s.profile, s.dataset, s.epochs, s.limit_per_class) == ("smoke", "synthetic", {"cnn": 1, "resnet50": 1}, 40)
    # None means "the profile's"; values override; limit 0 means every image
    s = schema.settings_from_params({"profile": "smoke", "dataset": None, "epochs": 3, "variants": ["cnn"],
                                       "limit_per_class": 0, "seed": 7, "tolerance": 0.1})
    assert s.epochs == {"cnn": 3, "resnet50": 3} and s.variants == ("cnn",) and s.limit_per_class is None and s.seed == 7
    # no profile: the default (quick); the environment sets nothing, and a removed variable stops the run
    assert schema.settings_from_params({"epochs": 2}).profile == "quick"
    monkeypatch.setenv("TL_EPOCHS", "5")
    with pytest.raises(ValueError, match=r"TL_EPOCHS set .*'Epochs' field or --epochs"):
        schema.settings_from_params({"profile": "smoke"})


@pytest.mark.parametrize("params, match", [
    ({"profile": "huge"}, "profile='huge'"),
    ({"epochs": 0}, "epochs=0"),
    ({"variants": []}, r"variants=\[\] must be a non-empty list"),
    ({"variants": ["cnn", "vgg"]}, "'vgg' not known"),
    ({"epoch": 3}, r"unknown parameter\(s\) \['epoch'\]"),
    ({"limit_per_class": 1}, "limit_per_class=1"),
])
def test_settings_from_params_refuses_bad_values(params, match):
    with pytest.raises(ValueError, match=match):
        schema.settings_from_params({"profile": "smoke", **params})


# ----------------------------------------------------------------------------------------- prepare

def test_prepare_stage_writes_data_and_run_row_and_rerun_replaces():
    settings = schema.settings_from_params({"profile": "smoke", "variants": ["cnn"], "limit_per_class": 12})
    out = pipeline.prepare_stage("r1", settings.to_dict(), dag_id="d", logical_date=T0)
    data_dir = RunLayout("r1").data_dir
    assert out["data_dir"] == str(data_dir) and out["counts"]["train"] > 0 and len(out["fingerprint"]) == 64
    assert (data_dir / "x_train.npy").is_file() and (data_dir / "meta.json").is_file()
    assert json.loads((RunLayout("r1").folder / "settings.json").read_text())["variants"] == ["cnn"]
    run = _run("r1")
    assert run["state"] == "running" and run["dag_id"] == "d" and run["profile"] == "smoke"
    assert run["data_fingerprint"] == out["fingerprint"] and run["class_names"] == out["class_names"]
    assert run["logical_date"].startswith("2026-01-05") and run["versions"]["keras"] and run["versions"]["python"]
    again = pipeline.prepare_stage("r1", settings.to_dict(), dag_id="d", logical_date=T0)
    assert again["fingerprint"] == out["fingerprint"]
    with connect() as store:
        assert [r["run_id"] for r in store.recent_runs(10)] == ["r1"]


def test_prepare_stage_failure_is_recorded(tmp_path):
    settings = schema.settings_from_params({"profile": "smoke", "dataset": f"folder:{tmp_path / 'missing'}"})
    with pytest.raises((FileNotFoundError, ValueError)):
        pipeline.prepare_stage("bad", settings.to_dict())
    run = _run("bad")
    assert run["state"] == "failed" and run["error"].startswith("prepare_data failed") and run["ended_at"]


def test_prepare_jobs_one_job_per_variant_and_invalid_params_recorded():
    jobs = pipeline.prepare_jobs("r2", {"profile": "smoke", "variants": ["cnn", "resnet50_v1"], "tolerance": 0.05,
                                        "fail_on_regression": False, "force_promote": False, "class_gate": True,
                                            "class_tolerance": 0.03}, dag_id="d")
    assert [j["variant"] for j in jobs] == ["cnn", "resnet50_v1"]
    assert all(j["settings"]["profile"] == "smoke" for j in jobs)
    with pytest.raises(ValueError, match="epochs=0"):
        pipeline.prepare_jobs("r3", {"profile": "smoke", "epochs": 0}, dag_id="d")
    run = _run("r3")
    assert run["state"] == "failed" and "invalid parameters" in run["error"]


# ------------------------------------------------------------------------------ train and evaluate

@pytest.mark.slow
def test_train_and_evaluate_record_results_and_reruns_replace_rows():
    settings = schema.settings_from_params({"profile": "smoke", "variants": ["cnn"]}).to_dict()
    pipeline.prepare_stage("t1", settings)
    summary = pipeline.train_stage("t1", "cnn", settings, verbose=0)
    assert summary["variant"] == "cnn" and summary["state"] == "success" and summary["epochs_run"] == 1
    assert (RunLayout("t1").model_dir("cnn") / "model.keras").is_file()
    evaluation = pipeline.evaluate_stage("t1", "cnn")  # settings from the run's settings.json
    assert 0.0 <= evaluation["accuracy"] <= 1.0 and evaluation["variant"] == "cnn"
    assert (RunLayout("t1").model_dir("cnn") / "evaluation.json").is_file()
    # rerunning both replaces the rows
    pipeline.train_stage("t1", "cnn", settings, verbose=0)
    pipeline.evaluate_stage("t1", "cnn", settings)
    run = _run("t1")
    assert list(run["results"]) == ["cnn"]
    result = run["results"]["cnn"]
    assert result["state"] == "success" and result["accuracy"] == pytest.approx(evaluation["accuracy"])
    assert len(result["history"]) == 1 and result["per_class"] and result["confusion_matrix"]
    assert run["device"]


def test_a_training_failure_is_recorded_and_raised():
    settings = schema.settings_from_params({"profile": "smoke", "variants": ["cnn"]}).to_dict()
    pipeline.prepare_stage("f1", settings)
    blocker = RunLayout("f1").model_dir("cnn")  # a real fault: a file where the model's folder must go
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    with pytest.raises(FileExistsError):
        pipeline.train_stage("f1", "cnn", settings)
    result = _run("f1")["results"]["cnn"]
    assert result["state"] == "failed" and result["stage"] == "train" and "FileExistsError" in result["error"]


def test_evaluate_without_a_model_records_failure():
    settings = schema.settings_from_params({"profile": "smoke", "variants": ["resnet50_v1"]}).to_dict()
    pipeline.prepare_stage("e1", settings)
    with pytest.raises(FileNotFoundError, match=r"model\.keras is missing: train resnet50_v1 first"):
        pipeline.evaluate_stage("e1", "resnet50_v1", settings)
    result = _run("e1")["results"]["resnet50_v1"]
    assert result["state"] == "failed" and result["stage"] == "evaluate"


def test_stages_need_a_prepared_run():
    with pytest.raises(FileNotFoundError, match="never prepared"):
        pipeline.train_stage("nope", "cnn")
    with pytest.raises(ValueError, match="variant='vgg'"):
        pipeline.train_stage("nope", "vgg")


# ---------------------------------------------------------------------------------------------- gate

def _decisions(run_id):
    return {v: r["gate"]["decision"] for v, r in _run(run_id)["results"].items()}


def test_gate_bootstrap_then_promote_keep_regress():
    _fake_run("g1", {"cnn": 0.50, "resnet50_v1": 0.40, "resnet50_v2": 0.30}, when=T0)
    out = pipeline.gate_stage("g1")
    assert out["summary"] == {"bootstrap": ["cnn", "resnet50_v1", "resnet50_v2"]}
    assert _decisions("g1") == {"cnn": "bootstrap", "resnet50_v1": "bootstrap", "resnet50_v2": "bootstrap"}

    _fake_run("g2", {"cnn": 0.55, "resnet50_v1": 0.39, "resnet50_v2": 0.20}, when=T0 + timedelta(days=7))
    out = pipeline.gate_stage("g2", tolerance=0.02)
    assert _decisions("g2") == {"cnn": "promoted", "resnet50_v1": "kept", "resnet50_v2": "regressed"}
    d = out["decisions"]["resnet50_v2"]
    assert d["champion_run_id"] == "g1" and d["champion_accuracy"] == 0.30 and d["delta"] == pytest.approx(-0.10)
    stored = _run("g2")["results"]["resnet50_v2"]["gate"]
    assert stored["decision"] == "regressed" and stored["tolerance"] == 0.02 and stored["reason"]
    assert _run("g2")["params"]["gate"] == {"tolerance": 0.02, "alpha": 0.05, "fail_on_regression": False,
                                            "force_promote": False, "class_gate": True,
                                            "class_tolerance": 0.03}
    assert d["p_value"] < 1e-6 and d["delta_ci"][1] < -0.02 and "worse than the champion" in d["reason"]
    kept = out["decisions"]["resnet50_v1"]  # 10 images broken, none fixed: significant, within 2 points
    assert kept["broken"] == 10 and kept["fixed"] == 0 and kept["p_value"] < 0.05 and "tolerance" in kept["reason"]

    # champions: cnn -> g2 (promoted), v1 stays g1 (kept is not a promotion)
    _fake_run("g3", {"cnn": 0.50, "resnet50_v1": 0.41, "resnet50_v2": 0.31}, when=T0 + timedelta(days=14))
    out = pipeline.gate_stage("g3")
    assert out["decisions"]["cnn"]["champion_run_id"] == "g2" and out["decisions"]["cnn"]["decision"] == "regressed"
    assert out["decisions"]["resnet50_v1"]["champion_run_id"] == "g1"
    assert out["decisions"]["resnet50_v1"]["decision"] == "promoted"


def test_gate_fail_on_regression_records_then_raises_and_force_promote_overrides():
    _fake_run("h1", {"cnn": 0.60}, when=T0)
    pipeline.gate_stage("h1")
    _fake_run("h2", {"cnn": 0.40}, when=T0 + timedelta(days=1))
    with pytest.raises(RegressionError, match="cnn"):
        pipeline.gate_stage("h2", tolerance=0.02, fail_on_regression=True)
    assert _decisions("h2") == {"cnn": "regressed"}
    # rerun with force_promote replaces the decision (one gate row per result)
    out = pipeline.gate_stage("h2", force_promote=True)
    gate = _run("h2")["results"]["cnn"]["gate"]
    assert out["decisions"]["cnn"]["forced"] and gate["decision"] == "promoted" and gate["forced"] is True
    with connect() as store:
        assert store.champion("cnn")["run_id"] == "h2"


def test_gate_compares_only_within_a_lineage():
    """The motivating scenario: a 15% model on other data must not become the champion of the good lineage."""
    _fake_run("k1", {"cnn": 0.67}, when=T0, source="folder:shared/cifar.tar.gz", lineage="A" * 64)
    assert pipeline.gate_stage("k1")["decisions"]["cnn"]["decision"] == "bootstrap"
    # the same archive spelled with another path: the same test images, so the same lineage
    _fake_run("k2", {"cnn": 0.15}, when=T0 + timedelta(days=1), source="folder:/abs/cifar.tar.gz", lineage="A" * 64)
    d = pipeline.gate_stage("k2")["decisions"]["cnn"]
    assert d["decision"] == "regressed" and d["champion_run_id"] == "k1" and d["p_value"] < 1e-6
    # other data: a lineage of its own, which bootstraps without touching lineage A
    _fake_run("k3", {"cnn": 0.90}, when=T0 + timedelta(days=2), source="synthetic", lineage="B" * 64)
    d = pipeline.gate_stage("k3")["decisions"]["cnn"]
    assert d["decision"] == "bootstrap" and d["champion_run_id"] is None and d["lineage"] == "B" * 64
    _fake_run("k4", {"cnn": 0.66}, when=T0 + timedelta(days=3), lineage="A" * 64)
    d = pipeline.gate_stage("k4")["decisions"]["cnn"]
    assert d["champion_run_id"] == "k1" and d["decision"] == "kept" and d["p_value"] < 0.05
    with connect() as store:
        assert store.champion("cnn", lineage="A" * 64)["run_id"] == "k1"
        assert store.champion("cnn", lineage="B" * 64)["run_id"] == "k3"


def test_gate_without_the_champions_predictions_keeps_it_and_says_why():
    _fake_run("p1", {"cnn": 0.60}, when=T0)
    pipeline.gate_stage("p1")
    (RunLayout("p1").model_dir("cnn") / "predictions.npy").write_bytes(b"altered")
    published = next((config.tl_home() / "champions" / "cnn").glob("*/versions/*/predictions.npy"))
    published.unlink()  # and no published copy either
    _fake_run("p2", {"cnn": 0.90}, when=T0 + timedelta(days=1))
    d = pipeline.gate_stage("p2")["decisions"]["cnn"]
    assert d["decision"] == "kept" and "sha256" in d["reason"] and "p1" in d["reason"]


def test_gate_uses_the_published_copy_when_the_run_folder_is_gone():
    import shutil

    _fake_run("q1", {"cnn": 0.60}, when=T0)
    pipeline.gate_stage("q1")
    shutil.rmtree(RunLayout("q1").model_dir("cnn"))  # e.g. removed by gc; the champion folder keeps a copy
    _fake_run("q2", {"cnn": 0.70}, when=T0 + timedelta(days=1))
    d = pipeline.gate_stage("q2")["decisions"]["cnn"]
    assert d["decision"] == "promoted" and d["fixed"] == 100 and d["broken"] == 0


def test_gate_records_failed_and_missing_variants():
    settings = _fake_run("m1", {"cnn": 0.5, "resnet50_v1": None}, when=T0)
    settings["variants"] = ["cnn", "resnet50_v1", "resnet50_v2"]  # v2's train task was killed: no row at all
    out = pipeline.gate_stage("m1", settings)
    assert out["summary"] == {"bootstrap": ["cnn"], "failed": ["resnet50_v1", "resnet50_v2"]}
    results = _run("m1")["results"]
    assert "boom" in results["resnet50_v1"]["gate"]["reason"]
    assert results["resnet50_v2"]["state"] == "failed" and "killed" in results["resnet50_v2"]["error"]


def test_gate_without_prepared_data_fails_clearly():
    with pytest.raises(FileNotFoundError, match="never prepared"):
        pipeline.gate_stage("ghost")
    settings = schema.settings_from_params({"profile": "smoke"}).to_dict()
    with pytest.raises(ValueError, match="not in the metrics database"):
        pipeline.gate_stage("ghost", settings)
    with pytest.raises((FileNotFoundError, ValueError)):  # prepare fails: bad data source
        pipeline.prepare_stage("ghost", {**settings, "dataset": "folder:/no/such/place"})
    with pytest.raises(pipeline.RunFailed, match="no prepared data"):
        pipeline.gate_stage("ghost", settings)


# ------------------------------------------------------------------------------- report and verdict

def test_report_and_finish_success():
    _fake_run("s1", {"cnn": 0.5}, when=T0)
    pipeline.gate_stage("s1")
    path = pipeline.report_stage("s1")
    assert path == str(RunLayout("s1").report_index) and "cnn" in Path(path).read_text()
    run = _run("s1")
    assert run["state"] == "success" and run["report_path"] == path and run["ended_at"] and run["error"] is None
    assert pipeline.finish_stage("s1") == {"run_id": "s1", "state": "success", "report_path": path}


def test_report_and_finish_with_a_failed_variant():
    _fake_run("x1", {"cnn": 0.5, "resnet50_v2": None}, when=T0, errors={"resnet50_v2": "RuntimeError: forced"})
    pipeline.gate_stage("x1")
    path = pipeline.report_stage("x1")
    assert "resnet50_v2" in Path(path).read_text()
    run = _run("x1")
    assert run["state"] == "failed" and "resnet50_v2 failed in train: RuntimeError: forced" in run["error"]
    with pytest.raises(pipeline.RunFailed, match="resnet50_v2"):
        pipeline.finish_stage("x1")


def test_fatal_regression_fails_the_run_and_missing_report_too():
    _fake_run("y1", {"cnn": 0.9}, when=T0)
    pipeline.gate_stage("y1")
    _fake_run("y2", {"cnn": 0.1}, when=T0 + timedelta(days=1))
    with pytest.raises(RegressionError):
        pipeline.gate_stage("y2", fail_on_regression=True)
    pipeline.report_stage("y2")
    assert _run("y2")["state"] == "failed"
    with pytest.raises(pipeline.RunFailed, match="regressed"):
        pipeline.finish_stage("y2")
    # a run whose gate passed but whose report was never built does not count as a success
    _fake_run("y3", {"cnn": 0.9}, when=T0 + timedelta(days=2))
    pipeline.gate_stage("y3")
    with pytest.raises(pipeline.RunFailed, match="report was not built"):
        pipeline.finish_stage("y3")
    assert _run("y3")["state"] == "failed"


# ---------------------------------------------------------------------------------------- whole run

@pytest.mark.slow
def test_run_local_without_airflow_keeps_going_when_a_variant_fails():
    # a real fault that only the ResNet50 variants meet: their weights file does not exist
    missing = config.tl_home() / "missing-weights.h5"
    result = pipeline.run_local("cli-1", {"profile": "smoke", "variants": ["cnn", "resnet50_v2"],
                                          "weights": str(missing)})
    assert result["state"] == "failed" and result["failed"] == ["resnet50_v2"]
    assert result["decisions"]["cnn"]["decision"] == "bootstrap"
    assert result["decisions"]["resnet50_v2"]["decision"] == "failed"
    assert Path(result["report_path"]).read_text()
    run = _run("cli-1")
    assert run["state"] == "failed" and run["results"]["cnn"]["accuracy"] is not None
    assert "missing-weights.h5" in run["results"]["resnet50_v2"]["error"]
    assert run["report_path"] == result["report_path"]


def test_dag_gate_leaves_a_fatal_regression_to_finalize_so_promotions_are_still_announced():
    _fake_run("z1", {"cnn": 0.60, "resnet50_v1": 0.60}, when=T0)
    pipeline.gate_stage("z1")
    _fake_run("z2", {"cnn": 0.90, "resnet50_v1": 0.10}, when=T0 + timedelta(days=1))
    out = pipeline.gate_stage("z2", fail_on_regression=True, raise_on_regression=False)
    assert out["summary"] == {"promoted": ["cnn"], "regressed": ["resnet50_v1"]}
    assert list(out["promoted"]) == ["cnn"]  # what the DAG's gate task announces as asset events
    pipeline.report_stage("z2")
    with pytest.raises(pipeline.RunFailed, match="resnet50_v1 regressed"):
        pipeline.finish_stage("z2")


def test_a_model_that_cannot_be_published_is_kept_and_the_others_still_gated():
    _fake_run("u1", {"cnn": 0.60, "resnet50_v1": 0.50}, when=T0)
    (RunLayout("u1").model_dir("cnn") / "model.keras").unlink()  # e.g. a lost volume
    with pytest.raises(ChampionError, match="could not publish: cnn"):
        pipeline.gate_stage("u1")
    decisions = {v: r["gate"] for v, r in _run("u1")["results"].items()}
    assert decisions["cnn"]["decision"] == "kept" and "not published" in decisions["cnn"]["reason"]
    assert decisions["resnet50_v1"]["decision"] == "bootstrap" and decisions["resnet50_v1"]["published"]
