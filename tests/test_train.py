"""Training: the CNN learns, a killed training resumes, v1's feature cache builds the same model, subsets."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from ml_helpers import small_settings, write_prepared
from tl_tasks.train import _stratified_subset, train_variant
from tl_tasks.variants import get_variant

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {"variant", "state", "model_path", "weights", "epochs_run", "best_epoch", "train_seconds", "history",
                "resumed_from_epoch", "params_total", "params_trainable", "feature_cache"}
HISTORY_KEYS = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}


def _cross_entropy(model, x, y) -> float:
    probs = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)  # eager: no graph compile
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))


def test_cnn_learns_synthetic_patterns_and_writes_its_outputs(tmp_path):
    data = write_prepared(tmp_path / "data", n_train=300, n_val=60, n_test=20)
    out = tmp_path / "cnn"
    result = train_variant("cnn", data, out, small_settings(epochs={"cnn": 3, "resnet50": 1}), verbose=0)

    summary = result.summary()
    assert SUMMARY_KEYS <= set(summary)
    assert summary["state"] == "success" and summary["epochs_run"] == 3 and summary["resumed_from_epoch"] == 0
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert all(set(h) == HISTORY_KEYS for h in summary["history"])
    assert summary["history"][-1]["val_accuracy"] > 0.5  # chance is 0.1
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    assert summary["feature_cache"] is False and summary["weights"] == "none"
    assert summary["params_total"] == summary["params_trainable"] > 0
    assert json.loads((out / "train_summary.json").read_text()) == summary
    assert Path(summary["model_path"]) == (out / "model.keras").resolve() and (out / "model.keras").is_file()
    assert not (out / "checkpoints").exists()
    assert not list(out.glob(".tmp-*"))


_CRASHING_TRAINING = textwrap.dedent("""
    import dataclasses, os, signal, sys
    from pathlib import Path
    from ml_helpers import small_settings
    from tl_tasks import train
    from tl_tasks.variants import get_variant

    save = train._Checkpoints.save
    def save_then_die(self, model, completed, *args, **kwargs):
        save(self, model, completed, *args, **kwargs)
        if completed == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 right after epoch 2's checkpoint
    train._Checkpoints.save = save_then_die

    variant = dataclasses.replace(get_variant("cnn"), early_stopping=True)
    train.train_variant(variant, Path(sys.argv[1]), Path(sys.argv[2]),
                        small_settings(epochs={"cnn": 4, "resnet50": 1}, patience=3), verbose=0)
""")


def test_killed_training_resumes_from_its_last_checkpoint_and_a_finished_one_retrains(tmp_path):
    data = write_prepared(tmp_path / "data", n_train=200, n_val=40, n_test=20)
    out = tmp_path / "cnn"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "tests")]))
    crashed = subprocess.run([sys.executable, "-c", _CRASHING_TRAINING, str(data), str(out)], env=env,
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["completed_epochs"] == 2 and len(state["history"]) == 2
    assert not (out / "model.keras").exists() and not (out / "train_summary.json").exists()

    variant = dataclasses.replace(get_variant("cnn"), early_stopping=True)
    settings = small_settings(epochs={"cnn": 4, "resnet50": 1}, patience=3)
    resumed = train_variant(variant, data, out, settings, verbose=0).summary()
    assert resumed["resumed_from_epoch"] == 2 and resumed["epochs_run"] == 4
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["history"][:2] == state["history"]  # the killed attempt's epochs are kept, not redone
    assert not (out / "checkpoints").exists()
    # Early stopping's best weights survived the kill: the saved model is the best epoch's.
    model = keras.models.load_model(out / "model.keras")
    x_val, y_val = np.load(data / "x_val.npy"), np.load(data / "y_val.npy")
    best = resumed["history"][resumed["best_epoch"] - 1]
    assert best["val_loss"] == min(h["val_loss"] for h in resumed["history"])
    assert _cross_entropy(model, x_val, y_val) == pytest.approx(best["val_loss"], rel=1e-3, abs=1e-4)

    again = train_variant(variant, data, out, settings, verbose=0).summary()  # after success: from scratch
    assert again["resumed_from_epoch"] == 0 and again["epochs_run"] == 4


def test_frozen_v1_trains_on_cached_features_into_the_same_full_model(tmp_path):
    data = write_prepared(tmp_path / "data", n_train=120, n_val=40, n_test=20)
    out = tmp_path / "v1"
    settings = small_settings(epochs={"cnn": 1, "resnet50": 2}, train_limit={"cnn": None, "resnet50": 100})
    summary = train_variant("resnet50_v1", data, out, settings, verbose=0).summary()
    assert summary["feature_cache"] is True and summary["feature_seconds"] > 0
    assert summary["train_images"] == 100 and summary["epochs_run"] == 2
    head_params = 2048 * 128 + 128 + 128 * 10 + 10
    assert summary["params_trainable"] == head_params

    # The head was trained on cached features; the saved full model on raw uint8 images must give the head's
    # own last validation loss: same features, and the trained head weights copied into the assembled model.
    model = keras.models.load_model(out / "model.keras")
    assert [layer.name for layer in model.layers][-3:] == ["head_pool", "head_dense", "predictions"]
    x_val, y_val = np.load(data / "x_val.npy"), np.load(data / "y_val.npy")
    assert _cross_entropy(model, x_val, y_val) == pytest.approx(summary["history"][-1]["val_loss"], rel=1e-3)
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]


def test_stratified_subset_keeps_class_proportions_and_is_seeded():
    y = np.repeat(np.arange(10), [60, 60, 60, 60, 60, 30, 30, 30, 30, 30])
    picked = _stratified_subset(y, 90, seed=3)
    assert len(picked) == 90 and len(set(picked)) == 90 and np.all(np.diff(picked) > 0)
    assert np.bincount(y[picked], minlength=10).tolist() == [12] * 5 + [6] * 5
    np.testing.assert_array_equal(picked, _stratified_subset(y, 90, seed=3))
    assert not np.array_equal(picked, _stratified_subset(y, 90, seed=4))


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json is missing.*prepare_data"):
        train_variant("cnn", tmp_path / "nothing", tmp_path / "out", small_settings(), verbose=0)
