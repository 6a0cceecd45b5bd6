"""TL_HOME, run keys (every path under TL_HOME: tl_tasks.layout), the Settings of a run and the run profiles
(smoke, quick, full).

Resolution order for every setting: profile default < explicit override (DAG trigger param or command-line
option; see `tl_tasks.schema`, the one list of run parameters). The environment holds deployment facts only
(TL_HOME, TL_METRICS_DB_URL, TL_DATA_ROOTS, TL_SCHEDULE, ...), never a run's settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tl_tasks.errors import BadInput
from tl_tasks.variants import VARIANT_NAMES, get_variant

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROFILE_NAMES = ("smoke", "quick", "full")
DAG_ID = "cifar10_retraining"  # the retraining DAG (dags/<DAG_ID>.py): its runs are the reports' runs
GPU_POOL = "gpu"  # the Airflow pool of train/evaluate (make airflow / make run create it; compose's airflow-init too)


def schedule_from_env(name: str, default: str) -> str | None:
    """A DAG's schedule from environment variable `name` (a cron expression or preset, default `default`);
    `none`, `off`, `null` or empty = no clock (triggered runs only)."""
    value = os.environ.get(name, default).strip()
    return None if value.lower() in ("", "none", "null", "off") else value


DEFAULT_PROFILE = "quick"

# The gate's defaults (trigger form and command line): a drop smaller than half a point is not worth blocking a
# model for: it is about the seed-to-seed spread of retraining the same recipe, and on CIFAR-10's 10,000 test
# images the paired test can resolve it (README).
DEFAULT_TOLERANCE = 0.005
DEFAULT_ALPHA = 0.05
# Three points of recall within one class. On CIFAR-10's 1,000 test images per class, retraining the same recipe
# with another seed moves a class's recall by one to two points (the cat/dog pair trades more); a drop the paired
# test confirms beyond three points is a real loss on that class, not a reshuffle. README: "Per-class gate".
DEFAULT_CLASS_TOLERANCE = 0.03
DEFAULT_CLASS_GATE = True


def tl_home() -> Path:
    """Root of everything the workflow writes: `$TL_HOME`, default `<project>/tl_home`."""
    return Path(os.environ.get("TL_HOME") or PROJECT_ROOT / "tl_home").expanduser().resolve()


def keras_home() -> Path:
    """Where Keras caches downloads (datasets/, models/): `$KERAS_HOME`, else `~/.keras`, Keras's own rule."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def file_name_slug(text: str, limit: int) -> str:
    """`text` with every run of characters unsafe in a file name replaced by "_", trimmed to `limit` characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text).strip()).strip("._")[:limit]


def run_key(run_id: str) -> str:
    """A file-name-safe, collision-free key for a run id: a readable slug plus a short hash of the exact id,
    e.g. 'manual__2026-11-22T10_00_00_00_00-3f2a9c1b' ('a:b' and 'a_b' get different keys)."""
    if not run_id or not str(run_id).strip():
        raise BadInput("run_id is empty; pass a run id such as --run-id my-first-run")
    text = str(run_id).strip()
    slug = file_name_slug(text, 120) or "run"
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Settings:
    """Everything one run needs besides the variant registry. JSON-serialisable via `to_dict()`."""

    profile: str
    dataset: str
    weights: str                      # "imagenet", "auto", "none", or a path to a local .h5/.keras file
    image_size: int                   # input size of the ResNet50 family (the CNN always uses the data's size)
    batch_size: int
    epochs: dict[str, int]            # per family: {"cnn": n, "resnet50": n}
    limit_per_class: int | None       # applied when preparing data (None = all images)
    train_limit: dict[str, int | None]  # per family: at most this many training images (stratified subset)
    val_fraction: float = 0.1
    seed: int = 42
    data_size: int = 32               # pixel size that prepared images are stored at
    variants: tuple[str, ...] = VARIANT_NAMES
    head_warmup_epochs: int = 0       # of the resnet50 epochs, how many train the head alone (variants with one)
    mixed_precision: str = "auto"     # "auto" (on when a GPU is visible), "on" or "off"
    data_parallel: bool = False       # one variant across all of the worker's devices (else one device per task)
    robustness_images: int = 1000     # test images (stratified subset) scored under the corruption suite; 0 = off
    gpu_batch_size: int | None = None  # batch size on a GPU (None = batch_size); an explicit batch_size clears it
    # per family: at most this many validation images (stratified subset); None = the whole validation split
    val_limit: dict[str, int | None] = field(default_factory=lambda: {"cnn": None, "resnet50": None})
    eval_batch_size: int = 250        # images per inference step: evaluation and the frozen base's feature pass

    def epochs_for(self, variant: str) -> int:
        return self.epochs[get_variant(variant).family]

    def head_warmup_epochs_for(self, variant: str) -> int:
        """Head warm-up epochs of `variant`: 0 without a warm-up phase; always leaves >= 1 fine-tuning epoch."""
        v = get_variant(variant)
        if not v.has_head_warmup:
            return 0
        return max(0, min(self.head_warmup_epochs, self.epochs[v.family] - 1))

    def recipe(self) -> dict:
        """The profile's training settings, each with its one-line reason (recorded in the train summary)."""
        return {k: {"value": getattr(self, k), "reason": r} for k, r in SETTING_REASONS[self.profile].items()}

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["variants"] = list(self.variants)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Settings:
        """Settings from `to_dict()`'s form; fields it lacks (settings.json written before they existed) take
        its profile's values, not the dataclass defaults."""
        profile = PROFILES.get(d.get("profile"))
        d = {**(profile.to_dict() if profile else {}), **d}
        d["variants"] = tuple(d.get("variants") or VARIANT_NAMES)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})  # e.g. "patience", now per variant


# Settings that change only how a trained model is evaluated: neither the checkpoint signature nor skip-unchanged
# compares them, so changing them never retrains.
EVALUATION_ONLY = ("eval_batch_size", "robustness_images")

# The quick profile's corruption subset: 18 corrupted copies of it may add at most 30% to evaluating the 10,000
# test images on a CPU (bench: bench_robustness.py).
QUICK_ROBUSTNESS_IMAGES = 120

PROFILES: dict[str, Settings] = {
    # Tests: synthetic data, a few hundred images, one epoch; seconds on a CPU.
    "smoke": Settings(
        profile="smoke", dataset="synthetic", weights="none", image_size=32, batch_size=32,
        epochs={"cnn": 1, "resnet50": 1}, limit_per_class=40, train_limit={"cnn": None, "resnet50": 64},
        robustness_images=30,
        eval_batch_size=80,
    ),
    # A CPU laptop: all of the data for the CNN, a small subset for the (slow on CPU) ResNet50s. Works offline:
    # cifar10 resolves to a local copy when there is one (tl_tasks.data.local), auto = ImageNet when obtainable.
    "quick": Settings(
        profile="quick", dataset="cifar10", weights="auto", image_size=32, batch_size=64,
        epochs={"cnn": 8, "resnet50": 2}, limit_per_class=None, train_limit={"cnn": None, "resnet50": 256},
        robustness_images=QUICK_ROBUSTNESS_IMAGES,
        val_limit={"cnn": None, "resnet50": 256},
    ),
    # A GPU worker: all of CIFAR-10, 224 px for ResNet50, head warm-up then the original recipe's 10 fine-tuning epochs.
    "full": Settings(
        profile="full", dataset="cifar10", weights="imagenet", image_size=224, batch_size=64,
        epochs={"cnn": 40, "resnet50": 12}, limit_per_class=None, train_limit={"cnn": None, "resnet50": None},
        head_warmup_epochs=2, gpu_batch_size=256,
    ),
}

_COMMON_REASONS = {
    "batch_size": "64 fits ResNet50 at 224 px with Adam state on a 16 GB GPU; small enough for many updates",
    "val_fraction": "10% of train (5,000 CIFAR-10 images) gives val_accuracy a standard error under 0.5 points",
    "seed": "one seed for splits, initialisation, shuffling, dropout and augmentation: reruns are comparable",
    "data_parallel": "off: one variant per GPU keeps every card busy without gradient all-reduce traffic; on "
                     "for one big variant across a worker's GPUs",
    "mixed_precision": "auto = float16 compute on a GPU (tensor cores, half the memory), float32 on a CPU where "
                       "float16 is slower; the softmax layer stays float32 either way",
    "eval_batch_size": "250 divides CIFAR-10's 10,000 test images (one batch shape, so one traced inference step; "
                       "other sizes pad the last batch) and infers ~14% faster than 64 on a CPU (256: 545 against 478 img/s); "
                       "inference keeps no "
                       "activations for backprop, so it fits where training at 64 does",
}
SETTING_REASONS: dict[str, dict[str, str]] = {
    "smoke": {
        "epochs": "one epoch: the tests check that everything runs, not what it learns",
        "image_size": "32 px: no resize cost, seconds on a CPU",
        "head_warmup_epochs": "0: one epoch leaves no room for a warm-up phase",
        "train_limit": "64 images (two steps) for the ResNet50s: on a CPU, tracing their training step costs more "
                       "than the steps themselves, and the tests check that they run, not what they learn",
        "robustness_images": "30: the whole suite runs in seconds on the synthetic test set",
        **_COMMON_REASONS,
        "eval_batch_size": "80: the smoke test split (8 images x 10 classes) in one step",
    },
    "quick": {
        "epochs": "cnn 8 (66.4% test accuracy); resnet50 2 on 256 images: the ResNet50s show the whole workflow "
                  "working, at a cost a 2-core laptop can wait for",
        "image_size": "32 px: ResNet50 at 224 px trains at ~5 img/s on a CPU",
        "train_limit": "256 images (4 steps of 64) for the ResNet50s: their CPU cost, not their accuracy, sets the "
                       "quick budget; without ImageNet weights they stay near chance either way (13-14% test "
                       "accuracy on 256 images, 16-19% on 500), and a CPU without AVX-512 trains them at ~16 img/s",
        "val_limit": "256 validation images for the ResNet50s, as many as they train on: validating on all 5,000 "
                     "each epoch was most of their epoch time; val_accuracy's standard error stays ~3 points",
        "head_warmup_epochs": "0: two epochs on 256 images are too few to split into phases",
        "robustness_images": f"{QUICK_ROBUSTNESS_IMAGES}: 18 corrupted copies add at most 30% to evaluation on a "
                             "CPU (bench: 22.5% of a quick run's test inference); each cell's accuracy within about 9 points "
                             "(95%)",
        **_COMMON_REASONS,
    },
    "full": {
        "epochs": "cnn 40: its cosine schedule anneals over 40 epochs, and early stopping (patience 5) ends it "
                  "sooner once val_accuracy stalls; resnet50 12 = "
                  "2 head warm-up + the original recipe's 10 fine-tuning epochs",
        "image_size": "224 px, the resolution the ImageNet weights were trained at (Kornblith et al. 2019)",
        "train_limit": "none: all 45,000 training images",
        "robustness_images": "1,000 (10 classes x 100), as CIFAR-10-C-style studies report: each cell's "
                             "accuracy within about 3 points (95%)",
        "gpu_batch_size": "256 on a GPU: batch 64 leaves an H100/H200 mostly idle between ResNet50 steps at 224 px "
                          "(6,578 img/s at 256 in the benchmark); a CPU keeps 64 (more updates per epoch, "
                          "no speed to gain)",
        "val_limit": "none: all 5,000 validation images (early stopping and the best epoch follow val_accuracy)",
        "head_warmup_epochs": "2 epochs of head-only training at the warm-up LR bring the head close to its optimum "
                              "before the base is unfrozen",
        **_COMMON_REASONS,
    },
}
