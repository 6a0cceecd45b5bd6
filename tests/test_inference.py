"""Inference in batches of one size (tl_tasks.training.inference): the batch size chosen, and one traced step shape."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from tl_tasks.training.inference import even_batch, predict_equal_batches


@pytest.mark.parametrize("n, max_batch, batch", [
    (10_000, 250, 250),   # divides: no padding
    (10_000, 256, 250),   # 40 steps either way; 250 needs no padding
    (1_000, 250, 250),
    (1_024, 250, 205),    # 5 steps, 1 padded image (not 226 at 250)
    (70, 250, 70),        # fewer images than a batch: one step
    (80, 80, 80),
    (1, 250, 1),
    (0, 250, 250),
])
def test_even_batch_takes_the_fewest_steps_with_the_least_padding(n, max_batch, batch):
    assert even_batch(n, max_batch) == batch
    if n:
        steps = -(-n // batch)
        assert steps == -(-n // max_batch) and steps * batch - n < steps


def test_even_batch_refuses_a_batch_below_one():
    with pytest.raises(ValueError, match="max_batch=0"):
        even_batch(10, 0)


class _TraceLog(keras.layers.Layer):
    """Identity that notes the batch size each time its call is traced (or, run eagerly, each call)."""

    def __init__(self, seen: list, **kwargs):
        super().__init__(**kwargs)
        self.note = seen.append  # not the list itself: Keras would track a copy of it

    def call(self, x):
        self.note(x.shape[0])
        return x


def _model(seen: list) -> keras.Model:
    inputs = keras.Input((4,))
    x = _TraceLog(seen)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed=1))(x))
    seen.clear()  # building the model called it symbolically
    return model


def test_predict_equal_batches_traces_one_shape_and_matches_predict():
    x = np.random.default_rng(0).normal(size=(70, 4)).astype("float32")
    plain_seen: list = []
    plain = _model(plain_seen)
    expected = plain.predict(x, batch_size=32, verbose=0)
    assert len(plain_seen) == 2  # predict's smaller last batch (70 = 2 x 32 + 6) is traced again

    seen: list = []
    model = _model(seen)
    model.set_weights(plain.get_weights())
    batch = even_batch(len(x), 32)
    assert batch == 24
    out = predict_equal_batches(model, x, batch)
    assert out.shape == (70, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert seen == [24]  # every step the same shape (the last one padded): traced once
