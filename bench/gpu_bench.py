"""The GPU benchmark (`bench/gpu.sh` runs `python -m bench.gpu_bench` from the checkout, where tl_tasks imports
without being installed): Keras on JAX, no TensorFlow, one JSON record, for an offline GPU host that has JAX.

Parts, in this order, each written to the JSON as soon as it is done (GPU_BENCH_PARTS picks some), within one
time budget (`--budget-s`; a part that cannot fit what is left is recorded as skipped, with its estimate):
    throughput: `train_on_batch` img/s of every variant at 224 px, batch 256, mixed precision (the CNN at its
        32 px), and `predict` img/s of v2; v4's step against v2's (goal <= 1.2x);
    v2: resnet50_v2 whole on the full profile (`train_variant` + `evaluate_variant`: head warm-up and
        fine-tuning, all of CIFAR-10): each epoch's training img/s (goal >= 5,000 once compiled), train seconds,
        test accuracy, wall time;
    v4: the same for resnet50_v4;
    run: `python -m tl_tasks run --engine local --profile full` whole (all five variants, gate, report): wall
        time and each variant's numbers (needs the pipeline's packages too, and about 10 minutes on its own).
No ImageNet weights can be had offline: every base starts from random weights (`weights: none`), so accuracies are
not the fine-tuning recipe's. `--size tiny` runs the same code in minutes on a CPU (32 px, batch 8, synthetic
data, the GPU's loop settings; its run part trains every variant but v2, which its own part trained whole) to
check that it runs end to end; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
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
    # image px, batch, timed steps (at least), seconds per timed cell (at most), limit per class, epochs
    "full": dict(image_size=224, batch=256, min_steps=10, budget_s=8.0, limit_per_class=None, epochs=None),
    "tiny": dict(image_size=32, batch=8, min_steps=2, budget_s=0.0, limit_per_class=6, epochs=2),
}
GOAL_IMG_PER_S = 4000           # train_on_batch, v2 fine-tuning (the microbenchmark)
GOAL_WORKFLOW_IMG_PER_S = 5000  # v2's own epochs in train_variant, once compiled
GOAL_V4_OVER_V2 = 1.2
NUM_CLASSES = 10
PARTS = ("throughput", "v2", "v4", "run")
VARIANTS = ("cnn", "resnet50_v1", "resnet50_v2", "resnet50_v3", "resnet50_v4")


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
    """`train_on_batch` img/s of every variant (uint8 32 px in, resized in the model) and v2's `predict` img/s."""
    import keras
    import numpy as np

    from tl_tasks.training import feeding, runtime
    from tl_tasks.training.builders import build_model, compile_recipe, one_hot

    runtime.configure()  # before the first compile: XLA's compiled programs kept on disk
    batch, px = size["batch"], size["image_size"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    y = one_hot(np.arange(batch) % NUM_CLASSES, NUM_CLASSES)
    out = {}
    with runtime.dtype_policy(mixed):
        for variant in VARIANTS if size is SIZES["full"] else ("resnet50_v2", "resnet50_v4"):
            image_size = 32 if variant == "cnn" else px
            model = build_model(variant, NUM_CLASSES, input_size=32, image_size=image_size, weights="none")
            compile_recipe(model, variant, NUM_CLASSES, steps=1000, steps_per_execution=feeding.steps_per_execution())
            t = _time_steps(lambda model=model: _sync(model.train_on_batch(x, y)), min_steps=size["min_steps"],
                            budget_s=size["budget_s"])
            out[variant] = {**t, "image_size": image_size, "img_per_s": round(batch * t["steps"] / t["seconds"], 1)}
            if variant == "resnet50_v2":
                t = _time_steps(lambda model=model: _sync(model.predict_on_batch(x)), min_steps=size["min_steps"],
                                budget_s=size["budget_s"])
                out["inference_resnet50_v2"] = {**t, "img_per_s": round(batch * t["steps"] / t["seconds"], 1)}
            del model
            keras.backend.clear_session()
    v2, v4 = out["resnet50_v2"]["step_seconds_median"], out["resnet50_v4"]["step_seconds_median"]
    out["v4_step_over_v2_step"] = round(v4 / v2, 3)
    out["batch_size"], out["mixed_precision"] = batch, mixed
    return out


def whole_variant(variant: str, size: dict, dataset: str, work: Path, mixed: bool) -> dict:
    """One variant whole on the full profile (or its tiny stand-in): prepare (shared), train, evaluate."""
    from tl_tasks.data import prepare_data
    from tl_tasks.schema import resolve_settings
    from tl_tasks.training.evaluate import evaluate_variant
    from tl_tasks.training.loop import train_variant

    overrides = dict(dataset=dataset, weights="none", limit_per_class=size["limit_per_class"],
                     mixed_precision="on" if mixed else "off", epochs=size["epochs"])
    if size is SIZES["tiny"]:
        overrides.update(image_size=size["image_size"])
    settings = resolve_settings("full", **overrides)
    if size is SIZES["tiny"]:  # the GPU's loop settings, at a CPU's batch size
        settings = dataclasses.replace(settings, gpu_batch_size=size["batch"], head_warmup_epochs=1)
    t0 = time.perf_counter()
    data = work / "data"
    if not (data / "meta.json").is_file():
        prepare_data(settings.dataset, data, limit_per_class=settings.limit_per_class, seed=settings.seed,
                     cache_dir=work / "cache")
    prepare_s = time.perf_counter() - t0
    summary = train_variant(variant, data, work / variant, settings, verbose=2).summary()
    evaluation = evaluate_variant(variant, data, work / variant, settings).to_dict()
    rates = [r for r in summary["epoch_img_per_s"] if r]
    compiled = [h["img_per_s"] for i, h in enumerate(summary["history"])
                if h.get("img_per_s") and i not in (0, summary["head_warmup_epochs"])]  # phases' first: compiling
    return {"variant": variant, "dataset": dataset, "image_size": settings.image_size,
            "batch_size": summary["batch_size"], "steps_per_execution": summary["recipe"]["steps_per_execution"],
            "train_images": summary["train_images"], "epochs_run": summary["epochs_run"],
            "head_warmup_epochs": summary["head_warmup_epochs"], "prepare_seconds": round(prepare_s, 2),
            "train_seconds": summary["train_seconds"], "train_img_per_s": summary["train_img_per_s"],
            "epoch_img_per_s": summary["epoch_img_per_s"],
            "compiled_epoch_img_per_s_median": _median(compiled) or _median(rates),
            "epoch_seconds": [h["seconds"] for h in summary["history"]],
            "val_accuracy": summary["history"][-1]["val_accuracy"], "test_accuracy": evaluation["accuracy"],
            "inference_img_per_s": evaluation["inference_img_per_s"], "mixed_precision": summary["mixed_precision"],
            "device": summary["device"], "wall_seconds": round(time.perf_counter() - t0, 2),
            "weights": "none (random init: no ImageNet weights offline)"}


def whole_run(size: dict, dataset: str, work: Path, budget_s: float) -> dict:
    """`python -m tl_tasks run --engine local --profile full` in a child process (TensorFlow blocked as here)."""
    import subprocess

    home = work / "run_home"
    cmd = [sys.executable, "-m", "bench.gpu_bench", "--as-pipeline", "run", "--engine", "local", "--profile", "full",
           "--weights", "none", "--dataset", dataset, "--run-id", "gpu-bench-full"]
    if size is SIZES["tiny"]:  # the plumbing only: a few images at 32 px, one epoch, every variant but v2 (its part)
        cmd += ["--limit-per-class", str(size["limit_per_class"]), "--epochs", "1",
                "--image-size", str(size["image_size"]), "--batch-size", str(size["batch"]),
                "--variants", ",".join(v for v in VARIANTS if v != "resnet50_v2")]
    env = dict(os.environ, TL_HOME=str(home))
    from bench.common import env_vars

    with env_vars(TL_HOME=str(home)):
        compiled_before = _compiled_programs()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=budget_s)
        code, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        code, tail = "timeout", str(exc.stdout or "")[-1500:] + str(exc.stderr or "")[-1500:]
    out = {"command": cmd[2:], "returncode": code, "wall_seconds": round(time.perf_counter() - t0, 1),
           "weights": "none (random init: no ImageNet weights offline)", "variants": {},
           "compiled_programs_at_start": compiled_before}
    for summary_path in sorted(home.glob("runs/*/models/*/train_summary.json")):
        s = json.loads(summary_path.read_text())
        evaluation = summary_path.with_name("evaluation.json")
        acc = json.loads(evaluation.read_text()).get("accuracy") if evaluation.is_file() else None
        out["variants"][s["variant"]] = {"train_seconds": s["train_seconds"], "train_img_per_s": s["train_img_per_s"],
                                         "epoch_img_per_s": s.get("epoch_img_per_s"), "epochs_run": s["epochs_run"],
                                         "batch_size": s["batch_size"], "test_accuracy": acc}
    if code != 0:
        out["log_tail"] = tail
    return out


def _compiled_programs() -> int | None:
    """Compiled programs in the JAX cache this process (with its TL_HOME) uses; None when it is off."""
    from tl_tasks import layout

    folder = layout.jax_compiled_dir()
    return None if folder is None else len(layout.jax_compiled_programs(folder))


def _median(values):
    values = sorted(v for v in values if v)
    return values[len(values) // 2] if values else None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--as-pipeline"]:  # the `run` part's child: the project's CLI, TensorFlow blocked as here
        from tl_tasks.__main__ import main as tl_main

        return tl_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=SIZES, default=os.environ.get("GPU_BENCH_SIZE", "full"))
    parser.add_argument("--dataset", default=os.environ.get("GPU_BENCH_DATASET", ""),
                        help="data source (default: the CIFAR-10 archive in bench/data/ or ../shared/data/)")
    parser.add_argument("--parts", default=os.environ.get("GPU_BENCH_PARTS", ",".join(PARTS)),
                        help=f"comma-separated, in order: {','.join(PARTS)}")
    parser.add_argument("--budget-s", type=float, default=float(os.environ.get("GPU_BENCH_BUDGET_S", "520")),
                        help="seconds for all parts; a part that cannot fit what is left is skipped")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "out" / "gpu.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: next to --out)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")

    import keras

    from tl_tasks.training import runtime

    if keras.backend.backend() != "jax":
        print(f"KERAS_BACKEND={keras.backend.backend()}: this benchmark runs Keras on JAX", file=sys.stderr)
        return 2
    size = SIZES[args.size]
    dataset = args.dataset or _default_dataset()
    gpu = runtime.gpu_available()
    mixed = gpu or args.size == "full"
    if args.size == "tiny":  # a CPU runs the GPU's loop settings (steps per execution) too
        from tl_tasks.training import feeding

        feeding.STEPS_PER_EXECUTION["cpu"] = feeding.STEPS_PER_EXECUTION["gpu"]
    work = args.work or args.out.parent / "gpu_work"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TL_HOME", str(work / "tl_home"))

    record = {"name": "gpu", "size": args.size, "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {"device": runtime.device_description(), "gpu": gpu, "backend": keras.backend.backend(),
                          "keras": keras.__version__, "jax": _version("jax"), "python": platform.python_version(),
                          "tensorflow_loaded": "tensorflow" in sys.modules,
                          # programs already compiled (an earlier run's, under TL_JAX_COMPILATION_CACHE): a warm
                          # cache shortens every part's first step, so a timing is read against this
                          "compiled_programs_at_start": _compiled_programs()},
              "parameters": {**size, "mixed_precision": mixed, "parts": parts, "budget_s": args.budget_s,
                             "dataset": dataset, "weights": "none (random init: no ImageNet weights offline)",
                             "goals": {"train_on_batch_v2_img_per_s": GOAL_IMG_PER_S,
                                       "workflow_v2_img_per_s": GOAL_WORKFLOW_IMG_PER_S,
                                       "v4_step_over_v2_step": GOAL_V4_OVER_V2, "whole_run_minutes": 10}}}
    results: dict = {}
    record["results"] = results
    failed = False
    measures = {"throughput": lambda left: throughput(size, mixed),
                "v2": lambda left: whole_variant("resnet50_v2", size, dataset, work, mixed),
                "v4": lambda left: whole_variant("resnet50_v4", size, dataset, work, mixed),
                "run": lambda left: whole_run(size, dataset, work, left)}
    # Each part is written as soon as it is done: a timeout or a crash later keeps what was measured.
    for key in parts:
        left = args.budget_s - (time.perf_counter() - started)
        need = _estimate(key, results, size)
        if need is not None and need > left:
            results[key] = {"skipped": f"needs about {need:.0f} s (estimated from the parts before), "
                                       f"{left:.0f} s of the budget left; run it alone: GPU_BENCH_PARTS={key}"}
        else:
            try:
                results[key] = measure = measures[key](left)
                if key == "run" and measure.get("returncode") != 0:
                    failed = True
            except Exception as exc:  # recorded, and the exit status says so
                import traceback

                failed = True
                results[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        results["goals_met"] = _goals(results, gpu and args.size == "full")
        record["machine"]["tensorflow_loaded"] = "tensorflow" in sys.modules
        record["seconds"] = round(time.perf_counter() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps({key: results[key]}, indent=1), flush=True)
    print(f"wrote {args.out} in {record['seconds']} s")
    return 1 if failed else 0


def _estimate(part: str, results: dict, size: dict) -> float | None:
    """Seconds a whole-training part should take, from the throughput part's train_on_batch img/s (None: unknown).
    12 epochs of 45,000 images at 80% of train_on_batch speed, plus a minute of compiling, validation and saving."""
    if size is not SIZES["full"]:
        return None
    rates = {k: v.get("img_per_s") for k, v in (results.get("throughput") or {}).items() if isinstance(v, dict)}
    epochs_images = 12 * 45_000

    def one(variant):
        rate = rates.get(variant)
        return epochs_images / (0.8 * rate) + 60 if rate else None

    if part in ("v2", "v4"):
        return one(f"resnet50_{part}")
    if part == "run":
        parts = [one(v) for v in ("resnet50_v2", "resnet50_v3", "resnet50_v4")]
        return None if None in parts else sum(parts) + 120  # + the CNN, v1's features, prepare, gate, report
    return None


def _goals(results: dict, judged: bool) -> dict | None:
    """Each goal: met (True/False), or None when its part is missing; None on a CPU or a tiny run."""
    if not judged:
        return None
    tp, v2 = results.get("throughput") or {}, results.get("v2") or {}
    run = results.get("run") or {}
    fine = (tp.get("resnet50_v2") or {}).get("img_per_s")
    return {"train_on_batch_v2": None if fine is None else fine >= GOAL_IMG_PER_S,
            "workflow_v2": None if not v2.get("compiled_epoch_img_per_s_median")
            else v2["compiled_epoch_img_per_s_median"] >= GOAL_WORKFLOW_IMG_PER_S,
            "v4_step_over_v2_step": None if "v4_step_over_v2_step" not in tp
            else tp["v4_step_over_v2_step"] <= GOAL_V4_OVER_V2,
            "whole_run_10_minutes": None if run.get("returncode") != 0 else run["wall_seconds"] <= 600}


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
