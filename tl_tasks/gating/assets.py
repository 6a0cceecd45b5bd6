"""Airflow Assets of the workflow: one per variant's champion (what deployment DAGs schedule on).

The gate task declares the champion assets and emits an event through `CHAMPION_ALIAS` only for the variants
it promoted (a plain Asset outlet would emit on every successful gate). Airflow is imported lazily, so
`tl_tasks` stays importable without it.
"""
from __future__ import annotations

CHAMPION_ALIAS_NAME = "tl_champion_promotions"
CHAMPION_GROUP = "model"


def champion_asset(variant: str):
    """The Asset that gets an event each time `variant` gets a new champion (event extra: run_id, lineage,
    published folder, accuracy)."""
    from airflow.sdk import Asset

    return Asset(name=f"tl_champion_{variant}", uri=f"tl-champion://{variant}", group=CHAMPION_GROUP)


def champion_alias():
    from airflow.sdk import AssetAlias

    return AssetAlias(name=CHAMPION_ALIAS_NAME, group=CHAMPION_GROUP)


def emit_promotions(outlet_events, gate_result: dict) -> list[str]:
    """Add one asset event per variant whose promotion (promoted or bootstrap) became the lineage's `current`
    champion in a `gate_stage` result (its "promoted" map); returns those variants."""
    alias = champion_alias()
    emitted = []
    for variant, folder in (gate_result.get("promoted") or {}).items():
        decision = gate_result["decisions"][variant]
        outlet_events[alias].add(champion_asset(variant), extra={
            "variant": variant, "run_id": gate_result.get("run_id"), "lineage": gate_result.get("lineage"),
            "published": folder, "accuracy": decision.get("accuracy"), "decision": decision.get("decision"),
            "forced": bool(decision.get("forced")),
        })
        emitted.append(variant)
    return emitted
