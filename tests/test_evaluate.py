"""Evaluation: metrics on a hand-checkable case, and evaluate_variant end to end on a saved model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.ml_helpers import CLASS_NAMES, small_settings, write_prepared
from tl_tasks.training.builders import build_model
from tl_tasks.training.evaluate import _metrics, evaluate_variant

EVAL_KEYS = {"variant", "accuracy", "loss", "top3_accuracy", "macro_f1", "per_class", "confusion_matrix",
             "misclassified", "inference_img_per_s", "params_total", "params_trainable", "model_size_bytes",
             "class_names"}


def test_metrics_on_a_hand_checked_confusion():
    names = ["a", "b", "c", "d"]
    y_true = [0, 0, 1, 1, 2, 2]
    probs = np.array([
        [0.7, 0.1, 0.1, 0.1],  # 0 -> 0
        [0.3, 0.4, 0.1, 0.2],  # 0 -> 1, true class ranked 2nd
        [0.1, 0.6, 0.2, 0.1],  # 1 -> 1
        [0.2, 0.5, 0.2, 0.1],  # 1 -> 1
        [0.5, 0.2, 0.1, 0.2],  # 2 -> 0, true class ranked 4th: outside the top 3
        [0.1, 0.1, 0.8, 0.0],  # 2 -> 2
    ])
    m = _metrics(y_true, probs, names, seed=0)

    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["top3_accuracy"] == pytest.approx(5 / 6)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.6, 0.5, 0.1, 0.8])))
    per = {p["class_name"]: p for p in m["per_class"]}
    assert (per["a"]["precision"], per["a"]["recall"], per["a"]["f1"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert (per["b"]["precision"], per["b"]["recall"], per["b"]["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (per["c"]["precision"], per["c"]["recall"], per["c"]["f1"]) == pytest.approx((1.0, 1 / 2, 2 / 3))
    assert (per["d"]["precision"], per["d"]["recall"], per["d"]["f1"], per["d"]["support"]) == (0.0, 0.0, 0.0, 0)
    assert [p["support"] for p in m["per_class"]] == [2, 2, 2, 0]
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3 + 0.0) / 4)
    assert m["misclassified"] == [{"index": 1, "true": 0, "predicted": 1}, {"index": 4, "true": 2, "predicted": 0}]

    sample = _metrics(y_true, probs, names, seed=0, max_misclassified=1)["misclassified"]
    assert len(sample) == 1 and sample[0] in m["misclassified"]


def test_misclassified_sample_is_capped_at_50_and_seeded():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 500)
    probs = rng.dirichlet(np.ones(10), 500)
    first = _metrics(y_true, probs, CLASS_NAMES, seed=1)["misclassified"]
    assert len(first) == 50 and first == _metrics(y_true, probs, CLASS_NAMES, seed=1)["misclassified"]
    assert all(probs[e["index"]].argmax() == e["predicted"] != e["true"] == y_true[e["index"]] for e in first)


def test_evaluate_variant_writes_evaluation_json_consistent_with_the_model(tmp_path):
    data = write_prepared(tmp_path / "data", n_train=20, n_val=10, n_test=70)
    model_dir = tmp_path / "models" / "cnn"
    model_dir.mkdir(parents=True)
    model = build_model("cnn", len(CLASS_NAMES))
    model.save(model_dir / "model.keras")
    settings = small_settings(batch_size=32)

    result = evaluate_variant("cnn", data, model_dir, settings)
    d = result.to_dict()
    assert set(d) >= EVAL_KEYS
    assert json.loads((model_dir / "evaluation.json").read_text()) == d

    x_test, y_test = np.load(data / "x_test.npy"), np.load(data / "y_test.npy")
    probs = model.predict(x_test, verbose=0)
    assert d["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == y_test)))
    confusion = np.array(d["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 70
    assert confusion.sum(axis=1).tolist() == np.bincount(y_test, minlength=10).tolist()
    assert d["accuracy"] == pytest.approx(np.trace(confusion) / 70)
    assert [p["support"] for p in d["per_class"]] == np.bincount(y_test, minlength=10).tolist()
    assert len(d["misclassified"]) == min(50, 70 - np.trace(confusion))
    assert d["class_names"] == CLASS_NAMES and d["variant"] == "cnn"
    assert d["model_size_bytes"] == (model_dir / "model.keras").stat().st_size
    assert d["params_total"] == d["params_trainable"] == model.count_params()
    assert d["inference_img_per_s"] > 0 and math.isfinite(d["loss"])


def test_evaluate_without_a_model_is_a_clear_error(tmp_path):
    data = write_prepared(tmp_path / "data", n_train=10, n_val=10, n_test=10)
    with pytest.raises(FileNotFoundError, match=r"model\.keras is missing: train cnn first"):
        evaluate_variant("cnn", data, tmp_path / "models" / "cnn", small_settings())
