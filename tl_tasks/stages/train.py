"""The train stage: one variant trained on the run's prepared data into `runs/<key>/models/<variant>/`, recorded."""
from __future__ import annotations

import logging

from tl_tasks.stages import timeouts
from tl_tasks.stages.context import RunContext
from tl_tasks.training import runtime
from tl_tasks.variants import Variant

log = logging.getLogger(__name__)


def train(ctx: RunContext, variant: Variant, *, verbose: int | None = None) -> dict:
    """Train `variant` and record it; on failure the error is recorded for the variant and re-raised.

    `verbose`: Keras fit verbosity (2 = one line per epoch; None = a progress bar on a terminal).

    Returns:
        `TrainResult.summary()`.
    """
    settings = ctx.settings
    ctx.require_prepared()
    try:
        runtime.set_up_worker(settings.data_parallel)
        # Keras loads with the training loop, so only now: set_up_worker claims the device first.
        from tl_tasks.training.loop import train_variant

        limit = timeouts.train_deadline(settings.profile, variant.family, settings.epochs_for(variant.name))
        with timeouts.deadline(limit, f"train {variant.name} of run {ctx.run_id!r}"):
            summary = train_variant(variant, ctx.layout.data_dir, ctx.layout.model_dir(variant.name), settings,
                                    verbose=verbose, reuse_finished=not _trained(ctx, variant)).summary()
    except Exception as exc:
        ctx.record_failure(variant, "train", exc)
        raise
    ctx.store.record_training(ctx.run_id, variant.name, summary)
    if summary.get("device"):
        ctx.store.upsert_run(ctx.run_id, device=summary["device"])
    log.info("trained %s: %d epoch(s) in %.1f s", variant.name, summary.get("epochs_run", 0),
             summary.get("train_seconds", 0))
    return summary


def _trained(ctx: RunContext, variant: Variant) -> bool:
    """Whether the database holds a successful training of `variant` in this run.

    False also when the database cannot be read: then a finished model on disk is reused rather than retrained.
    """
    try:
        result = ctx.store.get_result(ctx.run_id, variant.name) or {}
    except Exception as exc:
        log.warning("could not read %s's result from the metrics database (%s)", variant.name, exc)
        return False
    return result.get("state") == "success" and bool(result.get("trained_at"))
