"""What the workflow's training loop adds around the model: `tl_tasks.training.loop.train_variant`'s training img/s (each
epoch's training steps, as its summary records them) divided by a bare `model.fit` of the same model, compiled the
same way, on the same in-memory arrays, batch size and epochs. Goal: >= 0.9 for the CNN and for resnet50_v2 at
32 px. No GPU needed: overhead the loop adds (callbacks, synchronisation, feeding) shows here first.

    python -m bench.bench_loop_overhead --mode quick [--out bench/out/loop_overhead.json]

Each variant is measured in two rounds, workflow then bare, then bare then workflow, so a change of load hits
both sides; the first epoch of each side (compilation) is left out of its median.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

from bench import common

NAME = "loop_overhead"
GOAL_RATIO = 0.9
DATA_SIZE = 32
# variant -> images per class of the synthetic pool (80% of it trains), epochs per side, per mode
CELLS = {
    "tiny": {"cnn": (10, 2)},  # checks that it runs (a ResNet50 compile alone takes a minute on a CPU)
    "quick": {"cnn": (300, 3), "resnet50_v2": (40, 3)},
    "full": {"cnn": (1000, 4), "resnet50_v2": (100, 3)},
}


def run(mode: str = "full") -> dict:
    common.check_mode(mode)
    begun = common.begin()
    from tl_tasks.training import feeding, runtime

    runtime.configure()
    results: dict = {}
    with common.temp_home(NAME) as home, common.env_vars(TL_HOME=str(home / "tl_home")):
        for variant, (per_class, epochs) in CELLS[mode].items():
            results[variant] = _cell(home, variant, per_class, epochs)
    ratios = {v: r["ratio_workflow_over_bare"] for v, r in results.items()}
    results["ratios"] = ratios
    results["meets_goal"] = all(r is not None and r >= GOAL_RATIO for r in ratios.values())
    notes = [
        "workflow img/s = median over epochs 2.. of the train summary's epoch_img_per_s (training steps only: "
        "from on_epoch_begin to the start of validation, after waiting for the device); bare img/s = training "
        "images / epoch wall time of model.fit(x, y, batch_size, epochs, shuffle=True, verbose=0) with no "
        "callbacks but a timer and no validation, epochs 2.., median.",
        "Both sides: build_model + compile_recipe with the workflow's steps_per_execution "
        f"({feeding.steps_per_execution()} here), the same batch size ({feeding.batch_size(_settings(1, 1))} here), "
        "random init, float32, 32 px. resnet50_v2's head warm-up phase is off on both sides (one phase, one "
        "compiled step).",
        "ratio_whole_train_variant: bare seconds for all epochs / train_variant's whole train_seconds (data "
        "loading, model build, compilation, validation and per-epoch checkpoints included): what the rest of the "
        "stage costs, for information.",
    ]
    params = {"cells": {v: {"images_per_class": c[0], "epochs": c[1]} for v, c in CELLS[mode].items()},
              "goal_ratio": GOAL_RATIO, "data_size": DATA_SIZE}
    return common.record(NAME, mode, begun, params, results, notes)


def _settings(per_class: int, epochs: int):
    from tl_tasks.config import PROFILES

    return dataclasses.replace(PROFILES["quick"], dataset="synthetic", weights="none", image_size=DATA_SIZE,
                               epochs={"cnn": epochs, "resnet50": epochs}, limit_per_class=per_class,
                               train_limit={"cnn": None, "resnet50": None}, head_warmup_epochs=0,
                               mixed_precision="off")


def _cell(home, variant: str, per_class: int, epochs: int) -> dict:
    import keras

    from tl_tasks.data import load_prepared, prepare_data

    settings = _settings(per_class, epochs)
    data_dir = home / f"data_{per_class}"
    if not (data_dir / "meta.json").is_file():
        prepare_data("synthetic", data_dir, limit_per_class=per_class, seed=0)
    data = load_prepared(data_dir)
    workflow, bare = [], []
    for order in (("workflow", "bare"), ("bare", "workflow")):
        for side in order:
            keras.backend.clear_session()
            if side == "workflow":
                workflow.append(_workflow(variant, data_dir, home / f"{variant}_{len(workflow)}", settings))
            else:
                bare.append(_bare(variant, data, settings))
    w_rate = statistics.median(r for w in workflow for r in w["epoch_img_per_s"][1:])
    b_rate = statistics.median(r for b in bare for r in b["epoch_img_per_s"][1:])
    w_total = statistics.median(w["train_seconds"] for w in workflow)
    b_total = statistics.median(b["seconds"] for b in bare)
    return {"train_images": workflow[0]["train_images"], "epochs": epochs, "batch_size": workflow[0]["batch_size"],
            "workflow_img_per_s": round(w_rate, 1), "bare_fit_img_per_s": round(b_rate, 1),
            "ratio_workflow_over_bare": common.ratio(w_rate, b_rate),
            "ratio_whole_train_variant": common.ratio(b_total, w_total),
            "workflow_runs": workflow, "bare_runs": bare}


def _workflow(variant: str, data_dir, out_dir, settings) -> dict:
    from tl_tasks.training.loop import train_variant

    s = train_variant(variant, data_dir, out_dir, settings, verbose=0).summary()
    return {"epoch_img_per_s": s["epoch_img_per_s"], "train_seconds": s["train_seconds"],
            "train_images": s["train_images"], "batch_size": s["batch_size"],
            "steps_per_execution": s["recipe"]["steps_per_execution"]}


def _bare(variant: str, data, settings) -> dict:
    import numpy as np

    from tl_tasks.training import feeding, runtime
    from tl_tasks.training.builders import build_model, compile_recipe, one_hot

    x, t = np.ascontiguousarray(data.x_train), one_hot(data.y_train, len(data.class_names))
    batch, epochs = feeding.batch_size(settings), settings.epochs_for(variant)
    runtime.seed_everything(settings.seed)
    model = build_model(variant, len(data.class_names), input_size=DATA_SIZE, image_size=DATA_SIZE, weights="none",
                        seed=settings.seed)
    compile_recipe(model, variant, len(data.class_names), steps=epochs * -(-len(x) // batch),
                   steps_per_execution=feeding.steps_per_execution())
    timer = common.epoch_timer()
    started = time.perf_counter()
    model.fit(x, t, batch_size=batch, epochs=epochs, shuffle=True, verbose=0, callbacks=[timer])
    seconds = time.perf_counter() - started
    return {"epoch_img_per_s": [round(len(x) / s, 1) for s in timer.seconds], "seconds": round(seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    return common.cli(NAME, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
