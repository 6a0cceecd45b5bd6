"""The finish stage: the run's verdict, from what its stages recorded."""
from __future__ import annotations

from pathlib import Path

from tl_tasks.errors import RunFailed, first_line
from tl_tasks.gating.decision import Decision
from tl_tasks.stages.context import RunContext, now
from tl_tasks.stages.skip import skip_note


def finish(ctx: RunContext) -> dict:
    """The run's verdict: `{"run_id", "state", "report_path"}`, or RunFailed when a variant failed, the gate or
    the report did not complete, or a regression was fatal (`fail_on_regression`)."""
    store, run_id = ctx.store, ctx.run_id
    run = store.get_run(run_id)
    if run is None:
        raise RunFailed(f"run {run_id!r} is not in the metrics database {store.url}: prepare_data never ran")
    state, problems = conclude(run)
    report = run.get("report_path")
    if not report or not Path(report).is_file():
        problems.append("the report was not built")
        state = "failed"
    error = "; ".join(problems) or None
    if (run.get("state"), run.get("error")) != (state, error) or not run.get("ended_at"):
        store.upsert_run(run_id, state=state, ended_at=run.get("ended_at") or now(), error=error)
    if state not in ("success", "skipped"):
        raise RunFailed(f"run {run_id} failed: {error}" + (f"; report: {report}" if report else ""))
    return {"run_id": run_id, "state": state, "report_path": report}


def conclude(run: dict) -> tuple[str, list[str]]:
    """A stored run's state ("success", "skipped" or "failed") and the reasons it failed, from its results and
    gate."""
    problems: list[str] = []
    params = run.get("params") or {}
    if not run.get("data_fingerprint"):
        problems.append(run.get("error") or "prepare_data did not complete")
        return "failed", problems
    if skip_note(run):
        return "skipped", problems
    results = run.get("results") or {}
    fatal_regression = bool((params.get("gate") or {}).get("fail_on_regression"))
    for variant in params.get("variants") or list(results):
        result = results.get(variant)
        if result is None:
            problems.append(f"{variant}: no result recorded")
        elif result["state"] == "failed":
            problems.append(f"{variant} failed in {result.get('stage') or 'a stage'}: {first_line(result.get('error'))}")
        elif result.get("gate") is None:
            problems.append(f"{variant}: no gate decision recorded")
        elif fatal_regression and result["gate"]["decision"] == Decision.REGRESSED:
            problems.append(f"{variant} regressed (fail_on_regression)")
    return ("failed" if problems else "success"), problems
