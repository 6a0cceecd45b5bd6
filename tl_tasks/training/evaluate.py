"""Evaluate one trained variant on the test split: accuracy, loss, top-3, per-class metrics, confusion, speed."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tl_tasks.config import Settings
from tl_tasks.data import load_prepared
from tl_tasks.files import save_npy_atomic, sha256_file, write_json_atomic
from tl_tasks.layout import ModelFiles
from tl_tasks.training import devices, runtime
from tl_tasks.training.builders import count_weights
from tl_tasks.training.diagnostics import diagnose
from tl_tasks.training.inference import even_batch, predict_equal_batches
from tl_tasks.training.predictions import write_predictions
from tl_tasks.variants import Variant, get_variant

log = logging.getLogger(__name__)

MAX_MISCLASSIFIED = 50
EPSILON = 1e-7  # as Keras clips probabilities in its cross-entropy


@dataclass
class EvalResult:
    """Test-split metrics of one variant; `to_dict()` is what goes to XCom, the database and evaluation.json."""

    variant: str
    accuracy: float
    loss: float
    top3_accuracy: float
    macro_f1: float
    per_class: list[dict]           # {class_name, precision, recall, f1, support}
    confusion_matrix: list[list[int]]  # counts, rows = true class, columns = predicted class
    misclassified: list[dict]       # {index, true, predicted}: test-set index and class indices, at most 50
    inference_img_per_s: float
    inference_timing: str           # "exclusive": timed alone on its device; "shared": others may have used it
    params_total: int
    params_trainable: int
    model_size_bytes: int
    class_names: list[str]
    test_images: int
    predictions_path: str           # predictions.npy beside evaluation.json (tl_tasks.layout.ModelFiles)
    predictions_sha256: str
    model_sha256: str
    batch_size: int
    backend: str
    device: str
    calibration: dict | None = None  # ECE before/after temperature scaling, the temperature, reliability bins
    robustness: dict | None = None   # accuracy under the corruption suite (tl_tasks.training.robustness.score)
    confidence_path: str | None = None  # top-1 probability per test image, beside predictions.npy
    seconds: dict | None = None      # {"test", "calibration", "robustness"}: where evaluation spent its time

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def evaluate_variant(variant: str | Variant, data_dir: Path, model_dir: Path, settings: Settings) -> EvalResult:
    """Evaluate `model_dir/model.keras` on the test split of `data_dir`; write `model_dir/evaluation.json`."""
    v = variant if isinstance(variant, Variant) else get_variant(variant)
    data_dir, model_dir = Path(data_dir), Path(model_dir)
    runtime.configure()
    files = ModelFiles(model_dir)
    model_path = files.model
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} is missing: train {v.name} first (train_variant / the train task)")
    data = load_prepared(data_dir)
    class_names = list(data.class_names)
    x_test, y_test = np.ascontiguousarray(data.x_test), data.y_test

    model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    if model.output_shape[-1] != len(class_names):
        raise ValueError(f"{model_path} predicts {model.output_shape[-1]} classes but the prepared data in "
                         f"{data_dir} lists {len(class_names)}; retrain {v.name} on this data")
    batch = even_batch(len(x_test), settings.eval_batch_size)  # every step one shape: one trace
    # Warm-up on the one batch shape the timed pass sees: compiling is not inferring.
    model.predict_on_batch(x_test[:batch])
    log.info("evaluating %s on %d test images", v.name, len(x_test))
    t0 = time.perf_counter()
    probs = predict_equal_batches(model, x_test, batch)  # timed: no progress output inside
    seconds = time.perf_counter() - t0
    log.info("evaluated %s: %d images in %.1f s", v.name, len(x_test), seconds)

    metrics = _metrics(y_test, probs, class_names, seed=settings.seed)
    predictions_path = files.predictions
    predictions_sha256 = write_predictions(predictions_path, probs.argmax(axis=1))
    save_npy_atomic(files.confidence, probs.max(axis=1).astype(np.float16))
    extra = diagnose(model, data, probs, batch_size=batch, robustness_images=settings.robustness_images)
    result = EvalResult(
        variant=v.name, **metrics,
        inference_img_per_s=round(len(y_test) / seconds, 1) if seconds > 0 else float("nan"),
        inference_timing=devices.inference_timing(),
        params_total=int(model.count_params()), params_trainable=count_weights(model.trainable_weights),
        model_size_bytes=model_path.stat().st_size, class_names=list(class_names), test_images=len(y_test),
        predictions_path=str(predictions_path), predictions_sha256=predictions_sha256,
        model_sha256=sha256_file(model_path),
        batch_size=batch, backend=keras.backend.backend(), device=runtime.device_description(),
        calibration=extra["calibration"], robustness=extra["robustness"], confidence_path=str(files.confidence),
        seconds={"test": round(seconds, 3), **extra["seconds"]},
    )
    write_json_atomic(files.evaluation, result.to_dict())
    return result


def _metrics(y_true, probs, class_names, *, seed: int = 42, max_misclassified: int = MAX_MISCLASSIFIED) -> dict:
    """Accuracy, loss, top-3 accuracy, per-class precision/recall/F1, macro F1, confusion and a misclassified sample.

    Classes without support or predictions get precision/recall/F1 of 0 (as scikit-learn's zero_division=0).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    if len(y_true) != n or k != len(class_names):
        raise ValueError(f"{len(y_true)} labels, probabilities of shape {probs.shape}, {len(class_names)} class names")
    y_pred = probs.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)

    top = min(3, k)
    top_k = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    wrong = np.flatnonzero(y_pred != y_true)
    if len(wrong) > max_misclassified:
        wrong = np.sort(np.random.default_rng(seed).choice(wrong, max_misclassified, replace=False))
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "loss": float(-np.mean(np.log(np.clip(probs[np.arange(n), y_true], EPSILON, 1.0)))) if n else 0.0,
        "top3_accuracy": float(np.mean((top_k == y_true[:, None]).any(axis=1))) if n else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": [
            {"class_name": name, "precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
             "support": int(support[c])}
            for c, name in enumerate(class_names)
        ],
        "confusion_matrix": confusion.tolist(),
        "misclassified": [{"index": int(i), "true": int(y_true[i]), "predicted": int(y_pred[i])} for i in wrong],
    }
