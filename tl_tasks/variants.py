"""The variant registry: each model the workflow trains is one frozen dataclass here, with its training recipe.

Every hyperparameter of a variant is a field below; `HYPERPARAMETER_REASONS` gives the one-line reason for each
(the profile's own settings, e.g. epochs and the head warm-up length, are explained in `config.SETTING_REASONS`).
`Variant.recipe()` is what a training records in its summary.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tl_tasks.errors import BadInput

OPTIMIZERS = ("adam", "adamw")
AUGMENTATIONS = ("", "flip", "full")
LR_SCHEDULES = ("constant", "cosine")
MONITORS = {"val_accuracy": "max", "val_loss": "min"}


@dataclass(frozen=True)
class Variant:
    name: str
    family: str                        # "cnn" or "resnet50"
    description: str
    trainable_from: str | None = None  # None = frozen base; a layer name = unfreeze from that block on
    learning_rate: float = 1e-3        # peak learning rate of the main (fine-tuning) phase
    optimizer: str = "adam"            # "adam" or "adamw" (decoupled weight decay)
    weight_decay: float = 0.0          # AdamW's decoupled weight decay (0 with "adam")
    label_smoothing: float = 0.0       # cross-entropy against (1 - s) one-hot + s / classes
    lr_schedule: str = "constant"      # "constant" or "cosine" (cosine decay to 0 over the phase)
    lr_warmup_fraction: float = 0.0    # share of the main phase's steps with a linear LR warm-up from 0
    head_warmup_lr: float | None = None  # LR of the head warm-up phase (base frozen); None = no warm-up phase
    augment: str = ""                  # "" none, "flip" (horizontal flips), "full" (flip, brightness, translation)
    early_stopping: bool = False
    monitor: str = "val_accuracy"      # what early stopping and best_epoch watch
    patience: int = 5                  # epochs without improvement before early stopping stops
    head_dropout: float = 0.0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"variant {self.name}: optimizer={self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"variant {self.name}: lr_schedule={self.lr_schedule!r}; choose one of {LR_SCHEDULES}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"variant {self.name}: augment={self.augment!r}; choose one of {AUGMENTATIONS}")
        if self.monitor not in MONITORS:
            raise ValueError(f"variant {self.name}: monitor={self.monitor!r}; choose one of {tuple(MONITORS)}")
        if not 0.0 <= self.lr_warmup_fraction < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"variant {self.name}: lr_warmup_fraction and label_smoothing must be in [0, 1)")

    @property
    def frozen_base(self) -> bool:
        return self.family == "resnet50" and self.trainable_from is None

    @property
    def has_head_warmup(self) -> bool:
        """A head warm-up phase (base frozen) runs before fine-tuning: unfrozen ResNet50s with a warm-up LR."""
        return self.family == "resnet50" and not self.frozen_base and self.head_warmup_lr is not None

    @property
    def monitor_mode(self) -> str:
        return MONITORS[self.monitor]

    def recipe(self) -> dict:
        """The variant's hyperparameters, each with its one-line reason (recorded in the train summary)."""
        return {f.name: {"value": getattr(self, f.name), "reason": HYPERPARAMETER_REASONS[f.name]}
                for f in dataclasses.fields(self) if f.name in HYPERPARAMETER_REASONS}


HYPERPARAMETER_REASONS: dict[str, str] = {
    "trainable_from": "None keeps the ImageNet features fixed (v1); 'conv1_conv' fine-tunes the whole base "
                      "(BatchNorm frozen, inference mode), which is what reaches ~96-97% (Kornblith et al. 2019)",
    "learning_rate": "1e-3 for a freshly initialised network or head; 1e-4 for a pretrained base, whose "
                     "ImageNet features large steps would destroy",
    "optimizer": "AdamW for fine-tuning (decoupled weight decay regularises the 23M base weights); plain Adam "
                 "for the original CNN recipe and the small frozen-feature head",
    "weight_decay": "0.05 is AdamW's usual fine-tuning value (decoupled, so independent of the LR); 0 with Adam",
    "label_smoothing": "0.1 curbs the overconfidence that makes val_loss rise while accuracy still improves; "
                       "0 for the CNN, kept as its original recipe trained it",
    "lr_schedule": "cosine decay to 0 over the phase anneals into a flat minimum: +1-2 points over a constant "
                   "LR, whose CNN run plateaued at 69.4% test accuracy (21 epochs, full profile)",
    "lr_warmup_fraction": "a linear warm-up over the first 10% of fine-tuning steps lets Adam's moment estimates "
                          "settle before full-size steps reach the pretrained base",
    "head_warmup_lr": "1e-3 trains the random head on the frozen base first, so its large early gradients never "
                      "reach (and scramble) the pretrained weights",
    "augment": "'full' (flip, brightness, translation) fights overfitting on 45,000 images (v3, v4); the CNN "
               "gets horizontal flips only: free extra data that keeps it improving past its 69% plateau",
    "early_stopping": "stops once the monitored metric stops improving and restores the best epoch's weights",
    "monitor": "val_accuracy (mode max): under fine-tuning val_loss bottoms out early from overconfidence while "
               "accuracy still rises, so watching val_loss restores a too-early epoch",
    "patience": "5 epochs, as in the original recipe: long enough to ride out the noise of one validation epoch",
    "head_dropout": "0.3 before the classifier regularises the head of v4",
}

# Shared by the fine-tuned ResNet50s (v2-v4): the full-scale recipe.
_FINE_TUNE = dict(trainable_from="conv1_conv", learning_rate=1e-4, optimizer="adamw", weight_decay=0.05,
                  label_smoothing=0.1, lr_schedule="cosine", lr_warmup_fraction=0.1, head_warmup_lr=1e-3)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("cnn", "cnn", "Small CNN: 2 x (Conv2D + MaxPool), Dense 128 + Dropout, at native size; flips, cosine "
                "LR decay, early stopping on val_accuracy (best weights restored)",
                augment="flip", lr_schedule="cosine", early_stopping=True),
        Variant("resnet50_v1", "resnet50", "ResNet50 frozen, new GAP + Dense 128 head",
                label_smoothing=0.1, lr_schedule="cosine", lr_warmup_fraction=0.1),
        Variant("resnet50_v2", "resnet50", "v1 with the base unfrozen (BatchNorm in inference mode): head warm-up, "
                "then AdamW fine-tuning with cosine decay", **_FINE_TUNE),
        Variant("resnet50_v3", "resnet50", "v2 + data augmentation (flip, brightness, translation)",
                augment="full", **_FINE_TUNE),
        Variant("resnet50_v4", "resnet50", "v3 + early stopping on val_accuracy (best weights restored) + head dropout",
                augment="full", early_stopping=True, head_dropout=0.3, **_FINE_TUNE),
    )
}

VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)


def get_variant(name: str) -> Variant:
    """Return the registered variant called `name`, or raise a ValueError listing the valid names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise BadInput(
            f"variant={name!r} is not a known variant; choose one of {', '.join(VARIANT_NAMES)}"
        ) from None


def variant_sort_key(name: str) -> tuple[int, str]:
    """Sort key that lists variants as the registry does; names it does not know come last, alphabetically."""
    try:
        return VARIANT_NAMES.index(name), ""
    except ValueError:
        return len(VARIANT_NAMES), name


def in_registry_order(names) -> list[str]:
    """`names` (any iterable of variant names) sorted as the registry lists them, unknown names last."""
    return sorted(names, key=variant_sort_key)
