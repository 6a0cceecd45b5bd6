"""The GPU benchmark (`bench/gpu.sh` runs `python -m bench.gpu_bench` from the checkout, where tl_tasks imports
without being installed): Keras on JAX, no TensorFlow, one JSON record.

Measures, at `--size full` (a GPU; under 8 minutes on one H100/H200):
    1. ResNet50 fine-tuning throughput (resnet50_v2's recipe: AdamW, cosine, label smoothing) at 224 px,
       batch 256, mixed precision: `train_on_batch` images/s after compilation;
    2. v1 frozen throughput: resnet50_v1 end to end (frozen base, head trains) at 224 px, batch 256;
    3. inference throughput: `predict` of the fine-tuned model at 224 px, batch 256;
    4. one full-profile epoch of resnet50_v2 on real CIFAR-10 (`train_variant` with the full profile, 1 epoch,
       then `evaluate_variant`): wall time, train images/s and test accuracy. No ImageNet weights can be had
       offline, so the base starts from random weights: the accuracy is not the fine-tuning recipe's.
`--size tiny` runs the same code in seconds on a CPU (32 px, batch 8, 2 timed steps, synthetic data) to check
that it runs end to end; its numbers mean nothing.

Goal: >= 4,000 img/s fine-tuning on one H100/H200 (NVIDIA's TF ResNet-50 v1.5, A100, AMP + XLA:
~2,375 img/s).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # run as `python -m bench.gpu_bench` from here: tl_tasks imports
os.environ.setdefault("KERAS_BACKEND", "jax")


class _NoTensorFlow:
    """GPU_BENCH_BLOCK_TF=1: make `import tensorflow` fail, as on the GPU machine, where TF is installed here."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"{name} is blocked (GPU_BENCH_BLOCK_TF=1): the GPU machine has no TensorFlow")


if os.environ.get("GPU_BENCH_BLOCK_TF") == "1":
    sys.meta_path.insert(0, _NoTensorFlow())

SIZES = {
    # image px, batch, timed steps (at least), seconds per timed cell (at most), dataset, limit per class
    "full": dict(image_size=224, batch=256, min_steps=10, budget_s=15.0, limit_per_class=None),
    "tiny": dict(image_size=32, batch=8, min_steps=2, budget_s=0.0, limit_per_class=6),
}
GOAL_IMG_PER_S = 4000
NUM_CLASSES = 10


def _time_steps(step, *, min_steps: int, budget_s: float, warmup: int = 2) -> dict:
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warm = time.perf_counter() - t0
    samples = []
    started = time.perf_counter()
    while len(samples) < min_steps or time.perf_counter() - started < budget_s:
        t = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return {"warmup_seconds": round(warm, 3), "steps": len(samples), "seconds": round(sum(samples), 4),
            "step_seconds_median": round(samples[len(samples) // 2], 5)}


def _sync(value):
    import numpy as np

    return np.asarray(value)  # block until the device finished (JAX dispatches asynchronously)


def throughput(size: dict, mixed: bool) -> dict:
    import keras
    import numpy as np

    from tl_tasks.training import runtime
    from tl_tasks.training.builders import build_model, compile_recipe, one_hot

    batch, px = size["batch"], size["image_size"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)  # 32 px uint8 in, resized in the model
    y = one_hot(np.arange(batch) % NUM_CLASSES, NUM_CLASSES)
    out = {}
    with runtime.dtype_policy(mixed):
        for key, variant in (("finetune", "resnet50_v2"), ("v1_frozen", "resnet50_v1")):
            model = build_model(variant, NUM_CLASSES, input_size=32, image_size=px, weights="none")
            compile_recipe(model, variant, NUM_CLASSES, steps=1000)
            t = _time_steps(lambda model=model: _sync(model.train_on_batch(x, y)), min_steps=size["min_steps"],
                            budget_s=size["budget_s"])
            out[key] = {**t, "variant": variant, "img_per_s": round(batch * t["steps"] / t["seconds"], 1)}
            if key == "finetune":
                t = _time_steps(lambda model=model: _sync(model.predict_on_batch(x)), min_steps=size["min_steps"],
                                budget_s=size["budget_s"])
                out["inference"] = {**t, "variant": variant, "img_per_s": round(batch * t["steps"] / t["seconds"], 1)}
            del model
            keras.backend.clear_session()
    return out


def full_profile_epoch(size: dict, dataset: str, work: Path, mixed: bool) -> dict:
    from tl_tasks.data import prepare_data
    from tl_tasks.schema import resolve_settings
    from tl_tasks.training.evaluate import evaluate_variant
    from tl_tasks.training.loop import train_variant

    overrides = dict(dataset=dataset, weights="none", epochs=1, limit_per_class=size["limit_per_class"],
                     mixed_precision="on" if mixed else "off")
    if size is SIZES["tiny"]:
        overrides.update(image_size=size["image_size"], batch_size=size["batch"])
    settings = resolve_settings("full", **overrides)
    t0 = time.perf_counter()
    prepare_data(settings.dataset, work / "data", limit_per_class=settings.limit_per_class, seed=settings.seed,
                 cache_dir=work / "cache")
    prepare_s = time.perf_counter() - t0
    summary = train_variant("resnet50_v2", work / "data", work / "v2", settings, verbose=2).summary()
    evaluation = evaluate_variant("resnet50_v2", work / "data", work / "v2", settings).to_dict()
    epoch = summary["history"][0]
    return {"dataset": dataset, "image_size": settings.image_size, "batch_size": settings.batch_size,
            "train_images": summary["train_images"], "prepare_seconds": round(prepare_s, 2),
            "epoch_seconds": epoch["seconds"], "train_seconds_total": summary["train_seconds"],
            "train_img_per_s": summary["train_img_per_s"], "val_accuracy": epoch["val_accuracy"],
            "test_accuracy": evaluation["accuracy"], "inference_img_per_s": evaluation["inference_img_per_s"],
            "inference_timing": evaluation["inference_timing"], "mixed_precision": summary["mixed_precision"],
            "weights": "none (random init: no ImageNet weights offline)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=SIZES, default=os.environ.get("GPU_BENCH_SIZE", "full"))
    parser.add_argument("--dataset", default=os.environ.get("GPU_BENCH_DATASET", ""),
                        help="data source of the full-profile epoch (default: the shared CIFAR-10 archive)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "out" / "gpu.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: next to --out)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import keras

    from tl_tasks.training import runtime

    if keras.backend.backend() != "jax":
        print(f"KERAS_BACKEND={keras.backend.backend()}: this benchmark runs Keras on JAX", file=sys.stderr)
        return 2
    size = SIZES[args.size]
    dataset = args.dataset or _default_dataset()
    gpu = runtime.gpu_available()
    mixed = gpu or args.size == "full"
    work = args.work or args.out.parent / "gpu_work"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TL_HOME", str(work / "tl_home"))

    record = {"name": "gpu", "size": args.size, "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"device": runtime.device_description(), "gpu": gpu, "backend": keras.backend.backend(),
                          "keras": keras.__version__, "jax": _version("jax"), "python": platform.python_version(),
                          "tensorflow_loaded": "tensorflow" in sys.modules},
              "parameters": {**size, "mixed_precision": mixed, "goal_img_per_s": GOAL_IMG_PER_S}}
    record["results"] = {}
    failed = False
    # Each part is written as soon as it is done: a timeout or a crash later keeps what was measured.
    for key, measure in (("throughput", lambda: throughput(size, mixed)),
                         ("full_profile_epoch_v2", lambda: full_profile_epoch(size, dataset, work, mixed))):
        try:
            record["results"][key] = measure()
        except Exception as exc:  # recorded, and the exit status says so
            import traceback

            failed = True
            record["results"][key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        fine = (record["results"].get("throughput") or {}).get("finetune", {}).get("img_per_s")
        record["results"]["goal_met"] = (bool(gpu and fine and fine >= GOAL_IMG_PER_S)
                                         if args.size == "full" else None)
        record["machine"]["tensorflow_loaded"] = "tensorflow" in sys.modules
        record["seconds"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps({key: record["results"][key]}, indent=1), flush=True)
    print(f"wrote {args.out} in {record['seconds']} s")
    return 1 if failed else 0


def _default_dataset() -> str:
    for archive in (PROJECT_ROOT / "bench" / "data" / "cifar-10-images-jpg.tar.gz",
                    PROJECT_ROOT.parent / "shared" / "data" / "cifar-10-images-jpg.tar.gz"):
        if archive.is_file():
            return f"folder:{archive}"
    return "synthetic"


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
