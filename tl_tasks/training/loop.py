"""Train one variant on prepared data: seeded, checkpointed each epoch (a crashed attempt resumes), and for a
frozen base without augmentation the base's features are computed once and only the head is trained.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from tl_tasks.config import Settings
from tl_tasks.data import load_prepared
from tl_tasks.files import sha256_file, write_json_atomic
from tl_tasks.layout import ModelFiles
from tl_tasks.progress import keras_verbose
from tl_tasks.training import devices, feeding, runtime
from tl_tasks.training.builders import (
    build_head,
    build_model,
    compile_recipe,
    count_weights,
    one_hot,
    resolve_weights,
    set_base_frozen,
)
from tl_tasks.training.checkpoints import (
    Checkpoints,
    ResumableEarlyStopping,
    previous_attempt,
    reusable,
    save_model_atomic,
    signature,
)
from tl_tasks.training.inference import even_batch, predict_equal_batches
from tl_tasks.variants import Variant, get_variant

log = logging.getLogger(__name__)

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class TrainResult:
    """What one training produced; `summary()` is the JSON-safe dict that goes to XCom and the database."""

    variant: str
    state: str
    model_path: str
    weights: str                    # what the base actually started from: "imagenet", "none" or a file path
    weights_requested: str
    epochs_planned: int
    epochs_run: int                 # completed epochs in total, resumed attempts included
    best_epoch: int | None          # 1-based epoch with the best monitored metric (variant.monitor), main phase
    stopped_early: bool
    train_seconds: float            # wall time of this attempt (data loading to saved model)
    history: list[dict]
    resumed_from_epoch: int         # 0 = trained from scratch
    params_total: int
    params_trainable: int
    feature_cache: bool
    feature_seconds: float | None   # time spent computing cached base features
    train_img_per_s: float | None   # training images per second over this attempt's epochs (training steps only)
    train_images: int
    val_images: int
    input_size: int
    image_size: int
    batch_size: int
    seed: int
    early_stopping: bool
    train_limit: int | None
    mixed_precision: bool
    backend: str
    device: str
    head_warmup_epochs: int = 0     # of epochs_planned, how many trained the head alone (base frozen)
    monitor: str = "val_accuracy"   # the metric best_epoch and early stopping follow
    replicas: int = 1               # devices the model trained on at once (data-parallel mode)
    recipe: dict = field(default_factory=dict)  # every hyperparameter with its reason: variant and profile
    epoch_img_per_s: list = field(default_factory=list)  # each epoch's training img/s (the first includes compiling)

    def summary(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def train_variant(variant: str | Variant, data_dir: Path, out_dir: Path, settings: Settings,
                  *, verbose: int | None = None, reuse_finished: bool = False) -> TrainResult:
    """Train `variant` on the prepared data in `data_dir`; write `out_dir/model.keras` and `train_summary.json`.

    Rerunning after a crash resumes from the last completed epoch in `out_dir/checkpoints/`; rerunning after a
    finished training retrains from scratch.

    Args:
        verbose: Keras fit verbosity; None = progress bar on a terminal, one line per epoch otherwise.
        reuse_finished: a finished model in `out_dir` whose summary matches (same signature, epochs and model
            file sha256) is returned as it is instead of retrained: the retry after recording its result failed.
    """
    started = time.perf_counter()
    v = variant if isinstance(variant, Variant) else get_variant(variant)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    runtime.configure()
    if verbose is None:
        verbose = keras_verbose()

    data = load_prepared(data_dir)
    class_names = data.class_names
    x_train, y_train, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    limit = settings.train_limit.get(v.family)
    if limit and limit < len(y_train):
        keep = _stratified_subset(y_train, limit, settings.seed)
        x_train, y_train = x_train[keep], y_train[keep]
    else:
        limit = None  # recorded only where it took a subset (the model card says "trained on a subset")
    val_limit = settings.val_limit.get(v.family)
    if val_limit and val_limit < len(y_val):
        keep = _stratified_subset(y_val, val_limit, settings.seed)
        x_val, y_val = x_val[keep], y_val[keep]
    x_train, y_train = np.ascontiguousarray(x_train), np.ascontiguousarray(y_train)
    x_val, y_val = np.ascontiguousarray(x_val), np.ascontiguousarray(y_val)

    input_size = int(x_train.shape[1])
    image_size = input_size if v.family == "cnn" else settings.image_size
    epochs = settings.epochs[v.family]
    feature_cache = v.frozen_base and not v.augment
    mixed = mixed_precision_enabled(settings)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = ModelFiles(out_dir)
    checkpoints = Checkpoints(files.checkpoints, signature(v, settings, data.fingerprint, y_train, y_val))
    if reuse_finished:
        summary = reusable(files, checkpoints.signature, epochs)
        if summary is not None:
            names = {f.name for f in dataclasses.fields(TrainResult)}
            finished = TrainResult(**{k: val for k, val in summary.items() if k in names})
            log.info("%s: reusing the finished model %s (same settings, data and epochs); not retraining",
                     v.name, finished.model_path)
            return finished
    state = previous_attempt(files, checkpoints)
    if state is not None:
        weights = state["weights"]
        log.info("%s: resuming after epoch %d from %s", v.name, state["completed_epochs"], checkpoints.directory)
    elif v.family == "cnn":
        weights = "none"
    else:
        weights = _weights_label(resolve_weights(settings.weights))

    run = _Run(v=v, num_classes=len(class_names), input_size=input_size, image_size=image_size,
               weights=weights, epochs=epochs, settings=settings, verbose=verbose, checkpoints=checkpoints,
               state=state, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    with runtime.dtype_policy(mixed), devices.data_parallel(settings.data_parallel) as replicas:
        run.replicas = replicas
        model = run.fit_cached() if feature_cache else run.fit()

    model_path = files.model
    save_model_atomic(model, model_path)
    history = run.history
    attempt_seconds = sum(h.get("train_seconds") or h["seconds"] for h in history[run.start_epoch:])
    attempt_epochs = len(history) - run.start_epoch
    result = TrainResult(
        variant=v.name, state="success", model_path=str(model_path.resolve()), weights=weights,
        weights_requested=str(settings.weights), epochs_planned=epochs, epochs_run=len(history),
        best_epoch=_best_epoch(history, v, run.warmup_epochs),
        stopped_early=len(history) < epochs, train_seconds=round(time.perf_counter() - started, 3),
        history=history, resumed_from_epoch=run.start_epoch,
        params_total=int(model.count_params()), params_trainable=count_weights(model.trainable_weights),
        feature_cache=feature_cache, feature_seconds=run.feature_seconds,
        train_img_per_s=round(len(y_train) * attempt_epochs / attempt_seconds, 1) if attempt_seconds > 0 else None,
        train_images=len(y_train), val_images=len(y_val), input_size=input_size, image_size=image_size,
        batch_size=run.batch_size, seed=settings.seed, early_stopping=v.early_stopping, train_limit=limit,
        mixed_precision=mixed, backend=keras.backend.backend(), device=runtime.device_description(),
        head_warmup_epochs=run.warmup_epochs, monitor=v.monitor, replicas=replicas,
        recipe={"variant": v.recipe(), "profile": settings.recipe(), "steps_per_epoch": run.steps_per_epoch,
                "steps_per_execution": run.steps_per_execution},
        epoch_img_per_s=[h.get("img_per_s") for h in history],
    )
    write_json_atomic(files.train_summary, result.summary())
    write_json_atomic(files.finished, {"signature": checkpoints.signature, "epochs": epochs,
                                       "model_sha256": sha256_file(model_path)})
    checkpoints.clear()
    return result


@dataclass
class _Run:
    """One training attempt: builds or restores the model, fits it with checkpoints, keeps the history."""

    v: Variant
    num_classes: int
    input_size: int
    image_size: int
    weights: str
    epochs: int
    settings: Settings
    verbose: int
    checkpoints: Checkpoints
    state: dict | None
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    feature_seconds: float | None = None
    also_needs: list[str] = field(default_factory=list)  # checkpoint files besides the epoch model

    phase: str = "main"                # "head" (warm-up, base frozen) or "main"; saved with each checkpoint
    replicas: int = 1                  # devices one step is split over (data-parallel mode)

    def __post_init__(self):
        if self.state is not None:
            self.history = list(self.state["history"])
            self.start_epoch = int(self.state["completed_epochs"])
        self.warmup_epochs = self.settings.head_warmup_epochs_for(self.v.name)
        device = feeding.device_kind()
        self.batch_size = feeding.batch_size(self.settings, device)
        self.steps_per_execution = feeding.steps_per_execution(device)
        self.steps_per_epoch = max(1, math.ceil(len(self.y_train) / self.batch_size))
        self.t_train = one_hot(self.y_train, self.num_classes)
        self.t_val = one_hot(self.y_val, self.num_classes)

    def compile(self, model: keras.Model, phase: str) -> None:
        epochs = self.warmup_epochs if phase == "head" else self.epochs - self.warmup_epochs
        compile_recipe(model, self.v, self.num_classes, steps=self.steps_per_epoch * epochs, phase=phase,
                       steps_per_execution=self.steps_per_execution)
        # Adam's moments made now, not inside the first traced step: TensorFlow traces a function that creates
        # variables twice, ~12 CPU-s for a fine-tuned ResNet50
        model.optimizer.build(model.trainable_variables)

    def build(self) -> keras.Model:
        runtime.seed_everything(self.settings.seed)
        return build_model(self.v, self.num_classes, input_size=self.input_size, image_size=self.image_size,
                           weights=None if self.weights == "none" else self.weights, seed=self.settings.seed)

    def fit(self) -> keras.Model:
        """Train the whole model end to end: first the head alone (base frozen) for the profile's head warm-up
        epochs when the variant has that phase, then the variant's main phase. A checkpoint records its phase;
        its saved optimizer carries the step counter, so the LR schedule resumes where it was. A checkpoint that
        cannot be loaded falls back one epoch, then to a fresh start (`restore`)."""
        model = self.restore(self.checkpoints.load_model) if self.state else None
        if model is not None:
            loaded_phase = self.state.get("phase", "main")
        else:
            model = self.build()
            loaded_phase = "head" if self.warmup_epochs else "main"
            if loaded_phase == "head":
                set_base_frozen(model, self.v, True)
            self.compile(model, loaded_phase)
        if loaded_phase == "head":
            self.phase = "head"
            self._fit(model, self.x_train, self.x_val, until=self.warmup_epochs, early_stopping=False)
            set_base_frozen(model, self.v, False)
            self.compile(model, "main")  # a fresh optimizer: the warm-up's Adam moments are the head's only
        self.phase = "main"
        self._fit(model, self.x_train, self.x_val, until=self.epochs, early_stopping=self.v.early_stopping)
        return model

    def restore(self, load):
        """`load(state)` from the newest loadable checkpoint: falls back one epoch, then to a fresh start (None),
        with a warning each time, so a truncated or corrupt checkpoint costs an epoch, not the run."""
        for state in (self.state, (self.state or {}).get("fallback")):
            if state is None:
                continue
            try:
                loaded = load(state)
            except Exception as exc:
                log.warning("%s: the checkpoint after epoch %s (%s) cannot be loaded (%s: %s); trying the one before, "
                            "else training from scratch", self.v.name, state.get("completed_epochs"),
                            self.checkpoints.directory / str(state.get("model_file")), type(exc).__name__, exc)
                continue
            self._use(state)
            return loaded
        log.warning("%s: no loadable checkpoint left in %s; training from scratch", self.v.name,
                    self.checkpoints.directory)
        self._use(None)
        return None

    def _use(self, state: dict | None) -> None:
        self.state = state
        self.history = list(state["history"]) if state else []
        self.start_epoch = int(state["completed_epochs"]) if state else 0

    def fit_cached(self) -> keras.Model:
        """Frozen base, no augmentation: compute the base's pooled features once, train only the head on them."""
        restored = None
        if self.state:
            self.also_needs = [Checkpoints.INITIAL_MODEL]
            initial = self.checkpoints.directory / Checkpoints.INITIAL_MODEL
            restored = self.restore(lambda state: (keras.models.load_model(initial, safe_mode=True),
                                                   self.checkpoints.load_model(state)))
        if restored is not None:
            model, head = restored
        else:
            model = self.build()
            self.checkpoints.save_initial(model)
            self.also_needs = [Checkpoints.INITIAL_MODEL]
            head = build_head(self.v, self.num_classes, model.get_layer("head_pool").output.shape[-1],
                              seed=self.settings.seed)
            _copy_weights(model, head)  # start from the assembled model's own head initialisation
            self.compile(head, "main")
        t0 = time.perf_counter()
        features = keras.Model(model.inputs, model.get_layer("head_pool").output, name="features")
        # feature extraction shows progress like fit: a bar on a terminal, one line in logs
        log.info("extracting ResNet50 features of %d train and %d validation images", len(self.x_train), len(self.x_val))
        images = np.concatenate([self.x_train, self.x_val])  # one pass, one batch shape: one trace
        pooled = predict_equal_batches(features, images, even_batch(len(images), self.settings.eval_batch_size),
                                       verbose=self.verbose).astype("float32")
        f_train, f_val = pooled[:len(self.x_train)], pooled[len(self.x_train):]
        self.feature_seconds = round(time.perf_counter() - t0, 3)
        self._fit(head, f_train, f_val, until=self.epochs, early_stopping=self.v.early_stopping)
        _copy_weights(head, model)
        model.optimizer.build(model.trainable_variables)  # a complete .keras file: no optimizer warning on load
        return model

    def _fit(self, model: keras.Model, x_train, x_val, *, until: int, early_stopping: bool) -> None:
        """Fit from the first epoch not yet in the history up to epoch `until` (exclusive, 0-based)."""
        early = None
        if early_stopping:
            early = ResumableEarlyStopping(monitor=self.v.monitor, mode=self.v.monitor_mode,
                                            patience=self.v.patience, restore_best_weights=True)
            early.resume_from(self.state if self.state and self.state.get("phase", "main") == self.phase else None,
                              self.checkpoints)
        t_train = self.t_train
        full = feeding.full_batches(len(t_train), self.batch_size, self.settings.seed)
        if full is not None:  # every step one shape on JAX: one XLA compile of the train step, not two
            x_train, t_train = x_train[full], t_train[full]
        epoch_log = _EpochLog(self.history, self.phase, len(self.y_train))
        callbacks = [epoch_log] + ([early] if early else []) + [_CheckpointEachEpoch(self, early)]
        already_stopped = bool(self.state and self.state.get("stopped"))
        done = len(self.history)
        if done < until and not already_stopped:
            runtime.seed_everything(self.settings.seed + done)
            val_batch = feeding.validation_batch(len(self.t_val), self.batch_size, replicas=self.replicas)
            model.fit(x_train, t_train, validation_data=(x_val, self.t_val), epochs=until,
                      initial_epoch=done, batch_size=self.batch_size, validation_batch_size=val_batch,
                      shuffle=True, verbose=self.verbose, callbacks=callbacks)
        elif early is not None and early.best_weights is not None:
            model.set_weights(early.best_weights)  # crashed after the last epoch: finish what fit would have done


class _EpochLog(keras.callbacks.Callback):
    """Per epoch only (no batch hooks, so Keras dispatches steps without waiting): metrics, wall seconds, and the
    training steps' own seconds and img/s (validation excluded)."""

    def __init__(self, history: list[dict], phase: str, images: int):
        super().__init__()
        self.history = history
        self.phase = phase
        self.images = images
        self._t0 = self._val_t0 = self._val_seconds = 0.0
        self._train = feeding.EpochThroughput()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._val_seconds = 0.0
        self._train.begin()

    def on_test_begin(self, logs=None):  # fit validates after the epoch's training steps
        self._train.end(self.model)
        self._val_t0 = time.perf_counter()

    def on_test_end(self, logs=None):
        self._val_seconds += time.perf_counter() - self._val_t0

    def on_epoch_end(self, epoch, logs=None):
        self._train.end(self.model)  # no validation this epoch
        logs = logs or {}
        entry = {"epoch": epoch + 1}
        entry.update({k: (float(logs[k]) if k in logs else None) for k in HISTORY_KEYS})
        entry["seconds"] = round(time.perf_counter() - self._t0, 3)
        entry["train_seconds"] = round(self._train.seconds, 3)
        entry["img_per_s"] = self._train.img_per_s(self.images)
        entry["val_seconds"] = round(self._val_seconds, 3)  # of `seconds`
        entry["phase"] = self.phase
        entry["learning_rate"] = _current_lr(self.model)
        self.history.append(entry)


class _CheckpointEachEpoch(keras.callbacks.Callback):
    def __init__(self, run: _Run, early: ResumableEarlyStopping | None):
        super().__init__()
        self.run, self.early = run, early

    def on_epoch_end(self, epoch, logs=None):
        extra = {"stopped": bool(self.model.stop_training), "also_needs": self.run.also_needs,
                 "phase": self.run.phase}
        best_weights = None
        if self.early is not None:
            extra["early_stopping"] = self.early.snapshot()
            if self.early.best_epoch == epoch and self.early.best_weights is not None:
                best_weights = self.early.best_weights
        self.run.checkpoints.save(self.model, epoch + 1, self.run.history, self.run.weights, extra, best_weights)


def _stratified_subset(y: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of `limit` images, each class in proportion to its share of `y`, chosen at random (seeded)."""
    order = np.random.default_rng(seed).permutation(len(y))
    rank = np.empty(len(y))
    for c in np.unique(y):
        members = order[y[order] == c]
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    picked = order[np.argsort(rank[order], kind="stable")][:limit]
    return np.sort(picked)


def mixed_precision_enabled(settings: Settings) -> bool:
    """Mixed precision per `settings.mixed_precision`: "on", "off", or "auto" (on exactly when a GPU is visible)."""
    if settings.mixed_precision == "auto":
        return runtime.gpu_available()
    return settings.mixed_precision == "on"


def _best_epoch(history: list[dict], v: Variant, warmup_epochs: int) -> int | None:
    """1-based epoch with the best `v.monitor` among the main phase's epochs (the first one on ties)."""
    sign = 1.0 if v.monitor_mode == "max" else -1.0
    scored = [(sign * float(h[v.monitor]), -i) for i, h in enumerate(history)
              if i >= warmup_epochs and h.get(v.monitor) is not None and np.isfinite(h[v.monitor])]
    return -max(scored)[1] + 1 if scored else None


def _current_lr(model: keras.Model) -> float | None:
    try:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except Exception:  # an optimizer without a readable LR must not fail the training
        return None


def _weights_label(resolved: str | None) -> str:
    return "none" if resolved is None else resolved


def _copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy weights between the layers the two models share by name (the head layers)."""
    names = {layer.name for layer in source.layers}
    for layer in target.layers:
        if layer.weights and layer.name in names:
            layer.set_weights(source.get_layer(layer.name).get_weights())


