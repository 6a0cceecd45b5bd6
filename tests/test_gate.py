"""The gate's pure decision function: bootstrap, promoted, kept, regressed, failed, forced; tolerance edges."""
from __future__ import annotations

import pytest

from tl_tasks.gate import (
    DEFAULT_TOLERANCE, DECISIONS, PROMOTING, decide, incomparable_test_sets, summarize, validate_tolerance,
)

CHAMPION = {"run_id": "run-1", "accuracy": 0.60}


def test_first_run_bootstraps():
    d = decide(0.10, None)
    assert d["decision"] == "bootstrap" and d["promoted"] is True and d["forced"] is False
    assert d["champion_run_id"] is None and d["champion_accuracy"] is None and d["delta"] is None
    assert d["tolerance"] == DEFAULT_TOLERANCE == 0.02


@pytest.mark.parametrize("accuracy, decision", [
    (0.65, "promoted"),     # better
    (0.6001, "promoted"),   # better, barely
    (0.60, "kept"),         # equal: the champion stays
    (0.59, "kept"),         # within tolerance
    (0.58, "kept"),         # exactly at the tolerance (0.60 - 0.58 = 0.0199999... or 0.02000...1 in floats)
    (0.5799, "regressed"),  # just beyond
    (0.30, "regressed"),
])
def test_decision_against_champion(accuracy, decision):
    d = decide(accuracy, CHAMPION, tolerance=0.02)
    assert d["decision"] == decision, d
    assert d["promoted"] is (decision == "promoted")
    assert d["champion_run_id"] == "run-1" and d["champion_accuracy"] == 0.60
    assert d["delta"] == pytest.approx(accuracy - 0.60)
    assert d["reason"]


def test_tolerance_boundary_is_inclusive_despite_float_rounding():
    # 0.52 - 0.50 == 0.020000000000000018 in binary floating point: still within a 0.02 tolerance.
    assert decide(0.50, {"run_id": "r", "accuracy": 0.52}, tolerance=0.02)["decision"] == "kept"
    assert decide(0.70, {"run_id": "r", "accuracy": 0.72}, tolerance=0.02)["decision"] == "kept"


def test_zero_tolerance_any_drop_regresses():
    assert decide(0.5999, CHAMPION, tolerance=0.0)["decision"] == "regressed"
    assert decide(0.60, CHAMPION, tolerance=0.0)["decision"] == "kept"


def test_failed_variant():
    d = decide(None, CHAMPION, failed=True, error="train failed: boom")
    assert d["decision"] == "failed" and d["promoted"] is False
    assert "boom" in d["reason"]
    assert d["champion_accuracy"] == 0.60  # the champion is still reported
    # no accuracy at all counts as failed too; and NaN is not a number to promote
    assert decide(None, None)["decision"] == "failed"
    assert decide(float("nan"), None)["decision"] == "failed"
    # a failed model is never promoted, even when forced
    assert decide(None, CHAMPION, failed=True, force_promote=True)["decision"] == "failed"


@pytest.mark.parametrize("accuracy, overridden", [(0.30, "regressed"), (0.59, "kept")])
def test_force_promote(accuracy, overridden):
    d = decide(accuracy, CHAMPION, force_promote=True)
    assert d["decision"] == "promoted" and d["promoted"] is True and d["forced"] is True
    assert d["overridden"] == overridden and "force_promote" in d["reason"]


def test_force_promote_does_not_mark_natural_promotions_or_bootstraps():
    assert decide(0.9, CHAMPION, force_promote=True)["forced"] is False
    assert decide(0.1, None, force_promote=True) | {"reason": ""} == decide(0.1, None) | {"reason": ""}


def test_decisions_are_the_store_vocabulary():
    from tl_tasks.store.models import CHAMPION_DECISIONS, GATE_DECISIONS

    assert set(DECISIONS) == set(GATE_DECISIONS)
    assert set(PROMOTING) == set(CHAMPION_DECISIONS)


@pytest.mark.parametrize("bad", [-0.01, 1.0, 2, "x", None])
def test_bad_tolerance_is_refused_with_the_value(bad):
    with pytest.raises(ValueError, match="tolerance"):
        validate_tolerance(bad)
    with pytest.raises(ValueError, match="tolerance"):
        decide(0.5, CHAMPION, tolerance=bad)


def test_summarize():
    decisions = {"cnn": decide(0.5, None), "resnet50_v1": decide(0.1, CHAMPION), "resnet50_v2": decide(None, None)}
    assert summarize(decisions) == {"bootstrap": ["cnn"], "regressed": ["resnet50_v1"], "failed": ["resnet50_v2"]}


def test_incomparable_champion_starts_a_new_lineage():
    d = decide(0.30, CHAMPION, incomparable="data source 'a' then, 'b' now")
    assert d["decision"] == "bootstrap" and d["promoted"] and "not comparable" in d["reason"]
    assert d["champion_run_id"] == "run-1"  # still reported
    assert decide(None, CHAMPION, failed=True, incomparable="x")["decision"] == "failed"


def test_incomparable_test_sets():
    cifar = {"source": "cifar10", "class_names": ["a", "b"], "counts": {"train": 9, "test": 100}}
    assert incomparable_test_sets(cifar, dict(cifar, counts={"train": 5, "test": 100})) is None  # train may differ
    assert "data source" in incomparable_test_sets(cifar, dict(cifar, source="synthetic"))
    assert "classes" in incomparable_test_sets(cifar, dict(cifar, class_names=["a", "c"]))
    assert "test images" in incomparable_test_sets(cifar, dict(cifar, counts={"test": 80}))
    assert incomparable_test_sets(cifar, None) is None and incomparable_test_sets(None, cifar) is None
