"""The gate stage: each variant of the run against its champion (`tl_tasks.gating.gate.gate_run`), unless the run
was skipped as unchanged."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from tl_tasks.errors import RunFailed
from tl_tasks.gating.decision import DEFAULT_ALPHA, DEFAULT_TOLERANCE, validate_alpha, validate_tolerance
from tl_tasks.gating.gate import gate_run
from tl_tasks.stages.context import RunContext
from tl_tasks.stages.skip import skip_note

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateOptions:
    """The gate's options of one run (the trigger form's Gate section)."""

    tolerance: float = DEFAULT_TOLERANCE
    alpha: float = DEFAULT_ALPHA
    fail_on_regression: bool = False
    force_promote: bool = False

    def __post_init__(self):
        validate_tolerance(self.tolerance)
        validate_alpha(self.alpha)

    @classmethod
    def from_params(cls, params: dict | None) -> GateOptions:
        """From trigger params or command-line values; absent ones take their defaults."""
        given = {k: v for k, v in (params or {}).items() if k in cls.__dataclass_fields__ and v is not None}
        return cls(**given)


def gate(ctx: RunContext, options: GateOptions, *, raise_on_regression: bool = True) -> dict:
    """Gate the run (see `gate_run` for the result and the errors); a run skipped as unchanged returns no
    decisions and `"skipped": {reason, same_as}`."""
    run = ctx.store.get_run(ctx.run_id)
    if run is None:
        raise ValueError(f"run id {ctx.run_id!r} is not in the metrics database {ctx.store.url}; prepare it first "
                         f"(python -m tl_tasks prepare --run-id {ctx.run_id})")
    if not run.get("data_fingerprint") or not run.get("lineage"):
        why = run.get("error") or "prepare_data did not complete"
        raise RunFailed(f"run {ctx.run_id!r} has no prepared data ({why}); there is nothing to gate")
    note = skip_note(run)
    if note:
        log.info("gate: run %s was skipped (unchanged since %s); nothing to gate", ctx.run_id, note["same_as"])
        return {"run_id": ctx.run_id, "decisions": {}, "summary": {}, "tolerance": options.tolerance,
                "alpha": options.alpha, "lineage": run["lineage"], "promoted": {}, "skipped": note}
    return gate_run(ctx.store, run, ctx.layout, ctx.variants, ctx.settings, tolerance=options.tolerance,
                    alpha=options.alpha, fail_on_regression=options.fail_on_regression,
                    force_promote=options.force_promote, raise_on_regression=raise_on_regression)
