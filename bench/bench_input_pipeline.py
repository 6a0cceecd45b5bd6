"""The reference notebooks' input pipeline (resize 32 -> 224 on the CPU, float32 batches) against this project's (uint8
32x32 batches; resize and preprocessing inside the model) for ResNet50 training steps, same machine, same run.

The reference notebooks' side, KERAS_BACKEND=tensorflow: `tf.data` from the uint8 arrays, shuffle, per-image `map` (cast to float32,
`tf.image.resize` bilinear to 224, `resnet50.preprocess_input`, parallel AUTOTUNE), batch, prefetch AUTOTUNE; the
model takes float32 224x224x3. Other backends (jax, torch: no TensorFlow): a `keras.utils.PyDataset` that resizes
each image with PIL (bilinear) and preprocesses with NumPy, in worker threads. This project's side:
`tl_tasks.training.builders.build_model` fed uint8 32x32 NumPy batches through `model.fit`, as `tl_tasks.training.loop` does.
The two are timed in alternating rounds (reference, ours, ours, reference, ...) so drifting machine load hits both.
"""
from __future__ import annotations

import numpy as np

from bench import common

NAME = "input_pipeline"
DATA_SIZE = 32
NUM_CLASSES = 10
# base: "resnet50" (the real thing) or "tiny" (a one-conv stand-in: tiny mode checks the code path in seconds).
CONFIG = {
    "tiny": dict(base="tiny", image_size=64, batch_size=8, warmup_steps=1, steps=2, rounds=1,
                 trainable=(False,), pipeline_seconds=0.3),
    "quick": dict(base="resnet50", image_size=224, batch_size=8, warmup_steps=1, steps=3, rounds=1,
                  trainable=(False,), pipeline_seconds=2.0),
    "full": dict(base="resnet50", image_size=224, batch_size=16, warmup_steps=1, steps=5, rounds=2,
                 trainable=(False,), pipeline_seconds=5.0),
}
# On a GPU the steps are cheap: bigger batches, more steps, and the unfrozen base too.
GPU_CONFIG = {
    "quick": dict(batch_size=64, warmup_steps=2, steps=10, rounds=2, trainable=(False, True), pipeline_seconds=3.0),
    "full": dict(batch_size=64, warmup_steps=3, steps=30, rounds=3, trainable=(False, True), pipeline_seconds=5.0),
}


def run(mode: str = "full") -> dict:
    common.check_mode(mode)
    begun = common.begin()
    import keras

    from tl_tasks.training import runtime

    runtime.configure()
    gpu = runtime.gpu_available()
    cfg = {**CONFIG[mode], **(GPU_CONFIG.get(mode, {}) if gpu else {})}
    backend = keras.backend.backend()
    size, batch = cfg["image_size"], cfg["batch_size"]
    rng = np.random.default_rng(0)
    n_images = batch * max(cfg["steps"], cfg["warmup_steps"], 8)
    x = rng.integers(0, 256, (n_images, DATA_SIZE, DATA_SIZE, 3), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, n_images).astype("int64")

    results: dict = {
        "bytes_per_image": {
            "reference_float32": size * size * 3 * 4, "ours_uint8": DATA_SIZE * DATA_SIZE * 3,
            "ratio_reference_over_ours": common.ratio(size * size * 3 * 4, DATA_SIZE * DATA_SIZE * 3, 1),
        },
        "pipeline_only": _pipeline_only(x, y, size, batch, cfg["pipeline_seconds"], backend),
        "training": {},
    }
    for trainable in cfg["trainable"]:
        key = "trainable_base" if trainable else "frozen_base"
        results["training"][key] = _training(x, y, cfg, trainable, backend)
    notes = [
        "img_per_s = images in the timed steps / their wall time (after warm-up steps that include tracing); "
        "ratio_ours_over_reference > 1 means this project's pipeline trains faster. img_per_cpu_s and *_cpu use this "
        "process's CPU time (all threads, tf.data's included) instead: less sensitive to other programs on the "
        "cores, and it counts the work the reference notebooks' pipeline threads do beside the training step.",
        "reference notebooks' pipeline: " + _reference_pipeline_description(backend),
        "ours: tl_tasks.training.builders.build_model(uint8 32x32 input; Resizing + preprocess_input inside the model), "
        "fed NumPy uint8 batches through model.fit, as tl_tasks.training.loop does." if cfg["base"] == "resnet50" else
        "tiny mode: a one-convolution stand-in replaces ResNet50 on both sides (checks the code path only).",
        "pipeline_only: batches/s of each input pipeline alone, no model: the ceiling it puts on training speed "
        "(on a GPU that trains faster than the reference notebooks' CPU resize can feed it, the reference notebooks' pipeline is the bottleneck).",
        "Both models use float32 (no mixed precision) and random initial weights (no ImageNet weights offline; "
        "speed does not depend on the weight values).",
    ]
    if not gpu:
        notes.append("CPU only: resizing inside the model also runs on the CPU here, so the gain is the cheaper "
                     "input pipeline only; on a GPU the resize moves to the accelerator as well. The unfrozen base "
                     "at 224 px (~1 img/s on this CPU) is measured on a GPU only.")
    return common.record(NAME, mode, begun, {**cfg, "data_size": DATA_SIZE, "backend": backend,
                                                           "gpu": gpu}, results, notes)


# ----------------------------------------------------------------------------------------------- pipelines

def _reference_pipeline_description(backend: str) -> str:
    if backend == "tensorflow":
        return ("tf.data: shuffle, per-image map(cast float32, tf.image.resize bilinear, resnet50.preprocess_input; "
                "num_parallel_calls=AUTOTUNE), batch, prefetch(AUTOTUNE); float32 batches into the model.")
    return ("keras.utils.PyDataset in worker threads: per-image PIL bilinear resize, NumPy preprocess_input "
            "(BGR, ImageNet means); float32 batches into the model (no TensorFlow on this backend).")


def _reference_dataset(x: np.ndarray, y: np.ndarray, size: int, batch: int, backend: str):
    """The reference notebooks' pipeline: an endless source of (float32 size x size preprocessed images, labels) batches."""
    if backend == "tensorflow":
        import tensorflow as tf
        from keras.applications.resnet50 import preprocess_input

        def resize(image, label):
            image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear")
            return preprocess_input(image), label

        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).repeat()
        return ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)
    return _PilResizeDataset(x, y, size, batch)


def _PilResizeDataset(x: np.ndarray, y: np.ndarray, size: int, batch: int):
    import keras

    class PilResizeDataset(keras.utils.PyDataset):
        """The reference notebooks' pipeline without TensorFlow: PIL resize per image, NumPy preprocessing, threads."""

        def __init__(self):
            import os

            super().__init__(workers=max(1, os.cpu_count() or 1), use_multiprocessing=False)

        def __len__(self):
            return len(x) // batch

        def __getitem__(self, i):
            from PIL import Image

            sl = slice(i * batch, (i + 1) * batch)
            images = np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR),
                                          dtype=np.float32) for img in x[sl]])
            images = images[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)  # preprocess_input
            return np.ascontiguousarray(images), y[sl]

    return PilResizeDataset()


def _pipeline_only(x, y, size: int, batch: int, budget_s: float, backend: str) -> dict:
    """Each pipeline alone, no model: batches drawn one after another for about `budget_s` seconds."""
    reference = _reference_dataset(x, y, size, batch, backend)
    if backend == "tensorflow":
        import tensorflow as tf

        reference_next = iter(reference).__next__
        ours_next = iter(tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch)
                         .prefetch(tf.data.AUTOTUNE)).__next__
    else:
        counter = iter(range(10**12))
        reference_next = lambda: reference[next(counter) % len(reference)]  # noqa: E731

        def ours_next():
            j = (next(counter) * batch) % (len(x) - batch + 1)
            return np.ascontiguousarray(x[j:j + batch]), y[j:j + batch]
    out = {}
    for side, step in (("reference", reference_next), ("ours", ours_next)):
        t = common.time_steps(step, warmup=2, min_steps=3, max_steps=100_000, budget_s=budget_s)
        out[side] = {"batches": t["steps"], "images": t["steps"] * batch, "seconds": t["seconds"],
                     "cpu_seconds": t["cpu_seconds"], "img_per_s": common.rate(t["steps"] * batch, t["seconds"]),
                     "img_per_cpu_s": common.rate(t["steps"] * batch, t["cpu_seconds"])}
    out["ratio_ours_over_reference"] = common.ratio(out["ours"]["img_per_s"], out["reference"]["img_per_s"], 1)
    return out


# ------------------------------------------------------------------------------------------------ training

def _training(x, y, cfg: dict, trainable: bool, backend: str) -> dict:
    size, batch = cfg["image_size"], cfg["batch_size"]
    sides = {"reference": _build_reference(cfg["base"], size, trainable), "ours": _build_ours(cfg["base"], size, trainable)}
    feeds = {"reference": lambda: (_reference_dataset(x, y, size, batch, backend), {"shuffle": False}),  # shuffled in tf.data
             "ours": lambda: (x, {"y": y, "batch_size": batch, "shuffle": True})}
    out: dict = {side: {"rounds_img_per_s": [], "steps": 0, "images": 0, "seconds": 0.0, "cpu_seconds": 0.0}
                 for side in sides}
    for side, model in sides.items():  # warm-up: tracing and the first steps, untimed
        data, kw = feeds[side]()
        with common.Stopwatch() as sw:
            model.fit(data, steps_per_epoch=cfg["warmup_steps"], epochs=1, verbose=0, **kw)
        out[side]["warmup_seconds"] = round(sw.seconds, 2)
    for r in range(cfg["rounds"]):
        for side in (("reference", "ours") if r % 2 == 0 else ("ours", "reference")):
            data, kw = feeds[side]()
            timer = common.epoch_timer()
            sides[side].fit(data, steps_per_epoch=cfg["steps"], epochs=1, verbose=0, callbacks=[timer], **kw)
            seconds = timer.seconds[0]
            images = cfg["steps"] * batch
            o = out[side]
            o["rounds_img_per_s"].append(common.rate(images, seconds))
            o["steps"] += cfg["steps"]
            o["images"] += images
            o["seconds"] = round(o["seconds"] + seconds, 3)
            o["cpu_seconds"] = round(o["cpu_seconds"] + timer.cpu_seconds[0], 3)
    for side in sides:
        out[side]["img_per_s"] = common.rate(out[side]["images"], out[side]["seconds"])
        out[side]["img_per_cpu_s"] = common.rate(out[side]["images"], out[side]["cpu_seconds"])
    out["ratio_ours_over_reference"] = common.ratio(out["ours"]["img_per_s"], out["reference"]["img_per_s"])
    out["ratio_ours_over_reference_cpu"] = common.ratio(out["ours"]["img_per_cpu_s"], out["reference"]["img_per_cpu_s"])
    out["params_trainable"] = {side: _count(m.trainable_weights) for side, m in sides.items()}
    return out


def _count(variables) -> int:
    return int(sum(int(np.prod(v.shape)) for v in variables))


def _build_ours(base: str, size: int, trainable: bool):
    import keras

    if base == "resnet50":
        from tl_tasks.training.builders import build_model

        variant = "resnet50_v2" if trainable else "resnet50_v1"
        keras.utils.set_random_seed(0)
        return build_model(variant, NUM_CLASSES, input_size=DATA_SIZE, image_size=size, weights="none", seed=0)
    from keras import layers

    inputs = keras.Input((DATA_SIZE, DATA_SIZE, 3), dtype="uint8")
    x = layers.Rescaling(1.0)(inputs)
    x = layers.Resizing(size, size, interpolation="bilinear")(x)
    x = keras.applications.resnet50.preprocess_input(x)
    return _head(_tiny_base(size, trainable)(x), inputs)


def _build_reference(base: str, size: int, trainable: bool):
    """The reference notebooks' model: float32 size x size preprocessed input -> base -> GAP -> Dense 128 -> softmax."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), dtype="float32")
    if base == "resnet50":
        net = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3))
        net.trainable = trainable
        x = net(inputs, training=False)
    else:
        x = _tiny_base(size, trainable)(inputs)
    return _head(x, inputs, learning_rate=1e-4 if trainable else 1e-3)


def _tiny_base(size: int, trainable: bool):
    import keras
    from keras import layers

    pixels = keras.Input((size, size, 3))
    base = keras.Model(pixels, layers.Conv2D(8, 3, strides=2, activation="relu")(pixels))
    base.trainable = trainable
    return base


def _head(x, inputs, learning_rate: float = 1e-3):
    import keras
    from keras import layers

    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(128, activation="relu")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def main(argv: list[str] | None = None) -> int:
    return common.cli(NAME, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
