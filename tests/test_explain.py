"""What explains a change: per-class verdicts and the per-class gate, calibration (ECE, temperature), the
corruption suite, the model card, and how they are stored (seeded synthetic predictions; no training)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tl_tasks import layout, pipeline, schema
from tl_tasks.files import write_json_atomic
from tl_tasks.gating import model_card
from tl_tasks.gating.per_class import apply_class_gate, compare_classes, holm, worse_classes
from tl_tasks.layout import RunLayout
from tl_tasks.notify.channels import build_message
from tl_tasks.store import connect
from tl_tasks.training import calibration, robustness
from tl_tasks.training.predictions import write_predictions

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = 200
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _labels() -> np.ndarray:
    return np.repeat(np.arange(len(CLASSES)), PER_CLASS)


def _predictions(recalls: dict[int, float], default: float, seed: int) -> np.ndarray:
    """Per class, the first `recall * PER_CLASS` images right (nested across models), the rest a seeded wrong class."""
    y = _labels()
    rng = np.random.default_rng(seed)
    pred = (y + 1 + rng.integers(0, len(CLASSES) - 1, len(y))) % len(CLASSES)
    for c in range(len(CLASSES)):
        right = round(recalls.get(c, default) * PER_CLASS)
        pred[c * PER_CLASS: c * PER_CLASS + right] = c
    return pred


def _evaluated_run(run_id: str, predicted: np.ndarray, when: datetime) -> None:
    """A prepared, evaluated run of the CNN with the given per-image predictions (no training)."""
    settings = schema.settings_from_params({"profile": "smoke", "variants": ["cnn"]})
    layout = RunLayout(run_id)
    write_json_atomic(layout.settings_file, settings.to_dict())
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    y = _labels()
    np.save(layout.data_dir / "y_test.npy", y)
    model_dir = layout.model_dir("cnn")
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.keras").write_bytes(f"model {run_id}".encode())
    sha = write_predictions(model_dir / "predictions.npy", predicted)
    with connect() as store:
        store.upsert_run(run_id, logical_date=when, started_at=when, state="running", profile="smoke",
                         params=settings.to_dict(), data_fingerprint="f" * 64, class_names=CLASSES,
                         lineage="L" * 64, data_source="synthetic",
                         data_summary={"counts": {"test": len(y)}, "class_names": CLASSES})
        store.record_training(run_id, "cnn", {"state": "success", "epochs_run": 1, "weights": "none",
                                              "model_path": str(model_dir / "model.keras")})
        store.record_evaluation(run_id, "cnn", {
            "accuracy": float(np.mean(predicted == y)), "loss": 1.0, "class_names": CLASSES,
            "test_images": len(y), "predictions_path": str(model_dir / "predictions.npy"), "predictions_sha256": sha,
            "confidence_path": str(model_dir / "confidence.npy"),
            "per_class": [{"class_name": n, "recall": float(np.mean(predicted[y == c] == c)), "support": PER_CLASS}
                          for c, n in enumerate(CLASSES)],
            "calibration": {"ece": 0.08, "ece_scaled": 0.02, "temperature": 1.7, "val_images": 100,
                            "bins": [], "bins_scaled": []},
            "robustness": {"images": 100, "accuracy": 0.4, "clean_accuracy": 0.7,
                           "by_corruption": {"jpeg": [0.6, 0.5, 0.4], "contrast": [0.5, 0.3, 0.1]}}})


# --- per class ----------------------------------------------------------------------------------------------

def test_holm_adjustment_is_step_down_and_monotone():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([]) == []


def test_per_class_comparison_finds_the_broken_class():
    y = _labels()
    champion = _predictions({}, 0.70, seed=1)
    new = _predictions({3: 0.20}, 0.85, seed=2)
    rows = compare_classes(y, new, champion, CLASSES)
    cat = rows[3]
    assert cat["class_name"] == "cat" and cat["n"] == PER_CLASS and cat["broken"] == 100 and cat["fixed"] == 0
    assert cat["delta"] == pytest.approx(-0.50) and cat["delta_ci"][1] < -0.4 and cat["significant"]
    assert all(r["p_holm"] >= r["p_value"] for r in rows)
    assert [r["class_name"] for r in worse_classes(rows)] == ["cat"]
    assert worse_classes(rows, tolerance=0.6) == []  # the whole interval must clear the tolerance


def test_class_gate_blocks_only_unforced_promotions():
    rows = compare_classes(_labels(), _predictions({3: 0.2}, 0.85, 2), _predictions({}, 0.7, 1), CLASSES)
    promoted = {"decision": "promoted", "promoted": True, "reason": "significantly better"}
    blocked = apply_class_gate(promoted, rows)
    assert blocked["decision"] == "kept" and not blocked["promoted"] and "'cat'" in blocked["reason"]
    assert blocked["class_gate"]["worse"] == ["cat"] and blocked["per_class"] == rows
    assert apply_class_gate(promoted, rows, enabled=False)["decision"] == "promoted"
    assert apply_class_gate({**promoted, "forced": True}, rows)["decision"] == "promoted"
    assert apply_class_gate(promoted, None)["class_gate"]["checked"] is False


def test_a_challenger_that_wins_overall_but_breaks_one_class_is_not_promoted():
    _evaluated_run("pc1", _predictions({}, 0.70, seed=1), T0)
    assert pipeline.gate_stage("pc1")["decisions"]["cnn"]["decision"] == "bootstrap"
    _evaluated_run("pc2", _predictions({3: 0.20}, 0.85, seed=2), T0 + timedelta(days=1))
    d = pipeline.gate_stage("pc2")["decisions"]["cnn"]
    assert d["delta"] > 0.05 and d["p_value"] < 1e-6  # better overall, significantly
    assert d["decision"] == "kept" and "class 'cat'" in d["reason"] and "per-class" in d["reason"]
    with connect() as store:
        result = store.get_run("pc2")["results"]["cnn"]
        assert store.champion("cnn")["run_id"] == "pc1"
    changes = {c["class_name"]: c for c in result["class_changes"]}
    assert len(changes) == 10 and changes["cat"]["significant"] and changes["cat"]["delta"] == pytest.approx(-0.5)
    assert changes["dog"]["delta"] == pytest.approx(0.15) and changes["dog"]["delta_ci"][0] > 0
    assert result["gate"]["class_gate"]["worse"] == ["cat"]
    with connect() as store:
        message = build_message(store.get_run("pc2"))
        listed = store.recent_runs(limit=1)[0]["results"]["cnn"]
    assert "1 blocked by a class" in message["subject"] and "class 'cat'" in message["text"]
    assert message["payload"]["blocked"][0]["worse_classes"] == ["cat"]
    assert listed["worse_classes"] == ["cat"] and listed["ece"] == pytest.approx(0.08)
    # the same challenger with the per-class gate off is promoted, and its model card names the check
    d = pipeline.gate_stage("pc2", class_gate=False)["decisions"]["cnn"]
    assert d["decision"] == "promoted" and d["class_gate"]["worse"] == ["cat"]
    text = Path(d["model_card"]).read_text()
    assert "Per-class gate**: off" in text and "cat" in text and "Temperature" in text and "jpeg" in text
    low, high = d["accuracy_ci"]  # the card quotes the gate's stored interval
    assert f"95% CI {low:.2%} to {high:.2%}, Wilson" in text
    with connect() as store:  # stored with the decision: what `champion show --json` reads
        assert store.champion_history("cnn")[0]["model_card"] == d["model_card"]


def test_report_shows_the_class_table_galleries_calibration_robustness_and_model_card():
    """Rendered from the database and run files only; a run stored without the new facts says so."""
    from reports import build_report

    _evaluated_run("rp1", _predictions({}, 0.70, seed=1), T0)
    pipeline.gate_stage("rp1")
    _evaluated_run("rp2", _predictions({3: 0.20}, 0.85, seed=2), T0 + timedelta(days=1))
    np.save(RunLayout("rp2").data_dir / "x_test.npy", np.zeros((len(_labels()), 8, 8, 3), dtype=np.uint8))
    np.save(RunLayout("rp2").model_dir("cnn") / "confidence.npy", np.linspace(0, 1, len(_labels())))
    pipeline.gate_stage("rp2")
    page = build_report("rp2").read_text()
    assert "Per-class change vs the champion" in page and "▼ cat" in page and "blocks" in page
    assert "Images that changed vs the champion (run rp1)" in page and "Fixed: 270 images" in page
    assert "Broken: 100 images" in page and page.count('alt="changed test image') >= 2 * 12
    assert "confidence not stored" not in page and 'alt="changed test image 1969: ' in page  # most confident first
    assert "The previous run is the champion" in page
    assert "Robustness" in page and "jpeg" in page and "Model card" in page and "model_card_cnn.md" in page
    index = (layout.reports_root() / layout.REPORT_INDEX).read_text()
    assert "worse: cat" in index and "ECE 8.00%" in index and "corr. 40.00%" in index
    card = (RunLayout("rp2").report_index.parent / "model_card_cnn.md").read_text()
    assert "## Gate verdict" in card and "class 'cat'" in card

    with connect() as store:  # a run recorded before: no per-class rows, no calibration, no robustness
        store.upsert_run("legacy", logical_date=T0 + timedelta(days=2), lineage="L" * 64, class_names=CLASSES)
        store.record_evaluation("legacy", "cnn", {"accuracy": 0.5, "class_names": CLASSES})
        store.record_gate("legacy", "cnn", {"decision": "kept", "champion_run_id": "rp1", "reason": "old gate"})
    page = build_report("legacy").read_text()
    assert "Gated before per-class verdicts were recorded" in page
    assert "Calibration not measured" in page and "Robustness not measured" in page


# --- calibration ----------------------------------------------------------------------------------------------

def test_ece_of_a_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, k = 20_000, 10
    conf = rng.uniform(0.2, 1.0, n)
    y = rng.integers(0, k, n)
    right = rng.random(n) < conf  # right with probability equal to its confidence: calibrated
    pred = np.where(right, y, (y + 1) % k)
    probs = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)  # the rest spread evenly: pred stays top-1
    probs[np.arange(n), pred] = conf
    assert calibration.reliability(probs, y)["ece"] < 0.02
    hot = calibration.scale(probs, 0.5)  # sharpened: overconfident
    assert calibration.reliability(hot, y)["ece"] > 0.05
    t = calibration.fit_temperature(hot, y)
    assert t == pytest.approx(2.0, rel=0.15)
    assert (calibration.scale(hot, t).argmax(1) == hot.argmax(1)).all()
    result = calibration.calibrate(hot, y, hot[:5000], y[:5000])
    assert result["ece_scaled"] < result["ece"] / 3 and len(result["bins"]) == calibration.ECE_BINS


# --- robustness -----------------------------------------------------------------------------------------------

def test_corruption_suite_is_seeded_and_stratified():
    y = np.repeat(np.arange(10), 50)
    subset = robustness.stratified_subset(y, 100)
    assert len(subset) == 100 and np.bincount(y[subset]).tolist() == [10] * 10
    assert (subset == robustness.stratified_subset(y, 100)).all()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    stacked, cases = robustness.suite(images)
    assert stacked.shape == (4 * 18, 32, 32, 3) and stacked.dtype == np.uint8 and len(cases) == 18
    assert (robustness.corrupt(images, "gaussian_noise", 2) == robustness.corrupt(images, "gaussian_noise", 2)).all()
    for name in robustness.CORRUPTIONS:  # stronger severity moves the image further
        d = [np.abs(robustness.corrupt(images, name, s).astype(int) - images).mean() for s in (1, 3)]
        assert d[1] > d[0], name
    with pytest.raises(ValueError, match="corruption='fog'"):
        robustness.corrupt(images, "fog", 1)
    scored = robustness.score(np.tile(np.arange(4), 18), np.arange(4), cases, clean_accuracy=1.0)
    assert scored["accuracy"] == 1.0 and scored["by_corruption"]["jpeg"] == [1.0, 1.0, 1.0]


# --- model card -----------------------------------------------------------------------------------------------

def test_model_card_of_a_run_before_per_class_rows_says_so():
    run = {"run_id": "old", "class_names": ["a"], "profile": "quick"}
    result = {"variant": "resnet50_v1", "accuracy": 0.5, "weights": "none", "per_class": [
        {"class_name": "a", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10}]}
    text = model_card.to_markdown(model_card.card(run, result))
    assert "No per-class comparison" in text and "Calibration" in text and "Not measured" in text
    assert "Random-init weights" in text and "No gate decision" in text
