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
from dataclasses import dataclass
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
        d = dict(d)
        d["variants"] = tuple(d.get("variants") or VARIANT_NAMES)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})  # e.g. "patience", now per variant


PROFILES: dict[str, Settings] = {
    # Tests: synthetic data, a few hundred images, one epoch; seconds on a CPU.
    "smoke": Settings(
        profile="smoke", dataset="synthetic", weights="none", image_size=32, batch_size=32,
        epochs={"cnn": 1, "resnet50": 1}, limit_per_class=40, train_limit={"cnn": None, "resnet50": None},
    ),
    # A CPU laptop: all of the data for the CNN, a small subset for the (slow on CPU) ResNet50s. Works offline:
    # cifar10 resolves to a local copy when there is one (tl_tasks.data.local), auto = ImageNet when obtainable.
    "quick": Settings(
        profile="quick", dataset="cifar10", weights="auto", image_size=32, batch_size=64,
        epochs={"cnn": 8, "resnet50": 2}, limit_per_class=None, train_limit={"cnn": None, "resnet50": 500},
    ),
    # A GPU worker: all of CIFAR-10, 224 px for ResNet50, head warm-up then the original recipe's 10 fine-tuning epochs.
    "full": Settings(
        profile="full", dataset="cifar10", weights="imagenet", image_size=224, batch_size=64,
        epochs={"cnn": 40, "resnet50": 12}, limit_per_class=None, train_limit={"cnn": None, "resnet50": None},
        head_warmup_epochs=2,
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
}
SETTING_REASONS: dict[str, dict[str, str]] = {
    "smoke": {
        "epochs": "one epoch: the tests check that everything runs, not what it learns",
        "image_size": "32 px: no resize cost, seconds on a CPU",
        "head_warmup_epochs": "0: one epoch leaves no room for a warm-up phase",
        **_COMMON_REASONS,
    },
    "quick": {
        "epochs": "cnn 8; resnet50 2 on 500 images: keeps `make run` under 10 minutes",
        "image_size": "32 px: ResNet50 at 224 px trains at ~5 img/s on a CPU",
        "train_limit": "500 images for the ResNet50s: their CPU cost, not their accuracy, sets the quick budget",
        "head_warmup_epochs": "0: two epochs on 500 images are too few to split into phases",
        **_COMMON_REASONS,
    },
    "full": {
        "epochs": "cnn 40: its cosine schedule anneals over 40 epochs, and early stopping (patience 5) ends it "
                  "sooner once val_accuracy stalls; resnet50 12 = "
                  "2 head warm-up + the original recipe's 10 fine-tuning epochs",
        "image_size": "224 px, the resolution the ImageNet weights were trained at (Kornblith et al. 2019)",
        "train_limit": "none: all 45,000 training images",
        "head_warmup_epochs": "2 epochs of head-only training at the warm-up LR bring the head close to its optimum "
                              "before the base is unfrozen",
        **_COMMON_REASONS,
    },
}
