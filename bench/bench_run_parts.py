"""Where a ResNet50 variant's time goes in `make run` (quick profile: 32 px, batch 64, random weights), piece by
piece, in one process: build, the first training epoch (tracing included) and a second one, validation on 5,000
against 500 images, saving and loading model.keras, the champion's SavedModel export, and the evaluation's
inference on 10,000 test images at batch 64 (two traced shapes) against 250 (one).

Every piece records wall and CPU seconds (this process, all threads): on a shared machine CPU time is the steadier
figure. Random uint8 images stand in for CIFAR-10: the time does not depend on the pixels.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench import common

NAME = "run_parts"
SIZES = {"tiny": (64, 64, 256), "quick": (500, 5000, 10_000), "full": (500, 5000, 10_000)}  # train, val, test


def run(mode: str = "full") -> dict:
    common.check_mode(mode)
    begun = common.begin()
    from tl_tasks.training import runtime

    runtime.configure()
    import keras
    import numpy as np

    from tl_tasks.gating.champions import _export_serving
    from tl_tasks.training.builders import build_model, compile_recipe, one_hot
    from tl_tasks.training.inference import even_batch, predict_equal_batches

    n_train, n_val, n_test = SIZES[mode]
    small_val = min(500, n_val)
    rng = np.random.default_rng(0)
    x_train, x_val, x_test = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (n_train, n_val, n_test))
    t_train = one_hot(rng.integers(0, 10, n_train), 10)
    t_val = one_hot(rng.integers(0, 10, n_val), 10)
    results: dict = {}

    def timed(key: str, fn):
        with common.Stopwatch() as sw:
            out = fn()
        results[key] = {"seconds": round(sw.seconds, 2), "cpu_seconds": round(sw.cpu_seconds, 2)}
        return out

    model = timed("build_v2", lambda: build_model("resnet50_v2", 10, input_size=32, image_size=32, weights=None))
    compile_recipe(model, "resnet50_v2", 10, steps=2 * -(-n_train // 64))
    timed("train_epoch_1_with_trace", lambda: model.fit(x_train, t_train, batch_size=64, epochs=1, verbose=0))
    timed("train_epoch_2", lambda: model.fit(x_train, t_train, batch_size=64, epochs=1, verbose=0))
    timed("validate_first_with_trace", lambda: model.evaluate(x_val[:small_val], t_val[:small_val], batch_size=64,
                                                              verbose=0))
    timed(f"validate_{n_val}", lambda: model.evaluate(x_val, t_val, batch_size=64, verbose=0))
    timed(f"validate_{small_val}", lambda: model.evaluate(x_val[:small_val], t_val[:small_val], batch_size=64,
                                                          verbose=0))
    with tempfile.TemporaryDirectory(prefix="tl_bench_parts_") as tmp:
        path = Path(tmp) / "model.keras"
        timed("save_model_keras", lambda: model.save(path))
        results["model_keras_mib"] = round(os.path.getsize(path) / 2**20, 1)
        loaded = timed("load_model_keras", lambda: keras.models.load_model(path, compile=False, safe_mode=True))
        timed("savedmodel_export", lambda: _export_serving(path, Path(tmp) / "serving"))

        def old_eval():  # as before: warm-up on the full and the remainder batch shape, then the pass
            for n in {64, n_test % 64} - {0}:
                loaded.predict(x_test[:n], batch_size=64, verbose=0)
            return loaded.predict(x_test, batch_size=64, verbose=0)

        fresh = keras.models.load_model(path, compile=False, safe_mode=True)

        def new_eval():  # now: one batch shape (even_batch), one warm-up
            batch = even_batch(n_test, 250)
            fresh.predict(x_test[:batch], batch_size=batch, verbose=0)
            return predict_equal_batches(fresh, x_test, batch)

        old = timed("evaluate_batch_64_two_traces", old_eval)
        new = timed("evaluate_batch_250_one_trace", new_eval)
        results["evaluate_same_predictions"] = bool((old.argmax(1) == new.argmax(1)).mean() > 0.999)
    notes = ["seconds: wall; cpu_seconds: this process's CPU time over all threads (2 cores: up to 2x wall).",
             "resnet50_v2 (whole base trainable) at the quick profile's 32 px and batch 64, random weights; "
             "train_epoch_1_with_trace includes tracing the train step, train_epoch_2 is the same work traced.",
             "validate_first_with_trace traces the test step; the later validate_* rows are traced passes."]
    params = {"variant": "resnet50_v2", "train_images": n_train, "val_images": n_val, "test_images": n_test,
              "image_size": 32, "batch_size": 64}
    return common.record(NAME, mode, begun, params, results, notes, common.machine(False))


def main(argv: list[str] | None = None) -> int:
    return common.cli(NAME, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
