"""Checkpoints and resume: the model after each completed epoch with its state, so a crashed training resumes
from the last completed epoch (one epoch back when that file is damaged), and a finished training is reused as is.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import shutil
from pathlib import Path

import keras
import numpy as np

from tl_tasks import layout
from tl_tasks.config import EVALUATION_ONLY, Settings
from tl_tasks.files import copy_file_atomic, sha256_file, write_atomic, write_json_atomic
from tl_tasks.layout import ModelFiles
from tl_tasks.variants import Variant

log = logging.getLogger(__name__)


def reusable(files: ModelFiles, signature: dict, epochs: int) -> dict | None:
    """The finished training in `files` if it was made with `signature` and `epochs` and its model is intact."""
    try:
        summary = json.loads(files.train_summary.read_text())
        finished = json.loads(files.finished.read_text())
    except (OSError, ValueError):
        return None
    model_path = files.model
    if (summary.get("state") != "success" or finished.get("signature") != signature
            or finished.get("epochs") != epochs or not model_path.is_file()
            or finished.get("model_sha256") != sha256_file(model_path)):
        return None
    return summary


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters and best weights survive a crash (they live in the checkpoint state)."""

    _resume: dict | None = None

    def resume_from(self, state: dict | None, checkpoints: Checkpoints) -> None:
        saved = (state or {}).get("early_stopping")
        if saved:
            # the weights file must be the snapshot's best epoch (after a fallback it may be a later one's)
            self._resume = dict(saved, best_weights=checkpoints.load_best_weights(saved.get("best_epoch")))
            self.best_weights = self._resume["best_weights"]

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._resume:
            self.wait, self.best = self._resume["wait"], self._resume["best"]
            self.best_epoch, self.best_weights = self._resume["best_epoch"], self._resume["best_weights"]

    def snapshot(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {"wait": int(self.wait), "best": best, "best_epoch": int(self.best_epoch)}


class Checkpoints:
    """`checkpoints/`: the model after the last completed epoch plus `state.json` (epoch, history, signature)."""

    STATE = layout.CHECKPOINT_STATE_FILE
    PREVIOUS_STATE = layout.CHECKPOINT_PREVIOUS_STATE_FILE
    INITIAL_MODEL = layout.CHECKPOINT_INITIAL_MODEL
    BEST_WEIGHTS = layout.CHECKPOINT_BEST_WEIGHTS

    def __init__(self, directory: Path, signature: dict):
        self.directory = directory
        self.signature = signature

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def load(self) -> dict | None:
        """The newest usable checkpoint state; its `fallback` key holds the one before, if any."""
        state = self._load_one(self.directory / self.STATE)
        previous = self._load_one(self.directory / self.PREVIOUS_STATE)
        if state is None:
            return previous
        if previous is not None and previous.get("completed_epochs", 0) < state.get("completed_epochs", 0):
            state["fallback"] = previous
        return state

    def _load_one(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        state = self._read(path)
        if state is None:
            log.warning("ignoring unreadable checkpoint state %s", path)
            return None
        if state.get("signature") != self.signature:
            log.warning("checkpoints in %s were made with other settings or data; training from scratch",
                        self.directory)
            return None
        needed = [state.get("model_file") or "", *state.get("also_needs", [])]
        if not all((self.directory / name).is_file() for name in needed):
            log.warning("checkpoint files in %s are incomplete; training from scratch", self.directory)
            return None
        return state

    def load_model(self, state: dict) -> keras.Model:
        return keras.models.load_model(self.directory / state["model_file"], safe_mode=True)

    def load_best_weights(self, epoch: int | None = None) -> list[np.ndarray] | None:
        """The saved best weights, or None when there are none or they belong to another epoch than `epoch`."""
        path = self.directory / self.BEST_WEIGHTS
        if not path.is_file():
            return None
        with np.load(path) as f:
            if epoch is not None and "best_epoch" in f.files and int(f["best_epoch"]) != int(epoch):
                log.warning("best weights in %s are of epoch %d, not %d; early stopping keeps the resumed weights",
                            path, int(f["best_epoch"]) + 1, int(epoch) + 1)
                return None
            return [f[f"arr_{i}"] for i in range(len([n for n in f.files if n.startswith("arr_")]))]

    def save_initial(self, model: keras.Model) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        save_model_atomic(model, self.directory / self.INITIAL_MODEL)

    def save(self, model, completed: int, history: list[dict], weights: str, extra: dict,
             best_weights: list | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = layout.checkpoint_epoch_file(completed)
        save_model_atomic(model, self.directory / name)
        if best_weights is not None:
            target = self.directory / self.BEST_WEIGHTS

            def write(tmp: Path) -> None:
                with open(tmp, "wb") as f:
                    np.savez(f, *best_weights, best_epoch=np.asarray(completed - 1))

            write_atomic(target, write)
        state = {"signature": self.signature, "completed_epochs": completed, "model_file": name,
                 "history": history, "weights": weights, **extra}
        # The state is written after the weights it names (both fsynced); the previous state is kept as a
        # fallback, so an epoch file that cannot be loaded falls back one epoch.
        current = self.directory / self.STATE
        if current.is_file():
            copy_file_atomic(current, self.directory / self.PREVIOUS_STATE)
        write_json_atomic(current, state)
        keep = {name, (self._read(self.directory / self.PREVIOUS_STATE) or {}).get("model_file")}
        for old in self.directory.glob(layout.CHECKPOINT_EPOCH_GLOB):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def previous_attempt(files: ModelFiles, checkpoints: Checkpoints) -> dict | None:
    """The checkpoint state to resume from, or None after cleaning up for a fresh training."""
    if not _finished(files):
        state = checkpoints.load()
        if state is not None:
            return state
    checkpoints.clear()
    for path in files.training_outputs():  # they describe the model being replaced
        path.unlink(missing_ok=True)
    return None


def _finished(files: ModelFiles) -> bool:
    try:
        summary = json.loads(files.train_summary.read_text())
    except (OSError, ValueError):
        return False
    return summary.get("state") == "success" and files.model.is_file()


def signature(v: Variant, settings: Settings, fingerprint: str, y_train: np.ndarray, y_val: np.ndarray) -> dict:
    """What must match for a checkpoint to be resumable (epochs may change: a longer rerun continues)."""
    ignored = {"epochs", "variants", "profile", *EVALUATION_ONLY}
    sig = {
        "variant": dataclasses.asdict(v),
        "settings": {k: val for k, val in settings.to_dict().items() if k not in ignored},
        "data": fingerprint or [len(y_train), int(y_train.sum()), len(y_val)],
        "backend": keras.backend.backend(),
    }
    return json.loads(json.dumps(sig))


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """Save to a unique temporary name (keeping the .keras suffix Keras insists on), fsync, rename, fsync the
    folder: a crash or a full disk leaves the previous file intact, never a truncated one under `path`."""
    try:
        write_atomic(path, model.save, keep_suffix=True)
    except BaseException as exc:
        if _disk_full(exc):
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.ENOSPC, f"no space left on the device while writing {path} ({free} bytes free "
                                        f"there); {path.name} and any earlier checkpoint are intact. Free space "
                                        f"or point TL_HOME at a larger disk, then retry: training resumes from "
                                        f"the last complete checkpoint") from exc
        raise


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain (Keras and h5py wrap the OSError in their own errors)."""
    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
