"""Training throughput (img/s) of every variant at image sizes 32, 64, 128, 224 and a few batch sizes;
mixed precision off and on where a GPU is present.

Each cell builds the variant with `tl_tasks.training.builders.build_model` (uint8 32x32 input, resized inside the model to
the cell's size, random weights) under the cell's dtype policy and times `train_on_batch` on one uint8 batch:
one warm-up step (tracing/compiling; reported as `warmup_seconds`), then steps until a time budget is spent
(at least one). The grid is ordered by priority and bounded by a total budget: cells it cannot reach are listed
under `skipped`, never silently dropped. The CNN trains at the data's 32 px only (that is the variant).
"""
from __future__ import annotations

import numpy as np

from bench import common

NAME = "throughput"
DATA_SIZE = 32
NUM_CLASSES = 10

# (variant, image size, batch sizes), in priority order. On a CPU an unfrozen ResNet50 step at 224 px takes
# ~1 s per image and each new (model, batch shape) costs a trace of 15-80 s, hence the small, staggered grid.
CPU_GRID = {
    "tiny": [("cnn", 32, (8,))],
    "quick": [("cnn", 32, (64,)), ("resnet50_v1", 32, (64,)), ("resnet50_v2", 32, (64,))],
    "full": [
        ("cnn", 32, (64, 256)),
        ("resnet50_v1", 32, (64, 256)),
        ("resnet50_v2", 32, (64, 16)),
        ("resnet50_v3", 32, (64,)),
        ("resnet50_v4", 32, (64,)),
        ("resnet50_v1", 64, (64,)), ("resnet50_v1", 128, (32,)), ("resnet50_v1", 224, (16,)),
        ("resnet50_v2", 64, (32,)), ("resnet50_v2", 128, (16,)), ("resnet50_v2", 224, (8,)),
        ("resnet50_v3", 224, (8,)), ("resnet50_v4", 224, (8,)),
    ],
}
_ALL = ("cnn", "resnet50_v1", "resnet50_v2", "resnet50_v3", "resnet50_v4")
GPU_GRID = {
    "tiny": [("cnn", 32, (8,))],
    "quick": [(v, s, (64,)) for v in _ALL for s in ((32,) if v == "cnn" else (32, 224))],
    "full": [(v, s, (64, 256)) for v in _ALL for s in ((32,) if v == "cnn" else (32, 64, 128, 224))],
}
# (total budget s, per-cell timing budget s)
BUDGET = {"tiny": (60, 0.5), "quick": (120, 3.0), "full": (480, 6.0)}
GPU_BUDGET = {"tiny": (60, 0.5), "quick": (240, 3.0), "full": (900, 5.0)}


def run(mode: str = "full") -> dict:
    common.check_mode(mode)
    begun = common.begin()
    import keras

    from tl_tasks.training import runtime

    runtime.configure()
    gpu = runtime.gpu_available()
    grid = (GPU_GRID if gpu else CPU_GRID)[mode]
    total_s, cell_s = (GPU_BUDGET if gpu else BUDGET)[mode]
    precisions = (False, True) if gpu else (False,)
    budget = common.Budget(total_s)
    cells, skipped = [], []
    for variant, size, batches in grid:
        for mixed in precisions:
            if budget.spent():
                skipped += [{"variant": variant, "image_size": size, "batch_size": b, "mixed_precision": mixed,
                             "why": f"total budget of {total_s} s spent"} for b in batches]
                continue
            cells += _cells(variant, size, batches, mixed, cell_s, budget, skipped)
    table: dict = {}
    for c in cells:
        mp = "mixed" if c["mixed_precision"] else "float32"
        table.setdefault(c["variant"], {}).setdefault(f"{c['image_size']}px", {})[f"batch{c['batch_size']}_{mp}"] = \
            c["img_per_s"]
    results = {"img_per_s": table, "cells": cells, "skipped": skipped}
    notes = [
        "img_per_s = batch_size x timed steps / their wall time, train_on_batch on one uint8 32x32 batch resized "
        "inside the model (the project's input contract); warm-up (tracing, first step) excluded, reported as "
        "warmup_seconds.",
        "resnet50_v1 here trains end to end through the frozen base; tl_tasks.training.loop trains v1 on cached base "
        "features instead (bench feature_cache), which is far faster per epoch.",
        "resnet50_v3/v4 add augmentation (at 32 px, before the resize) and head dropout to v2: at large sizes "
        "their cost is v2's, so on a CPU they are measured at 32 px and, budget permitting, at 224 px.",
    ]
    if not gpu:
        notes.append("No GPU: mixed precision not measured (it only pays on a GPU; tl_tasks.training.loop enables it there).")
    params = {"grid": [{"variant": v, "image_size": s, "batch_sizes": list(b)} for v, s, b in grid],
              "total_budget_s": total_s, "cell_budget_s": cell_s, "mixed_precision": list(precisions),
              "backend": keras.backend.backend(), "gpu": gpu, "weights": "none (random init)"}
    return common.record(NAME, mode, begun, params, results, notes)


def _cells(variant: str, size: int, batches, mixed: bool, cell_s: float, budget: common.Budget,
           skipped: list) -> list[dict]:
    import keras

    from tl_tasks.training import runtime
    from tl_tasks.training.builders import build_model

    keras.utils.set_random_seed(0)
    with common.Stopwatch() as sw, runtime.dtype_policy(mixed):
        model = build_model(variant, NUM_CLASSES, input_size=DATA_SIZE, image_size=size, weights="none", seed=0)
    build_s = sw.seconds
    rng = np.random.default_rng(0)
    out = []
    for i, batch in enumerate(batches):
        if i and budget.spent():
            skipped.append({"variant": variant, "image_size": size, "batch_size": batch, "mixed_precision": mixed,
                            "why": "total budget spent"})
            continue
        x = rng.integers(0, 256, (batch, DATA_SIZE, DATA_SIZE, 3), dtype=np.uint8)
        y = rng.integers(0, NUM_CLASSES, batch).astype("int64")
        t = common.time_steps(lambda model=model, x=x, y=y: model.train_on_batch(x, y), warmup=1,
                              min_steps=1, max_steps=200,
                              budget_s=cell_s)
        out.append({"variant": variant, "image_size": size, "batch_size": batch, "mixed_precision": mixed,
                    "img_per_s": common.rate(batch * t["steps"], t["seconds"]),
                    "img_per_cpu_s": common.rate(batch * t["steps"], t["cpu_seconds"]),
                    "images": batch * t["steps"], **t, "build_seconds": round(build_s, 2) if i == 0 else 0.0})
    del model
    keras.backend.clear_session()
    return out


def main(argv: list[str] | None = None) -> int:
    return common.cli(NAME, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
