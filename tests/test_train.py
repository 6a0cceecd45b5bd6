"""Training: the CNN learns, a killed training resumes, v1's feature cache builds the same model, subsets, and
every step of an epoch has one shape (one trace of the train step)."""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.backend_helpers import run_backend
from tests.ml_helpers import small_settings, write_prepared
from tl_tasks.training import feeding
from tl_tasks.training.builders import learning_rate_schedule
from tl_tasks.training.loop import _stratified_subset, train_variant
from tl_tasks.variants import get_variant

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {"variant", "state", "model_path", "weights", "epochs_run", "best_epoch", "train_seconds", "history",
                "resumed_from_epoch", "params_total", "params_trainable", "feature_cache"}
HISTORY_KEYS = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "phase", "learning_rate",
                "train_seconds", "img_per_s", "val_seconds"}


def _cross_entropy(model, x, y, label_smoothing: float = 0.0) -> float:
    probs = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)  # eager: no graph compile
    k = probs.shape[1]
    targets = np.eye(k)[y] * (1 - label_smoothing) + label_smoothing / k
    # clipped far below float32 softmax outputs: Keras computes the loss from the logits, so it never clips at 1e-7
    return float(-np.mean(np.sum(targets * np.log(np.clip(probs, 1e-30, 1.0)), axis=1)))


@pytest.mark.slow
def test_cnn_learns_synthetic_patterns_and_writes_its_outputs(tmp_path):
    data = write_prepared(tmp_path / "data", n_train=300, n_val=60, n_test=20)
    out = tmp_path / "cnn"
    result = train_variant("cnn", data, out, small_settings(epochs={"cnn": 3, "resnet50": 1}), verbose=0)

    summary = result.summary()
    assert set(summary) >= SUMMARY_KEYS
    assert summary["state"] == "success" and summary["epochs_run"] == 3 and summary["resumed_from_epoch"] == 0
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert all(set(h) == HISTORY_KEYS for h in summary["history"])
    # each epoch's training steps alone (validation excluded), and their img/s in the summary
    assert all(0 < h["train_seconds"] <= h["seconds"] for h in summary["history"])
    assert summary["epoch_img_per_s"] == [h["img_per_s"] for h in summary["history"]]
    assert all(r == pytest.approx(summary["train_images"] / h["train_seconds"], rel=0.05)  # seconds are rounded
               for r, h in zip(summary["epoch_img_per_s"], summary["history"], strict=True))
    assert all(0 < h["val_seconds"] < h["seconds"] for h in summary["history"])
    assert summary["history"][-1]["val_accuracy"] > 0.5  # chance is 0.1
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    assert summary["feature_cache"] is False and summary["weights"] == "none"
    assert summary["params_total"] == summary["params_trainable"] > 0
    assert json.loads((out / "train_summary.json").read_text()) == summary
    assert Path(summary["model_path"]) == (out / "model.keras").resolve() and (out / "model.keras").is_file()
    assert not (out / "checkpoints").exists()
    assert not list(out.glob(".tmp-*"))


@pytest.mark.slow
def test_val_limit_validates_on_a_stratified_subset_of_the_family(tmp_path):
    data = write_prepared(tmp_path / "data", n_train=200, n_val=60, n_test=20)
    settings = small_settings(epochs={"cnn": 1, "resnet50": 1}, val_limit={"cnn": 40, "resnet50": None})
    summary = train_variant("cnn", data, tmp_path / "cnn", settings, verbose=0).summary()
    assert summary["val_images"] == 40 and summary["train_images"] == 200


_CRASHING_TRAINING = textwrap.dedent("""
    import dataclasses, json, os, signal, sys
    from pathlib import Path
    from tests.ml_helpers import small_settings
    from tl_tasks.training import loop as train
    from tl_tasks.training.checkpoints import Checkpoints
    from tl_tasks.config import Settings
    from tl_tasks.variants import Variant

    kill_after = int(sys.argv[3])
    save = Checkpoints.save
    def save_then_die(self, model, completed, *args, **kwargs):
        save(self, model, completed, *args, **kwargs)
        if completed == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 right after this epoch's checkpoint
    Checkpoints.save = save_then_die

    variant = Variant(**json.loads(sys.argv[4]))
    settings = Settings.from_dict(json.loads(sys.argv[5]))
    train.train_variant(variant, Path(sys.argv[1]), Path(sys.argv[2]), settings, verbose=0)
""")


def _train_and_kill(data: Path, out: Path, variant, settings, kill_after: int) -> dict:
    """Train in a subprocess that SIGKILLs itself right after epoch `kill_after`'s checkpoint; its state.json."""
    args = [str(data), str(out), str(kill_after), json.dumps(dataclasses.asdict(variant)),
            json.dumps(settings.to_dict())]
    crashed = subprocess.run([sys.executable, "-c", _CRASHING_TRAINING, *args], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=600)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["completed_epochs"] == kill_after and len(state["history"]) == kill_after
    assert not (out / "model.keras").exists() and not (out / "train_summary.json").exists()
    return state


def _accuracy(model, x, y) -> float:
    probs = keras.ops.convert_to_numpy(model(x, training=False))
    return float(np.mean(probs.argmax(axis=1) == y))


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint_and_a_finished_one_retrains(tmp_path):
    data = write_prepared(tmp_path / "data", n_train=200, n_val=40, n_test=20)
    out = tmp_path / "cnn"
    variant = dataclasses.replace(get_variant("cnn"), patience=3)
    settings = small_settings(epochs={"cnn": 4, "resnet50": 1})
    state = _train_and_kill(data, out, variant, settings, kill_after=2)
    assert state["early_stopping"]["best"] == max(h["val_accuracy"] for h in state["history"])

    resumed = train_variant(variant, data, out, settings, verbose=0).summary()
    assert resumed["resumed_from_epoch"] == 2 and resumed["epochs_run"] == 4
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["history"][:2] == state["history"]  # the killed attempt's epochs are kept, not redone
    assert not (out / "checkpoints").exists()
    # Early stopping (val_accuracy, mode max) kept its best weights across the kill: the model is the best epoch's.
    model = keras.models.load_model(out / "model.keras")
    x_val, y_val = np.load(data / "x_val.npy"), np.load(data / "y_val.npy")
    best = resumed["history"][resumed["best_epoch"] - 1]
    assert best["val_accuracy"] == max(h["val_accuracy"] for h in resumed["history"])
    assert _accuracy(model, x_val, y_val) == pytest.approx(best["val_accuracy"], abs=1e-6)
    assert resumed["monitor"] == "val_accuracy" and resumed["recipe"]["variant"]["patience"]["value"] == 3

    again = train_variant(variant, data, out, settings, verbose=0).summary()  # after success: from scratch
    assert again["resumed_from_epoch"] == 0 and again["epochs_run"] == 4


@pytest.mark.slow
def test_fine_tuning_recipe_resumes_mid_warm_up_and_mid_fine_tune_with_its_schedule_and_early_stopping(tmp_path):
    """v4's recipe (head warm-up, AdamW, cosine with warm-up, label smoothing, early stopping on val_accuracy),
    killed with SIGKILL during the head warm-up and again during fine-tuning, resumes where it was."""
    data = write_prepared(tmp_path / "data", n_train=64, n_val=32, n_test=20)
    out = tmp_path / "v4"
    variant = get_variant("resnet50_v4")
    settings = small_settings(epochs={"cnn": 1, "resnet50": 5}, head_warmup_epochs=2, batch_size=32)
    steps_per_epoch = 2  # 64 images / batch 32
    head_params = 2048 * 128 + 128 + 128 * 10 + 10

    # 1. Killed mid-warm-up: after epoch 1 of the 2 head-only epochs; the checkpoint's base is frozen.
    warm = _train_and_kill(data, out, variant, settings, kill_after=1)
    assert warm["phase"] == "head" and "early_stopping" not in warm
    checkpoint = keras.models.load_model(out / "checkpoints" / warm["model_file"])
    assert sum(int(np.prod(w.shape)) for w in checkpoint.trainable_weights) == head_params

    # 2. Resumed, then killed mid-fine-tune: after epoch 3 (the first of 3 fine-tuning epochs).
    fine = _train_and_kill(data, out, variant, settings, kill_after=3)
    assert fine["history"][:1] == warm["history"]
    assert [h["phase"] for h in fine["history"]] == ["head", "head", "main"]
    assert fine["phase"] == "main" and fine["early_stopping"]["best_epoch"] == 2  # 0-based: epoch 3
    checkpoint = keras.models.load_model(out / "checkpoints" / fine["model_file"])
    assert int(keras.ops.convert_to_numpy(checkpoint.optimizer.iterations)) == steps_per_epoch  # schedule position
    assert type(checkpoint.optimizer).__name__ == "AdamW"

    # 3. Resumed to the end.
    summary = train_variant(variant, data, out, settings, verbose=0).summary()
    history = summary["history"]
    assert summary["resumed_from_epoch"] == 3 and summary["epochs_run"] == 5 and summary["head_warmup_epochs"] == 2
    assert summary["train_limit"] is None  # the smoke limit (64) took no subset of 64 images: none recorded
    assert history[:3] == fine["history"]
    assert [h["phase"] for h in history] == ["head", "head", "main", "main", "main"]
    # The LR of each epoch (read at its end) follows one schedule across the kill: a schedule restarted on
    # resume would repeat epoch 3's value at epoch 4.
    schedule = learning_rate_schedule(variant, steps_per_epoch * 3)
    expected = [variant.head_warmup_lr] * 2 + [float(schedule(steps_per_epoch * k)) for k in (1, 2, 3)]
    assert [h["learning_rate"] for h in history] == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert history[3]["learning_rate"] < history[2]["learning_rate"]
    # Early stopping's best weights (possibly from the killed attempt's epoch 3) are the saved model's.
    main = history[2:]
    best = max(range(3), key=lambda i: (main[i]["val_accuracy"], -i))
    assert summary["best_epoch"] == 3 + best
    model = keras.models.load_model(out / "model.keras")
    x_val, y_val = np.load(data / "x_val.npy"), np.load(data / "y_val.npy")
    assert _accuracy(model, x_val, y_val) == pytest.approx(main[best]["val_accuracy"], abs=1e-6)
    assert summary["params_trainable"] > head_params  # fine-tuned: the base trains after the warm-up
    recipe = summary["recipe"]
    assert recipe["variant"]["optimizer"]["value"] == "adamw" and recipe["variant"]["label_smoothing"]["value"] == 0.1
    assert all(item["reason"] for part in ("variant", "profile") for item in recipe[part].values())


@pytest.mark.slow
def test_frozen_v1_trains_on_cached_features_into_the_same_full_model(tmp_path):
    data = write_prepared(tmp_path / "data", n_train=120, n_val=40, n_test=20)
    out = tmp_path / "v1"
    settings = small_settings(epochs={"cnn": 1, "resnet50": 2}, train_limit={"cnn": None, "resnet50": 100})
    summary = train_variant("resnet50_v1", data, out, settings, verbose=0).summary()
    assert summary["feature_cache"] is True and summary["feature_seconds"] > 0
    assert summary["train_images"] == 100 and summary["train_limit"] == 100 and summary["epochs_run"] == 2
    head_params = 2048 * 128 + 128 + 128 * 10 + 10
    assert summary["params_trainable"] == head_params

    # The head was trained on cached features; the saved full model on raw uint8 images must give the head's
    # own last validation loss: same features, and the trained head weights copied into the assembled model.
    model = keras.models.load_model(out / "model.keras")
    assert [layer.name for layer in model.layers][-3:] == ["head_pool", "head_dense", "predictions"]
    x_val, y_val = np.load(data / "x_val.npy"), np.load(data / "y_val.npy")
    smoothing = get_variant("resnet50_v1").label_smoothing
    assert _cross_entropy(model, x_val, y_val, smoothing) == pytest.approx(summary["history"][-1]["val_loss"], rel=1e-4)
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]


def test_stratified_subset_keeps_class_proportions_and_is_seeded():
    y = np.repeat(np.arange(10), [60, 60, 60, 60, 60, 30, 30, 30, 30, 30])
    picked = _stratified_subset(y, 90, seed=3)
    assert len(picked) == 90 and len(set(picked)) == 90 and np.all(np.diff(picked) > 0)
    assert np.bincount(y[picked], minlength=10).tolist() == [12] * 5 + [6] * 5
    np.testing.assert_array_equal(picked, _stratified_subset(y, 90, seed=3))
    assert not np.array_equal(picked, _stratified_subset(y, 90, seed=4))


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"not a prepared data folder \(missing x_train.npy.*meta.json\); run prepare_data"):
        train_variant("cnn", tmp_path / "nothing", tmp_path / "out", small_settings(), verbose=0)


def test_evaluation_only_settings_keep_the_checkpoint_signature_training_settings_change_it():
    from tl_tasks.config import PROFILES
    from tl_tasks.training.checkpoints import signature

    v, base = get_variant("cnn"), PROFILES["smoke"]
    y = np.arange(20) % 10

    def sig(settings):
        return signature(v, settings, "f" * 64, y, y[:10])

    assert sig(dataclasses.replace(base, eval_batch_size=7, robustness_images=0)) == sig(base)
    assert sig(dataclasses.replace(base, batch_size=16)) != sig(base)


def test_full_batches_repeat_a_few_distinct_images_so_every_step_is_full_on_jax():
    idx = feeding.full_batches(300, 32, seed=1, backend="jax")
    assert len(idx) == 320 and np.array_equal(idx[:300], np.arange(300))  # every image once ...
    again = idx[300:]
    assert len(set(again.tolist())) == 20 and again.max() < 300          # ... and 20 distinct ones twice
    assert np.array_equal(again, feeding.full_batches(300, 32, seed=1, backend="jax")[300:])  # seeded
    assert not np.array_equal(again, feeding.full_batches(300, 32, seed=2, backend="jax")[300:])
    assert feeding.full_batches(320, 32, seed=1, backend="jax") is None
    assert feeding.full_batches(20, 32, seed=1, backend="jax") is None
    # TensorFlow's traced step takes a smaller last batch as it is: its training data stay as they were
    assert feeding.full_batches(300, 32, seed=1, backend="tensorflow") is None


@pytest.mark.parametrize("n, batch, replicas, expected", [(5000, 256, 1, 250), (40, 32, 1, 20), (40, 64, 1, 40),
                                                      (60, 32, 1, 30), (5000, 256, 8, 200), (1009, 250, 1, None),
                                                      (5000, 256, 3, None)])
def test_validation_batch_divides_the_split_on_jax(n, batch, replicas, expected):
    # 1,009 is prime: no divisor near 250; 5,000 has no multiple of 3 among its divisors: fit's default then
    assert feeding.validation_batch(n, batch, replicas=replicas, backend="jax") == expected
    assert feeding.validation_batch(n, batch, replicas=replicas, backend="tensorflow") is None  # one trace anyway


# Counts how often Keras traces (TensorFlow) or compiles (JAX) the train and test steps of a 2-epoch CNN training:
# Python runs the step's body only then.
COUNT_TRACES = """
import importlib, json, sys
from pathlib import Path
import keras
from tests.backend_helpers import run_backend
from tests.ml_helpers import small_settings, write_prepared
from tl_tasks.training.loop import train_variant

backend = keras.backend.backend()
module = importlib.import_module(f"keras.src.backend.{backend}.trainer")
trainer = getattr(module, {"tensorflow": "TensorFlowTrainer", "jax": "JAXTrainer"}[backend])
traced = {"train": 0, "test": 0}

def counting(kind, step):
    def wrapper(self, *args, **kwargs):
        traced[kind] += 1
        return step(self, *args, **kwargs)
    return wrapper

trainer.train_step = counting("train", trainer.train_step)
trainer.test_step = counting("test", trainer.test_step)
data = write_prepared(Path(sys.argv[1]) / "data", n_train=300, n_val=60, n_test=20)
result = train_variant("cnn", data, Path(sys.argv[1]) / "cnn", small_settings(epochs={"cnn": 2, "resnet50": 1}),
                       verbose=0)
print(json.dumps({"traced": traced, "epochs": result.epochs_run, "batch": result.batch_size}))
"""


@pytest.mark.slow  # a training in a subprocess per backend
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_an_epoch_traces_its_train_and_test_steps_once(tmp_path, backend):
    # 300 training images in batches of 32 end on a batch of 12, and 60 validation images on one of 28: each other
    # shape is one more compile on JAX (TensorFlow traces one step for every batch size). Adam's moments made
    # inside the first traced step trace it twice on TensorFlow. A fine-tuned ResNet50 pays ~12 CPU-s per trace, and far more per XLA compile on a GPU.
    out = run_backend(backend, COUNT_TRACES, tmp_path).stdout.strip().splitlines()[-1]
    assert json.loads(out) == {"traced": {"train": 1, "test": 1}, "epochs": 2, "batch": 32}
