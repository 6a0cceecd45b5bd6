"""Demo data: seed a metrics store with realistic fake runs through the store API (report tests, benchmarks).

A fake run has what the pipeline records: run metadata, per-variant train summaries (with epoch history),
evaluations (per-class metrics, confusion matrix, misclassified test indices), gate decisions and failures,
plus the run's `data/x_test.npy` so the report can draw misclassified thumbnails.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from tl_tasks.config import DAG_ID
from tl_tasks.data import CIFAR10_CLASSES
from tl_tasks.files import save_npy_atomic
from tl_tasks.gating.decision import DEFAULT_ALPHA, compare_paired, decide, versus_previous
from tl_tasks.layout import RunLayout
from tl_tasks.training.predictions import write_predictions
from tl_tasks.variants import VARIANT_NAMES

CLASS_NAMES = CIFAR10_CLASSES
LINEAGE = "ab" * 32  # every demo run's test set, unless given: one history to compare
BASE_ACCURACY = {"cnn": 0.62, "resnet50_v1": 0.80, "resnet50_v2": 0.88, "resnet50_v3": 0.90, "resnet50_v4": 0.91}
START = datetime(2026, 1, 5, 2, 0, tzinfo=UTC)
TEST_IMAGES = 200
TOLERANCE = 0.01
VERSIONS = {"python": "3.11.9", "keras": "3.15.1", "tensorflow": "2.21.0", "numpy": "2.4.6",
            "apache-airflow": "3.3.2"}


def run_date(i: int) -> datetime:
    """Logical date of the i-th scheduled run (weekly)."""
    return START + timedelta(days=7 * i)


def fake_history(epochs: int, final_accuracy: float, rng: np.random.Generator) -> list[dict]:
    """Per-epoch train/validation curves that rise towards `final_accuracy`, with a little noise."""
    history = []
    for e in range(1, epochs + 1):
        progress = 1 - np.exp(-2.2 * e / max(epochs, 1))
        val_acc = float(np.clip(0.1 + (final_accuracy - 0.1) * progress + rng.normal(0, 0.008), 0, 1))
        acc = float(np.clip(val_acc + 0.02 + 0.03 * progress + rng.normal(0, 0.005), 0, 1))
        history.append({"epoch": e, "accuracy": acc, "val_accuracy": val_acc,
                        "loss": float(2.3 * (1 - acc) + 0.05), "val_loss": float(2.3 * (1 - val_acc) + 0.12),
                        "seconds": float(rng.uniform(20, 40))})
    return history


def fake_evaluation(variant: str, accuracy: float, class_names=CLASS_NAMES, *, n_test: int = TEST_IMAGES,
                    rng: np.random.Generator | None = None, predictions_path=None) -> dict:
    """An evaluation dict as `evaluate_variant(...).to_dict()` returns it, consistent with `accuracy`; with
    `predictions_path`, the per-image predictions are stored there too (as evaluate does)."""
    rng = rng or np.random.default_rng(0)
    k = len(class_names)
    y_true = np.arange(n_test) % k
    wrong = rng.random(n_test) > accuracy
    y_pred = np.where(wrong, (y_true + rng.integers(1, max(k, 2), n_test)) % k, y_true)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (y_true, y_pred), 1)
    per_class = []
    for c in range(k):
        tp = matrix[c, c]
        precision = tp / max(matrix[:, c].sum(), 1)
        recall = tp / max(matrix[c].sum(), 1)
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        per_class.append({"class_name": class_names[c], "precision": float(precision), "recall": float(recall),
                          "f1": float(f1), "support": int(matrix[c].sum())})
    acc = float(np.trace(matrix) / n_test)
    misclassified = [{"index": int(i), "true": int(y_true[i]), "predicted": int(y_pred[i])}
                     for i in np.flatnonzero(y_true != y_pred)[:50]]
    stored = {}
    if predictions_path is not None:
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        stored = {"predictions_path": str(predictions_path),
                  "predictions_sha256": write_predictions(predictions_path, y_pred)}
    return {
        **stored, "test_images": n_test,
        "variant": variant, "accuracy": acc, "loss": float(2.3 * (1 - acc) + 0.1),
        "top3_accuracy": float(min(1.0, acc + 0.5 * (1 - acc))),
        "macro_f1": float(np.mean([p["f1"] for p in per_class])), "per_class": per_class,
        "confusion_matrix": matrix.tolist(), "misclassified": misclassified,
        "inference_img_per_s": float(rng.uniform(300, 3000)), "params_total": 23_850_000 if variant != "cnn" else 545_098,
        "params_trainable": (262_000 if variant == "resnet50_v1" else 23_800_000) if variant != "cnn" else 545_098,
        "model_size_bytes": 95_000_000, "class_names": list(class_names),
    }


def write_test_images(run_id: str, class_names=CLASS_NAMES, n_test: int = TEST_IMAGES, seed: int = 0) -> None:
    """`runs/<key>/data/x_test.npy` (uint8 NHWC 32x32) and `y_test.npy`: a coloured shape per class."""
    rng = np.random.default_rng(seed)
    k = len(class_names)
    y = np.arange(n_test) % k
    yy, xx = np.mgrid[0:32, 0:32]
    x = np.empty((n_test, 32, 32, 3), dtype=np.uint8)
    for i, label in enumerate(y):
        hue = np.array([(40 + 67 * label) % 256, (200 - 31 * label) % 256, (120 + 97 * label) % 256], dtype=float)
        background = 150 + 60 * (yy / 31.0)[..., None] * rng.uniform(0.5, 1.0, 3)
        cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(5, 10)
        shape = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None]
        img = np.where(shape, hue, background) + rng.normal(0, 8, (32, 32, 3))
        x[i] = np.clip(img, 0, 255).astype(np.uint8)
    data = RunLayout(run_id).data
    save_npy_atomic(data.array("x_test"), x)
    save_npy_atomic(data.array("y_test"), y.astype(np.int64))


def seed_run(store, run_id: str, when: datetime, *, variants=VARIANT_NAMES, shift: float = 0.0,
             accuracies: dict | None = None, failed: dict | None = None, class_names=CLASS_NAMES,
             epochs: int = 5, write_data: bool = True, detail: bool = True, seed: int = 0,
             params: dict | None = None, lineage: str = LINEAGE) -> dict:
    """Record one complete fake run through the store API and return `store.get_run(run_id)` (if detail).

    Args:
        shift: added to every variant's base accuracy (negative = a worse run).
        accuracies: explicit accuracy per variant (overrides base + shift).
        failed: {variant: (stage, error text)}: these variants fail instead of being evaluated.
        detail: False records only the evaluation metrics and gate (a light historical run).
    """
    rng = np.random.default_rng(seed)
    failed = failed or {}
    store.upsert_run(
        run_id, dag_id=DAG_ID, logical_date=when, started_at=when + timedelta(minutes=1),
        ended_at=when + timedelta(minutes=47), state="failed" if failed else "success", profile="quick",
        params=params if params is not None else {"profile": "quick", "epochs": epochs, "batch_size": 64,
                                                  "tolerance": TOLERANCE, "variants": list(variants)},
        data_source="folder:/data/cifar-10-images-jpg.tar.gz", data_fingerprint=f"{seed:08x}" + "ab" * 28,
        lineage=lineage,
        data_summary={"counts": {"train": 45_000, "val": 5_000, "test": TEST_IMAGES},
                      "class_names": list(class_names), "skipped": []},
        class_names=list(class_names), seed=42, versions=VERSIONS, device="CPU (2 cores)",
    )
    if write_data and detail:
        write_test_images(run_id, class_names, seed=seed)
    for v in variants:
        if v in failed:
            stage, error = failed[v]
            if stage != "train":
                store.record_training(run_id, v, _train_summary(v, run_id, epochs, 0.8, rng) if detail else {})
            store.record_failure(run_id, v, stage, error)
            store.record_gate(run_id, v, {"decision": "failed", "accuracy": None, "tolerance": TOLERANCE})
            continue
        target = (accuracies or {}).get(v, BASE_ACCURACY.get(v, 0.7) + shift + rng.normal(0, 0.004))
        target = float(np.clip(target, 0.05, 0.995))
        if detail:
            store.record_training(run_id, v, _train_summary(v, run_id, epochs, target, rng))
            evaluation = fake_evaluation(v, target, class_names, rng=rng,
                                         predictions_path=RunLayout(run_id).predictions_file(v))
        else:
            evaluation = {"accuracy": target, "loss": 2.3 * (1 - target) + 0.1, "top3_accuracy": min(1, target + 0.1),
                          "macro_f1": target - 0.01, "inference_img_per_s": 1000.0}
        store.record_evaluation(run_id, v, evaluation)
        store.record_gate(run_id, v, _gate(store, run_id, v, evaluation, len(class_names)))
    return store.get_run(run_id) if detail else {}


def _train_summary(variant: str, run_id: str, epochs: int, accuracy: float, rng) -> dict:
    history = fake_history(epochs, accuracy, rng)
    best = int(np.argmax([h["val_accuracy"] for h in history])) + 1
    return {"variant": variant, "state": "success", "model_path": str(RunLayout(run_id).model_file(variant)),
            "weights": "none" if variant == "cnn" else "imagenet", "epochs_run": epochs, "best_epoch": best,
            "train_seconds": float(sum(h["seconds"] for h in history)), "history": history,
            "resumed_from_epoch": None, "params_total": 23_850_000 if variant != "cnn" else 545_098,
            "params_trainable": 23_800_000 if variant != "cnn" else 545_098}


def _gate(store, run_id: str, variant: str, evaluation: dict, k: int) -> dict:
    """The gate's decision as the pipeline makes it: paired when both runs stored per-image predictions."""
    champ = store.champion(variant, before_run_id=run_id)
    previous = store.previous_run(run_id, same_lineage=True)
    before = ((previous or {}).get("results") or {}).get(variant)
    mine = evaluation.get("predictions_path")
    paired = versus = None
    if champ is not None and champ.get("predictions_path") and mine:
        new, old = np.load(mine), np.load(champ["predictions_path"])
        if len(new) == len(old):
            paired = compare_paired(np.arange(len(new)) % k, new, old, alpha=DEFAULT_ALPHA)
    if before is not None and before.get("predictions_path") and mine:
        new, old = np.load(mine), np.load(before["predictions_path"])
        if len(new) == len(old):
            versus = versus_previous(np.arange(len(new)) % k, new, old, previous_run_id=previous["run_id"],
                                     alpha=DEFAULT_ALPHA)
    decision = decide(evaluation["accuracy"], champ, paired=paired, tolerance=TOLERANCE,
                      test_images=evaluation.get("test_images"), unpaired_reason="a light fixture run")
    return {**decision, "previous": versus}


def seed_history(store, n_runs: int, *, detail: bool = False, prefix: str = "scheduled__") -> list[str]:
    """`n_runs` weekly runs with slowly drifting accuracy; returns their run ids, oldest first."""
    ids = []
    for i in range(n_runs):
        run_id = f"{prefix}{run_date(i).isoformat()}"
        drift = 0.025 * np.sin(i / 9.0) + 0.02 * np.sin(i / 97.0) - 0.02
        seed_run(store, run_id, run_date(i), shift=float(drift), detail=detail, write_data=False, seed=i)
        ids.append(run_id)
    return ids
