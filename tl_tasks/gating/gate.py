"""The gate over a run: for each variant, compare with its champion, decide, publish promotions and record the
decisions (the decision rules and their statistics are in `tl_tasks.gating.decision`)."""
from __future__ import annotations

import logging
from pathlib import Path

from tl_tasks.config import DEFAULT_CLASS_GATE, DEFAULT_CLASS_TOLERANCE, Settings
from tl_tasks.data import load_array
from tl_tasks.errors import first_line
from tl_tasks.gating import champions
from tl_tasks.gating.changed_images import stored_predictions
from tl_tasks.gating.decision import (
    Decision,
    RegressionError,
    compare_paired,
    decide,
    summarize,
    validate_alpha,
    validate_tolerance,
    versus_previous,
)
from tl_tasks.gating.model_card import MODEL_CARD_FILE, write_champion_card
from tl_tasks.gating.per_class import apply_class_gate, compare_classes
from tl_tasks.layout import RunLayout
from tl_tasks.store import MetricsStore
from tl_tasks.training.predictions import PredictionsUnavailable, load_predictions
from tl_tasks.variants import Variant

log = logging.getLogger(__name__)


def gate_run(store: MetricsStore, run: dict, layout: RunLayout, variants: tuple[Variant, ...], settings: Settings, *,
             tolerance: float, alpha: float, fail_on_regression: bool = False, force_promote: bool = False,
             raise_on_regression: bool = True, class_gate: bool = DEFAULT_CLASS_GATE,
             class_tolerance: float = DEFAULT_CLASS_TOLERANCE) -> dict:
    """Compare each variant of the run with its champion, image by image, record the decision, and publish
    promoted models under `$TL_HOME/champions/` (see `tl_tasks.gating.decision` and `tl_tasks.gating.champions`).

    The champion is the variant's latest promotion among earlier runs of the same lineage (the same test images);
    a run on other data never touches it. A variant without a result (its task was killed) or without an
    evaluation is recorded as failed first.

    A promoted model is published, then made the lineage's `current` champion only if the metrics database
    agrees it is the latest promotion (an older run's gate, rerun later, never rolls `current` back). A model
    that cannot be published is recorded as "kept" with the reason; the others are still gated.

    Args:
        store: an open `MetricsStore`; run: the stored run (prepared: it has a lineage); layout: its files.
        variants: the variants to gate; settings: the run's (stored as its params if it has none).
        class_gate / class_tolerance: block a promotion when a class is significantly worse beyond the
            per-class tolerance (`tl_tasks.gating.per_class`); the per-class comparison is stored either way.

    Returns:
        `{"run_id", "decisions": {variant: decision}, "summary": {decision: [variants]}, "tolerance": t,
        "alpha": a, "lineage": fingerprint, "promoted": {variant: published folder now current}}`.

    Raises:
        RegressionError: a variant regressed, `fail_on_regression` and `raise_on_regression` are set (after
            recording everything). The DAG passes `raise_on_regression=False` so that the gate task succeeds
            and emits its asset events; its `finalize` task fails the run instead.
        ChampionError: a promoted model could not be published (after recording every decision); a retry
            publishes it.
    """
    tolerance, alpha = validate_tolerance(tolerance), validate_alpha(alpha)
    class_tolerance = validate_tolerance(class_tolerance)
    options = {"tolerance": tolerance, "alpha": alpha, "fail_on_regression": bool(fail_on_regression),
               "force_promote": bool(force_promote), "class_gate": bool(class_gate),
               "class_tolerance": class_tolerance}
    decisions: dict[str, dict] = {}
    published: dict[str, str] = {}
    publish_errors: list[str] = []
    run_id = run["run_id"]
    store.upsert_run(run_id, params={**(run.get("params") or settings.to_dict()), "gate": options})
    y_test = None
    previous = store.previous_run(run_id, same_lineage=True)  # the report's "vs previous run", compared here
    for v in variants:
        variant = v.name
        result = run["results"].get(variant)
        if result is None:
            result = store.record_failure(run_id, variant, "train",
                                          "no result was recorded: the train task was killed or never ran")
        elif result["state"] != "failed" and result.get("accuracy") is None:
            result = store.record_failure(run_id, variant, "evaluate",
                                          "no evaluation was recorded: the evaluate task was killed or never ran")
        failed = result["state"] == "failed"
        error = f"{result.get('stage') or 'a stage'} failed: {first_line(result.get('error'))}" if failed else None
        champion = store.champion(variant, before_run_id=run_id, lineage=run["lineage"])
        paired, unpaired, classes, versus_previous = None, None, None, None
        before = ((previous or {}).get("results") or {}).get(variant)
        if (champion is not None or before is not None) and not failed:
            if y_test is None:
                y_test = load_array(layout, "y_test")
            if champion is not None:
                paired, unpaired, classes = _paired(result, champion, y_test, alpha,
                                                    result.get("class_names") or run.get("class_names") or [])
            if before is not None and before.get("accuracy") is not None:
                versus_previous = _versus(result, before, previous["run_id"], y_test, alpha)
        decision = decide(result.get("accuracy"), champion, paired=paired, tolerance=tolerance, alpha=alpha,
                          force_promote=force_promote, failed=failed, error=error,
                          test_images=(result.get("eval_info") or {}).get("test_images"),
                          unpaired_reason=unpaired)
        decision = apply_class_gate(decision, classes, enabled=class_gate, tolerance=class_tolerance)
        decision["lineage"] = run["lineage"]
        decision["previous"] = versus_previous
        folder = None
        if decision["promoted"]:
            try:
                folder = champions.publish(run, result, decision)
                decision["published"] = str(folder)
            except (champions.ChampionError, OSError) as exc:
                publish_errors.append(f"{variant}: {exc}")
                decision.update(decision=Decision.KEPT, promoted=False,
                                reason=f"promotion not published ({exc}); was: {decision['reason']}")
        if folder is not None:  # stored with the decision, so that `champion show` finds the card
            decision["model_card"] = str(Path(folder) / MODEL_CARD_FILE)
        store.record_gate(run_id, variant, decision)
        if folder is not None:
            write_champion_card(store, run_id, variant, folder)  # reads the decision just stored
        newest = store.champion(variant, lineage=run["lineage"]) if folder else None
        if newest is not None and newest["run_id"] == run_id:
            champions.make_current(folder)
            published[variant] = str(folder)
        elif folder is not None:
            log.warning("%s of run %s was promoted, but a later run's promotion is the current champion; "
                        "`current` stays on run %s", variant, run_id, newest and newest["run_id"])
        decisions[variant] = decision
        log.info("gate %s: %s (%s)", variant, decision["decision"], decision["reason"])
    out = {"run_id": run_id, "decisions": decisions, "summary": summarize(decisions), "tolerance": tolerance,
           "alpha": alpha, "lineage": run["lineage"], "promoted": published}
    if publish_errors:
        raise champions.ChampionError("could not publish: " + "; ".join(publish_errors)
                                      + " (the decisions are stored; a retry publishes again)")
    regressed = [v for v, d in decisions.items() if d["decision"] == Decision.REGRESSED]
    if regressed and fail_on_regression and raise_on_regression:
        details = "; ".join(f"{v}: {decisions[v]['reason']}" for v in regressed)
        raise RegressionError(f"regression beyond tolerance {tolerance:g} in {', '.join(regressed)} ({details}); "
                              "the decisions are stored and shown in the report")
    return out


def _paired(result: dict, champion: dict, y_test, alpha: float,
            class_names: list) -> tuple[dict | None, str | None, list | None]:
    """The paired comparison of a result with its champion and per class, or (None, why not, None)."""
    try:
        new = load_predictions(result.get("predictions_path"), result.get("predictions_sha256"),
                               expected_len=len(y_test))
        try:
            old = stored_predictions(champion, len(y_test))
        except PredictionsUnavailable as exc:
            raise PredictionsUnavailable(f"the champion ({exc})") from None
    except PredictionsUnavailable as exc:
        log.warning("no paired comparison for %s: %s", result["variant"], exc)
        return None, str(exc), None
    classes = compare_classes(y_test, new, old, class_names, alpha=alpha) if class_names else None
    return compare_paired(y_test, new, old, alpha=alpha), None, classes


def _versus(result: dict, before: dict, before_run_id: str, y_test, alpha: float) -> dict | None:
    """`versus_previous` from both runs' stored per-image predictions; None without them."""
    try:
        new = load_predictions(result.get("predictions_path"), result.get("predictions_sha256"),
                               expected_len=len(y_test))
        old = load_predictions(before.get("predictions_path"), before.get("predictions_sha256"),
                               expected_len=len(y_test))
    except PredictionsUnavailable:
        return None
    return versus_previous(y_test, new, old, previous_run_id=before_run_id, alpha=alpha)
