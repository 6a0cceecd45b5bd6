"""Write statements of the metrics database, all in one place: open or update a run, record a variant's training,
evaluation, failure and gate decision, delete a run. Each takes a Connection inside a write transaction.

Writes are upserts on natural keys (run id; run id + variant), so retrying a task replaces its rows.
"""
from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tl_tasks.store import queries
from tl_tasks.store.models import DECISIONS, Decision, to_utc, utcnow
from tl_tasks.store.rows import (
    classes_t,
    confusion_t,
    epochs_t,
    gate_dict,
    gates_t,
    results_t,
    run_dict,
    runs_t,
)

RUN_WRITABLE_FIELDS = ("dag_id", "logical_date", "started_at", "ended_at", "state", "profile", "params",
                       "data_source", "data_fingerprint", "lineage", "data_summary", "class_names", "seed", "versions",
                       "device", "report_path", "error")
_JSON_RUN_FIELDS = {"params", "data_summary", "class_names", "versions"}
_TRAIN_FIELDS = ("weights", "model_path", "epochs_run", "best_epoch", "resumed_from_epoch", "train_seconds")
_EVAL_FIELDS = ("accuracy", "loss", "top3_accuracy", "macro_f1", "inference_img_per_s", "model_size_bytes",
                "predictions_path", "predictions_sha256", "model_sha256")
_SHARED_FIELDS = ("params_total", "params_trainable")
_INT_FIELDS = {"epochs_run", "best_epoch", "resumed_from_epoch", "model_size_bytes", "params_total",
               "params_trainable", "seed", "epoch", "support"}
_MAX_ERROR_CHARS = 20_000


def upsert_run(conn: Connection, run_id: str, **fields) -> dict:
    """Create or update the run; only the given fields change. Returns the run (without results).

    Fields: dag_id, logical_date, started_at, ended_at (datetime or ISO string; naive = UTC), state,
    profile, params (dict), data_source, data_fingerprint, lineage, data_summary (dict), class_names (list),
    seed, versions (dict), device, report_path, error.
    """
    run_id = _check_run_id(run_id)
    unknown = sorted(set(fields) - set(RUN_WRITABLE_FIELDS))
    if unknown:
        raise ValueError(f"upsert_run got unknown field(s) {unknown}; valid: {', '.join(RUN_WRITABLE_FIELDS)}")
    values = {k: (_jsonable(v) if k in _JSON_RUN_FIELDS else _scalar(k, v)) for k, v in fields.items()}
    for k in ("logical_date", "started_at", "ended_at"):
        if values.get(k) is not None:
            values[k] = to_utc(values[k], k)
    now = utcnow()
    stmt = _insert(conn, runs_t).values(run_id=run_id, created_at=now, updated_at=now, sort_time=now, **values)
    stmt = stmt.on_conflict_do_update(index_elements=["run_id"], set_={**values, "updated_at": now})
    conn.execute(stmt)
    conn.execute(runs_t.update().where(runs_t.c.run_id == run_id).values(
        sort_time=sa.func.coalesce(runs_t.c.logical_date, runs_t.c.started_at, runs_t.c.created_at)))
    row = conn.execute(sa.select(runs_t).where(runs_t.c.run_id == run_id)).one()
    return run_dict(conn, row, with_results=False)


def record_training(conn: Connection, run_id: str, variant: str, summary: dict) -> dict:
    """Store a train summary: the result row's training fields and the epoch history (replaced).

    Keys used: state (default "success"), error, weights, model_path, epochs_run, best_epoch,
    resumed_from_epoch, train_seconds, params_total, params_trainable, history (list of
    {epoch, loss, accuracy, val_loss, val_accuracy, seconds}); other keys go to `train_info`.
    Returns the result dict (as get_result).
    """
    summary = _check_payload("summary", variant, summary)
    now = utcnow()
    state = str(summary.get("state") or "success")
    values = {k: _scalar(k, summary.get(k)) for k in _TRAIN_FIELDS}
    values.update({k: _scalar(k, summary[k]) for k in _SHARED_FIELDS if summary.get(k) is not None})
    values.update(
        state=state, stage="train" if state == "failed" else None,
        error=_error_text(summary.get("error")) if summary.get("error") else None,
        train_info=_jsonable(_extra(summary, {"variant", "state", "error", "history",
                                              *_TRAIN_FIELDS, *_SHARED_FIELDS})),
        trained_at=now,
    )
    history = _history_rows(summary.get("history") or [])
    result_id = _upsert_result(conn, _run_pk(conn, run_id), variant, values, now)
    conn.execute(epochs_t.delete().where(epochs_t.c.result_id == result_id))
    if history:
        conn.execute(epochs_t.insert(), [{"result_id": result_id, **h} for h in history])
    return queries.get_result(conn, run_id, variant)


def record_evaluation(conn: Connection, run_id: str, variant: str, evaluation: dict) -> dict:
    """Store an evaluation: test metrics on the result row (state "success"), per-class metrics and the
    confusion matrix (both replaced).

    Keys used: accuracy, loss, top3_accuracy, macro_f1, inference_img_per_s, model_size_bytes,
    predictions_path, predictions_sha256, model_sha256, params_total, params_trainable, class_names,
    misclassified, per_class (list of {class_name, precision, recall, f1, support}), confusion_matrix
    (list of lists); other keys go to `eval_info`. Returns the result dict (as get_result).
    """
    evaluation = _check_payload("evaluation", variant, evaluation)
    now = utcnow()
    class_names = [str(c) for c in evaluation.get("class_names") or []] or None
    values = {k: _scalar(k, evaluation.get(k)) for k in _EVAL_FIELDS}
    values.update({k: _scalar(k, evaluation[k]) for k in _SHARED_FIELDS if evaluation.get(k) is not None})
    values.update(
        state="success", stage=None, error=None, class_names=class_names,
        misclassified=_jsonable(evaluation.get("misclassified")),
        eval_info=_jsonable(_extra(evaluation, {"variant", "per_class", "confusion_matrix", "class_names",
                                                "misclassified", *_EVAL_FIELDS, *_SHARED_FIELDS})),
        evaluated_at=now,
    )
    per_class = []
    for i, c in enumerate(evaluation.get("per_class") or []):
        name = c.get("class_name") or (class_names[i] if class_names and i < len(class_names) else str(i))
        per_class.append({"class_index": i, "class_name": str(name),
                          **{k: _scalar(k, c.get(k)) for k in ("precision", "recall", "f1", "support")}})
    matrix = evaluation.get("confusion_matrix")
    result_id = _upsert_result(conn, _run_pk(conn, run_id), variant, values, now)
    for table in (classes_t, confusion_t):
        conn.execute(table.delete().where(table.c.result_id == result_id))
    if per_class:
        conn.execute(classes_t.insert(), [{"result_id": result_id, **c} for c in per_class])
    if matrix is not None:
        conn.execute(confusion_t.insert().values(result_id=result_id, class_names=class_names,
                                                 matrix=_jsonable(matrix)))
    return queries.get_result(conn, run_id, variant)


def record_failure(conn: Connection, run_id: str, variant: str, stage: str, error: str) -> dict:
    """Mark the variant's result as failed in `stage` ("train", "evaluate", ...) with the error text
    (a traceback is fine; the last 20,000 characters are kept). Other fields are left as they were."""
    if not stage or not str(stage).strip():
        raise ValueError("stage is empty; pass the stage that failed, e.g. 'train' or 'evaluate'")
    now = utcnow()
    values = {"state": "failed", "stage": str(stage), "error": _error_text(error), "failed_at": now}
    _upsert_result(conn, _run_pk(conn, run_id), variant, values, now)
    return queries.get_result(conn, run_id, variant)


def record_gate(conn: Connection, run_id: str, variant: str, decision: dict) -> dict:
    """Store the gate's decision for a variant (replacing an earlier one): {decision: one of gate.DECISIONS,
    champion_run_id, champion_accuracy, accuracy, delta, tolerance, forced}; other keys (reason, p_value,
    published, ...) are kept too. Returns the stored decision (with decided_at)."""
    if not isinstance(decision, dict):
        raise ValueError(f"decision={decision!r} must be a dict like {{'decision': {Decision.PROMOTED!r}, ...}}")
    verdict = decision.get("decision")
    if verdict not in DECISIONS:
        raise ValueError(f"decision={verdict!r} is not a gate decision; use one of {', '.join(DECISIONS)}")
    variant = _check_variant(variant)
    now = utcnow()
    known = ("champion_run_id", "champion_accuracy", "accuracy", "delta", "tolerance")
    values = {k: _scalar(k, decision.get(k)) for k in known}
    if values["champion_run_id"] is not None:
        values["champion_run_id"] = str(values["champion_run_id"])
    values.update(decision=verdict, forced=bool(decision.get("forced", False)), decided_at=now,
                  details=_jsonable(_extra(decision, {"decision", "variant", "forced", *known})))
    result_id = _ensure_result(conn, _run_pk(conn, run_id), variant, now)
    stmt = _insert(conn, gates_t).values(result_id=result_id, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["result_id"], set_=values))
    row = conn.execute(sa.select(gates_t).where(gates_t.c.result_id == result_id)).one()
    return gate_dict(row)


def delete_run(conn: Connection, run_id: str) -> bool:
    """Remove a run and all its results; True if it existed."""
    pk = conn.execute(sa.select(runs_t.c.id).where(runs_t.c.run_id == run_id)).scalar()
    if pk is None:
        return False
    result_ids = sa.select(results_t.c.id).where(results_t.c.run_pk == pk)
    for table in (epochs_t, classes_t, confusion_t, gates_t):
        conn.execute(table.delete().where(table.c.result_id.in_(result_ids)))
    conn.execute(results_t.delete().where(results_t.c.run_pk == pk))
    conn.execute(runs_t.delete().where(runs_t.c.id == pk))
    return True


# --- helpers ---------------------------------------------------------------------------------------------------

def _run_pk(conn: Connection, run_id: str) -> int:
    """The run's primary key, creating a minimal run row first if needed (tasks write in any order)."""
    run_id = _check_run_id(run_id)
    now = utcnow()
    stmt = (_insert(conn, runs_t).values(run_id=run_id, created_at=now, updated_at=now, sort_time=now)
            .on_conflict_do_nothing(index_elements=["run_id"]).returning(runs_t.c.id))
    pk = conn.execute(stmt).scalar()
    if pk is None:
        pk = conn.execute(sa.select(runs_t.c.id).where(runs_t.c.run_id == run_id)).scalar_one()
    return pk


def _insert(conn: Connection, table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _upsert_result(conn: Connection, run_pk: int, variant: str, values: dict, now: datetime) -> int:
    variant = _check_variant(variant)
    values = {**values, "updated_at": now}
    stmt = _insert(conn, results_t).values(run_pk=run_pk, variant=variant, created_at=now, **values)
    stmt = stmt.on_conflict_do_update(index_elements=["run_pk", "variant"], set_=values).returning(results_t.c.id)
    return conn.execute(stmt).scalar_one()


def _ensure_result(conn: Connection, run_pk: int, variant: str, now: datetime) -> int:
    stmt = (_insert(conn, results_t).values(run_pk=run_pk, variant=variant, state="pending", created_at=now,
                                            updated_at=now)
            .on_conflict_do_nothing(index_elements=["run_pk", "variant"]).returning(results_t.c.id))
    rid = conn.execute(stmt).scalar()
    if rid is None:
        rid = conn.execute(sa.select(results_t.c.id).where(results_t.c.run_pk == run_pk,
                                                           results_t.c.variant == variant)).scalar_one()
    return rid


def _check_run_id(run_id) -> str:
    if not isinstance(run_id, str) or not run_id.strip():
        raise ValueError(f"run_id={run_id!r} must be a non-empty string such as 'manual__2026-01-31T12:00:00+00:00'")
    if len(run_id) > 250:
        raise ValueError(f"run_id={run_id[:40]!r}... is {len(run_id)} characters; at most 250 are stored")
    return run_id


def _check_variant(variant) -> str:
    if not isinstance(variant, str) or not variant.strip():
        raise ValueError(f"variant={variant!r} must be a non-empty string such as 'resnet50_v1'")
    return variant


def _check_payload(what: str, variant: str, payload) -> dict:
    _check_variant(variant)
    if not isinstance(payload, dict):
        raise ValueError(f"{what} for {variant!r} must be a dict, got {type(payload).__name__}")
    if payload.get("variant") not in (None, variant):
        raise ValueError(f"{what} is for variant {payload['variant']!r} but was recorded as {variant!r}")
    return payload


def _extra(payload: dict, known: set) -> dict | None:
    extra = {k: v for k, v in payload.items() if k not in known}
    return extra or None


def _history_rows(history) -> list[dict]:
    rows: dict[int, dict] = {}
    for i, h in enumerate(history):
        epoch = h.get("epoch")
        epoch = i + 1 if epoch is None else int(epoch)
        rows[epoch] = {"epoch": epoch, **{k: _scalar(k, h.get(k))
                                          for k in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds")}}
    return [rows[e] for e in sorted(rows)]  # a resumed run may repeat an epoch: the last one wins


def _error_text(error) -> str:
    text = str(error) if error is not None else ""
    return text if len(text) <= _MAX_ERROR_CHARS else "...\n" + text[-_MAX_ERROR_CHARS:]


def _scalar(key: str, value):
    """numpy scalars -> Python; NaN/inf -> None (not representable in JSON or SQLite); Paths -> str."""
    if value is None or isinstance(value, (str, bool, datetime)):
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if key in _INT_FIELDS and value.is_integer() else value
    return value


def _default(value: Any):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _jsonable(value):
    """A JSON-safe copy (numpy arrays/scalars, Paths, tuples, datetimes converted; NaN -> None)."""
    if value is None:
        return None
    text = json.dumps(value, default=_default, allow_nan=True)
    return json.loads(text, parse_constant=lambda _: None)
