"""The augmentation layer on TensorFlow and on JAX (TensorFlow blocked): per-image random values, exact pixels,
shape and dtype kept, identity at inference, seeded, and trainable inside a compiled train step."""
from __future__ import annotations

import json

import pytest

from tests.backend_helpers import run_backend

_CHECK = """
import json
import numpy as np, keras
from tl_tasks.training.augment import RandomAugment, augmentation

rng = np.random.default_rng(0)
image = rng.integers(0, 256, (1, 32, 32, 3)).astype("float32")
batch = np.repeat(image, 16, axis=0)
out = {}
layers = {"flip": lambda: augmentation("flip", seed=5), "full": lambda: augmentation("full", seed=5),
          "flip_shift": lambda: RandomAugment(flip=True, translate=0.125, seed=5)}  # pad-and-crop, 4 px
for kind, make in layers.items():
    layer = make()
    y = keras.ops.convert_to_numpy(layer(batch, training=True))
    same = keras.ops.convert_to_numpy(make()(batch, training=True))
    out[kind] = {
        "shape": list(y.shape), "dtype": str(y.dtype),
        "distinct": len({a.tobytes() for a in y}),
        "inference_identity": bool(np.array_equal(keras.ops.convert_to_numpy(layer(batch, training=False)), batch)),
        "seeded": bool(np.array_equal(y, same)),
        "in_range": bool(y.min() >= 0 and y.max() <= 255),
        # without brightness every output pixel is an input pixel (exact: no interpolation)
        "exact": bool(np.isin(y, image).all()),
    }
# one row of a translated-only image: shifted by at most round(0.125 * 32) = 4 columns, reflected at the edges
row = np.arange(32, dtype="float32")[None, None, :, None] * np.ones((64, 8, 1, 3), "float32")
shifted = keras.ops.convert_to_numpy(RandomAugment(flip=False, translate=0.125, seed=1)(row, training=True))
offsets = {int(s[0, 16, 0] - 16) for s in shifted}
out["offsets"] = sorted(offsets)
# inside a compiled train step (JAX: the seed generator's state advances in the jitted step)
model = keras.Sequential([keras.Input((32, 32, 3)), augmentation("full", seed=3), keras.layers.Flatten(),
                          keras.layers.Dense(10, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy", steps_per_execution=2)
history = model.fit(batch, np.arange(16) % 10, batch_size=4, epochs=2, verbose=0)
out["fit_loss_finite"] = bool(np.isfinite(history.history["loss"]).all())
"""


@pytest.mark.parametrize("backend", ["tensorflow", pytest.param("jax", marks=pytest.mark.slow)])  # jax: ~30 s
def test_augmentation_is_per_image_exact_seeded_and_identity_at_inference(backend):
    out = json.loads(run_backend(backend, _CHECK + "print(json.dumps(out))\n", timeout=300).stdout.strip()
                     .splitlines()[-1])
    for kind in ("flip", "flip_shift", "full"):
        o = out[kind]
        assert o["shape"] == [16, 32, 32, 3] and o["dtype"] == "float32", (kind, o)
        assert o["inference_identity"] and o["seeded"] and o["in_range"], (kind, o)
    assert out["flip"]["distinct"] == 2 and out["flip"]["exact"]  # flipped or not, per image
    assert out["flip_shift"]["distinct"] >= 8 and out["flip_shift"]["exact"]  # 2 x 81 possible, per image
    assert out["full"]["distinct"] == 16 and not out["full"]["exact"]  # brightness: a new value per image
    assert set(out["offsets"]) <= set(range(-4, 5)) and len(out["offsets"]) >= 5, out["offsets"]
    assert out["fit_loss_finite"]
