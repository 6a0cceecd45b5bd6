"""The metrics database's tables and how their rows become plain, JSON-safe dicts (shared by reads and writes).

Dates come back as ISO 8601 strings in UTC ("2026-01-31T12:00:00+00:00").
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tl_tasks.store.models import (
    ClassChange,
    ClassMetric,
    ConfusionMatrix,
    EpochMetric,
    GateDecision,
    Result,
    RobustnessMetric,
    Run,
)
from tl_tasks.variants import in_registry_order

runs_t = Run.__table__
results_t = Result.__table__
epochs_t = EpochMetric.__table__
classes_t = ClassMetric.__table__
confusion_t = ConfusionMatrix.__table__
gates_t = GateDecision.__table__
class_changes_t = ClassChange.__table__
robustness_t = RobustnessMetric.__table__

RUN_FIELDS = ("run_id", "dag_id", "logical_date", "started_at", "ended_at", "state", "profile", "params",
              "data_source", "data_fingerprint", "lineage", "data_summary", "class_names", "seed", "versions", "device",
              "report_path", "error", "created_at", "updated_at")
RESULT_FIELDS = ("variant", "state", "stage", "error", "weights", "model_path", "epochs_run", "best_epoch",
                 "resumed_from_epoch", "train_seconds", "train_info", "trained_at", "accuracy", "loss",
                 "top3_accuracy", "macro_f1", "inference_img_per_s", "model_size_bytes", "class_names",
                 "misclassified", "eval_info", "predictions_path", "predictions_sha256", "model_sha256",
                 "evaluated_at", "ece", "ece_scaled", "temperature", "robust_accuracy", "params_total", "params_trainable", "failed_at", "created_at", "updated_at")
HISTORY_FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
CLASS_FIELDS = ("class_name", "precision", "recall", "f1", "support")
CLASS_CHANGE_FIELDS = ("class_index", "class_name", "n", "recall", "champion_recall", "delta", "fixed", "broken",
                      "p_value", "p_holm", "significant")
GATE_FIELDS = ("decision", "champion_run_id", "champion_accuracy", "accuracy", "delta", "tolerance", "forced",
               "decided_at")


def plain(value):
    """A stored value as JSON-safe Python: datetimes become ISO 8601 strings."""
    return value.isoformat() if isinstance(value, datetime) else value


def pick(row, fields) -> dict:
    """`fields` of a row as a dict of plain values."""
    m = row._mapping
    return {f: plain(m[f]) for f in fields}


def gate_dict(row) -> dict:
    """A gate_decisions row as the decision dict it was recorded from (its details merged back in)."""
    d = dict(row.details or {})
    d.update(pick(row, GATE_FIELDS))
    d["forced"] = bool(d["forced"])
    return d


def load_results(conn: Connection, where) -> list[tuple[int, dict]]:
    """Results matching `where` as (run pk, result dict incl. history, per_class, confusion_matrix, gate)."""
    rows = conn.execute(sa.select(results_t).where(where)).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    history, per_class, confusion, gates = defaultdict(list), defaultdict(list), {}, {}
    for r in conn.execute(sa.select(epochs_t).where(epochs_t.c.result_id.in_(ids))
                          .order_by(epochs_t.c.result_id, epochs_t.c.epoch)):
        history[r.result_id].append(pick(r, HISTORY_FIELDS))
    for r in conn.execute(sa.select(classes_t).where(classes_t.c.result_id.in_(ids))
                          .order_by(classes_t.c.result_id, classes_t.c.class_index)):
        per_class[r.result_id].append(pick(r, CLASS_FIELDS))
    for r in conn.execute(sa.select(confusion_t).where(confusion_t.c.result_id.in_(ids))):
        confusion[r.result_id] = r.matrix
    for r in conn.execute(sa.select(gates_t).where(gates_t.c.result_id.in_(ids))):
        gates[r.result_id] = gate_dict(r)
    changes, robust = defaultdict(list), defaultdict(dict)
    for r in conn.execute(sa.select(class_changes_t).where(class_changes_t.c.result_id.in_(ids))
                          .order_by(class_changes_t.c.result_id, class_changes_t.c.class_index)):
        changes[r.result_id].append({**pick(r, CLASS_CHANGE_FIELDS), "significant": bool(r.significant),
                                     "delta_ci": [r.ci_low, r.ci_high] if r.ci_low is not None else None})
    for r in conn.execute(sa.select(robustness_t).where(robustness_t.c.result_id.in_(ids))
                          .order_by(robustness_t.c.result_id, robustness_t.c.corruption, robustness_t.c.severity)):
        robust[r.result_id].setdefault(r.corruption, []).append(r.accuracy)
    out = []
    for r in rows:
        d = pick(r, RESULT_FIELDS)
        d.update(history=history[r.id], per_class=per_class[r.id], confusion_matrix=confusion.get(r.id),
                 gate=gates.get(r.id), class_changes=changes[r.id],
                 calibration=_calibration(d), robustness=_robustness(d, robust.get(r.id)))
        out.append((r.run_pk, d))
    return out


def _calibration(d: dict) -> dict | None:
    """ECE columns with the reliability bins kept in eval_info; None when the result was never calibrated."""
    if d.get("ece") is None:
        return None
    extra = (d.get("eval_info") or {}).get("calibration") or {}
    return {**extra, "ece": d["ece"], "ece_scaled": d["ece_scaled"], "temperature": d["temperature"]}


def _robustness(d: dict, by_corruption: dict | None) -> dict | None:
    if d.get("robust_accuracy") is None and not by_corruption:
        return None
    extra = (d.get("eval_info") or {}).get("robustness") or {}
    return {**extra, "accuracy": d.get("robust_accuracy"), "by_corruption": by_corruption or {}}


def run_dict(conn: Connection, row, with_results: bool = True) -> dict:
    """A runs row as a dict; with `results`: {variant: result dict}, variants in registry order."""
    d = pick(row, RUN_FIELDS)
    if with_results:
        loaded = {res["variant"]: res for _, res in load_results(conn, results_t.c.run_pk == row.id)}
        d["results"] = {v: loaded[v] for v in in_registry_order(loaded)}
    return d
