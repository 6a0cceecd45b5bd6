"""Data augmentation as one Keras layer that runs inside the model, on the device, vectorised over the batch:
a horizontal flip, an integer translation (reflect-padded, "pad and crop") and a brightness shift, each drawn
per image from the layer's seed. Identity outside training.

The flip and the translation are one row and one column permutation per image, applied as two batched one-hot
matrix products: plain matmuls that cost the same on TensorFlow and JAX (Keras's `RandomTranslation` interpolates
through `map_coordinates`, which is slow under JAX). Pixel values stay exact: each output pixel is one input
pixel times 1.0. The layer is registered with Keras (`tl_tasks>RandomAugment`): loading a model that holds one
needs `tl_tasks.training.augment` imported (`tl_tasks.training.builders` does it).
"""
from __future__ import annotations

import keras
from keras import ops

from tl_tasks.training import runtime  # noqa: F401  (sets TF/XLA environment variables before Keras loads)

# How the variants' augmentation kinds (Variant.augment) map to the layer's settings.
KINDS: dict[str, dict] = {
    "flip": dict(flip=True),                                  # the CNN (translation cost it accuracy: RESULTS.md)
    "full": dict(flip=True, translate=0.1, brightness=0.2),   # v3/v4: flip, brightness, translation
}


@keras.saving.register_keras_serializable(package="tl_tasks")
class RandomAugment(keras.layers.Layer):
    """Per-image random flip, translation (up to `translate` x the side, in whole pixels, reflected at the
    edges) and brightness shift (up to `brightness` x 255, clipped to [0, 255]) of [0, 255] float images."""

    def __init__(self, flip: bool = True, translate: float = 0.0, brightness: float = 0.0, seed: int | None = None,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")  # exact pixel arithmetic under mixed precision too
        super().__init__(**kwargs)
        if not 0.0 <= translate < 0.5 or not 0.0 <= brightness <= 1.0:
            raise ValueError(f"translate={translate!r} must be in [0, 0.5) and brightness={brightness!r} in [0, 1]")
        self.flip, self.translate, self.brightness, self.seed = bool(flip), float(translate), float(brightness), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, images, training=None):
        if not training:
            return images
        x = ops.cast(images, self.compute_dtype)
        n = ops.shape(x)[0]
        height, width = int(x.shape[1]), int(x.shape[2])
        if self.translate or self.flip:
            rows = self._source_index(n, height, flip=False)
            cols = self._source_index(n, width, flip=self.flip)
            if self.translate:
                x = ops.einsum("bij,bjwc->biwc", ops.one_hot(rows, height, dtype=x.dtype), x)
            x = ops.einsum("bkj,bijc->bikc", ops.one_hot(cols, width, dtype=x.dtype), x)
        if self.brightness:
            delta = keras.random.uniform((n, 1, 1, 1), -self.brightness * 255.0, self.brightness * 255.0,
                                         dtype=x.dtype, seed=self.seed_generator)
            x = ops.clip(x + delta, 0.0, 255.0)
        return x

    def _source_index(self, n, size: int, *, flip: bool):
        """(n, size) int32: for each image, which input row/column each output row/column takes."""
        position = ops.arange(size, dtype="int32")[None, :]
        max_shift = int(round(self.translate * size))
        if max_shift:
            shift = keras.random.randint((n, 1), -max_shift, max_shift + 1, dtype="int32", seed=self.seed_generator)
            position = position - shift
        if flip:
            mirrored = keras.random.randint((n, 1), 0, 2, dtype="int32", seed=self.seed_generator)
            position = ops.where(mirrored == 1, size - 1 - position, position)
        # reflect at the edges ("d c b | a b c d | c b a"), as RandomTranslation(fill_mode="reflect")
        position = ops.abs(position)
        return (size - 1) - ops.abs((size - 1) - position)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "translate": self.translate,
                "brightness": self.brightness, "seed": self.seed}


def augmentation(kind: str, seed: int) -> RandomAugment:
    """The augmentation layer of a variant's `augment` kind ("flip" or "full")."""
    if kind not in KINDS:
        raise ValueError(f"augment={kind!r}; choose one of {', '.join(KINDS)}")
    return RandomAugment(**KINDS[kind], seed=seed, name="augment")
