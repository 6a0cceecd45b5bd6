"""The variant registry: each model the workflow trains is one frozen dataclass here."""
from __future__ import annotations

from dataclasses import dataclass

from tl_tasks.errors import BadInput


@dataclass(frozen=True)
class Variant:
    name: str
    family: str                        # "cnn" or "resnet50"
    description: str
    trainable_from: str | None = None  # None = frozen base; a layer name = unfreeze from that block on
    learning_rate: float = 1e-3
    augment: bool = False
    early_stopping: bool = False
    head_dropout: float = 0.0

    @property
    def frozen_base(self) -> bool:
        return self.family == "resnet50" and self.trainable_from is None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("cnn", "cnn", "Small CNN: 2 x (Conv2D + MaxPool), Dense 128 + Dropout, at native size"),
        Variant("resnet50_v1", "resnet50", "ResNet50 frozen, new GAP + Dense 128 head"),
        Variant("resnet50_v2", "resnet50", "v1 with the base unfrozen (BatchNorm in inference mode), lower LR",
                trainable_from="conv1_conv", learning_rate=1e-4),
        Variant("resnet50_v3", "resnet50", "v2 + data augmentation (flip, brightness, translation)",
                trainable_from="conv1_conv", learning_rate=1e-4, augment=True),
        Variant("resnet50_v4", "resnet50", "v3 + early stopping (best weights restored) + head dropout",
                trainable_from="conv1_conv", learning_rate=1e-4, augment=True, early_stopping=True,
                head_dropout=0.3),
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
