"""The evaluate stage: a trained variant measured once on the test split, its metrics recorded."""
from __future__ import annotations

import logging

from tl_tasks.stages import timeouts
from tl_tasks.stages.context import RunContext
from tl_tasks.training import runtime
from tl_tasks.variants import Variant

log = logging.getLogger(__name__)

HEADLINE = ("variant", "accuracy", "loss", "top3_accuracy", "macro_f1", "inference_img_per_s", "params_total",
            "params_trainable", "model_size_bytes")


def evaluate(ctx: RunContext, variant: Variant) -> dict:
    """Evaluate `variant` and record the metrics; on failure the error is recorded for the variant and re-raised.

    Returns:
        The headline metrics (`HEADLINE`) and `evaluation_path`.
    """
    settings = ctx.settings
    ctx.require_prepared()
    try:
        runtime.set_up_worker(settings.data_parallel)
        # Keras loads with the evaluation module, so only now: set_up_worker claims the device first.
        from tl_tasks.training.evaluate import evaluate_variant

        with timeouts.deadline(timeouts.evaluate_deadline(settings.profile),
                               f"evaluate {variant.name} of run {ctx.run_id!r}"):
            evaluation = evaluate_variant(variant, ctx.layout.data_dir, ctx.layout.model_dir(variant.name),
                                          settings).to_dict()
    except Exception as exc:
        ctx.record_failure(variant, "evaluate", exc)
        raise
    ctx.store.record_evaluation(ctx.run_id, variant.name, evaluation)
    log.info("evaluated %s: test accuracy %.4f", variant.name, evaluation["accuracy"])
    return {**{k: evaluation.get(k) for k in HEADLINE}, "variant": variant.name,
            "evaluation_path": str(ctx.layout.evaluation_file(variant.name))}
