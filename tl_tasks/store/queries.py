"""Read queries of the metrics database, all in one place: a run with its results, the previous run,
a variant's champion and trend, recent runs with deltas. Each takes a Connection and returns plain dicts.

Dates come back as ISO 8601 strings in UTC ("2026-01-31T12:00:00+00:00"), so every result is JSON-safe.
"""
from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import UnaryExpression

from tl_tasks.store.models import PROMOTING, to_utc
from tl_tasks.store.rows import gates_t, load_results, pick, plain, results_t, run_dict, runs_t
from tl_tasks.variants import in_registry_order

TREND_FIELDS = ("run_id", "logical_date", "started_at", "lineage", "state", "accuracy", "loss", "top3_accuracy", "macro_f1",
                "train_seconds", "inference_img_per_s", "epochs_run", "decision")


def _order_key(conn: Connection, run_id: str):
    """(sort_time, id) of a run, None if it is not stored."""
    row = conn.execute(sa.select(runs_t.c.sort_time, runs_t.c.id).where(runs_t.c.run_id == run_id)).first()
    return None if row is None else (row.sort_time, row.id)


def _before(key):
    return sa.tuple_(runs_t.c.sort_time, runs_t.c.id) < sa.tuple_(sa.literal(key[0], runs_t.c.sort_time.type),
                                                                  sa.literal(key[1]))


def _at_or_before(key):
    return sa.tuple_(runs_t.c.sort_time, runs_t.c.id) <= sa.tuple_(sa.literal(key[0], runs_t.c.sort_time.type),
                                                                   sa.literal(key[1]))


def _newest_first():
    return (runs_t.c.sort_time.desc(), runs_t.c.id.desc())


def _newest_of_variant(conn: Connection, variant: str):
    """`results.variant = :variant`, for queries that want a variant's newest results first.

    On SQLite the term is written `+results.variant = ?`: the unary + keeps the planner off
    ix_results_variant_run_pk (read every result of the variant, then sort them: ~100 ms at 10,000 runs);
    it walks ix_runs_sort_time_id newest first instead and stops after LIMIT matches (well under 1 ms).
    PostgreSQL's planner makes that choice by itself.
    """
    column = results_t.c.variant
    if conn.dialect.name == "sqlite":
        column = UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)
    return column == variant


def _in_lineage(conn: Connection, lineage: str):
    """`runs.lineage = :lineage` for newest-first queries with a limit. On SQLite written `+runs.lineage = ?` (as
    `_newest_of_variant` does): otherwise the planner reads every run of the lineage through ix_runs_lineage and
    sorts them (165 ms at 10,000 runs, 1.1 s at 100,000 for recent_runs) instead of walking ix_runs_sort_time_id
    newest first and stopping at the limit."""
    column = runs_t.c.lineage
    if conn.dialect.name == "sqlite":
        column = UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)
    return column == lineage


# --- the queries -----------------------------------------------------------------------------------------------

def get_run(conn: Connection, run_id: str) -> dict | None:
    """The run with `results`: {variant: result dict with history, per_class, confusion_matrix, gate}."""
    row = conn.execute(sa.select(runs_t).where(runs_t.c.run_id == run_id)).first()
    return None if row is None else run_dict(conn, row)


def get_result(conn: Connection, run_id: str, variant: str) -> dict | None:
    """One variant's result in one run (same shape as get_run()["results"][variant]), None if absent."""
    pk = sa.select(runs_t.c.id).where(runs_t.c.run_id == run_id).scalar_subquery()
    found = load_results(conn, sa.and_(results_t.c.run_pk == pk, results_t.c.variant == variant))
    return found[0][1] if found else None


def previous_run(conn: Connection, run_id: str, *, same_lineage: bool = False) -> dict | None:
    """The latest run ordered before `run_id` that has at least one result, with its results; None if none
    (or if `run_id` is not stored). `same_lineage`: only runs on the same test set (same `lineage`)."""
    key = _order_key(conn, run_id)
    if key is None:
        return None
    has_results = sa.exists().where(results_t.c.run_pk == runs_t.c.id)
    query = sa.select(runs_t).where(_before(key), has_results)
    if same_lineage:
        lineage = conn.execute(sa.select(runs_t.c.lineage).where(runs_t.c.run_id == run_id)).scalar()
        if lineage is None:
            return None
        query = query.where(_in_lineage(conn, lineage))
    row = conn.execute(query.order_by(*_newest_first()).limit(1)).first()
    return None if row is None else run_dict(conn, row)


def lineage_of(conn: Connection, run_id: str) -> str | None:
    """The run's lineage (its test set's fingerprint), None if unknown."""
    return conn.execute(sa.select(runs_t.c.lineage).where(runs_t.c.run_id == run_id)).scalar()


def lineage_size(conn: Connection, lineage: str, until_run_id: str | None = None) -> int:
    """How many runs belong to `lineage` (up to and including `until_run_id` when given)."""
    query = sa.select(sa.func.count()).select_from(runs_t).where(runs_t.c.lineage == lineage)
    if until_run_id is not None:
        key = _order_key(conn, until_run_id)
        if key is not None:
            query = query.where(_at_or_before(key))
    return int(conn.execute(query).scalar() or 0)


def champion(conn: Connection, variant: str, before_run_id: str | None = None, *,
             lineage: str | None = None) -> dict | None:
    """The variant's current champion in a lineage: its latest *successful* result whose gate decision was
    promoted or bootstrap (a forced promotion counts), among runs ordered before `before_run_id` when given.

    The lineage is `lineage`, else that of `before_run_id`; a run of unknown lineage has no champion.
    Without either, the latest champion of any lineage.

    Returns the result dict (as in get_run) plus run_id, dag_id, logical_date, started_at, lineage; None if none.
    """
    if lineage is None and before_run_id is not None:
        lineage = lineage_of(conn, before_run_id)
        if lineage is None:
            return None
    query = (
        sa.select(results_t.c.id, runs_t.c.run_id, runs_t.c.dag_id, runs_t.c.logical_date, runs_t.c.started_at,
                  runs_t.c.lineage)
        .join(runs_t, runs_t.c.id == results_t.c.run_pk)
        .join(gates_t, gates_t.c.result_id == results_t.c.id)
        .where(_newest_of_variant(conn, variant), gates_t.c.decision.in_(PROMOTING),
               results_t.c.state == "success", results_t.c.accuracy.is_not(None))
        .order_by(*_newest_first()).limit(1)
    )
    if lineage is not None:
        query = query.where(_in_lineage(conn, lineage))
    if before_run_id is not None:
        key = _order_key(conn, before_run_id)
        if key is not None:
            query = query.where(_before(key))
    row = conn.execute(query).first()
    if row is None:
        return None
    (_, result), = load_results(conn, results_t.c.id == row.id)
    return {**pick(row, ("run_id", "dag_id", "logical_date", "started_at", "lineage")), **result}


def champion_history(conn: Connection, variant: str | None = None, limit: int = 50) -> list[dict]:
    """Promotions (promoted or bootstrap, forced included) of successful results, newest first, at most `limit`:
    {variant, run_id, lineage, logical_date, decision, forced, accuracy, model_path, model_sha256, decided_at}."""
    query = (
        sa.select(results_t.c.variant, runs_t.c.run_id, runs_t.c.lineage, runs_t.c.logical_date, runs_t.c.data_source,
                  gates_t.c.decision, gates_t.c.forced, results_t.c.accuracy, results_t.c.model_path,
                  results_t.c.model_sha256, gates_t.c.decided_at, gates_t.c.details)
        .join(runs_t, runs_t.c.id == results_t.c.run_pk)
        .join(gates_t, gates_t.c.result_id == results_t.c.id)
        .where(gates_t.c.decision.in_(PROMOTING), results_t.c.state == "success")
        .order_by(*_newest_first(), results_t.c.variant).limit(max(int(limit), 0))
    )
    if variant is not None:
        query = query.where(results_t.c.variant == variant)
    out = []
    for r in conn.execute(query):
        d = pick(r, ("variant", "run_id", "lineage", "logical_date", "data_source", "decision", "forced", "accuracy",
                      "model_path", "model_sha256", "decided_at"))
        d["forced"] = bool(d["forced"])
        d["published"] = (r.details or {}).get("published")
        out.append(d)
    return out


def trend(conn: Connection, variant: str, limit: int = 50, until_run_id: str | None = None, *,
          lineage: str | None = None) -> list[dict]:
    """The variant's last `limit` results (up to and including `until_run_id` when given; only runs of `lineage`
    when given), oldest first: {run_id, logical_date, started_at, lineage, state, accuracy, test_images, loss,
    top3_accuracy, macro_f1, train_seconds, inference_img_per_s, epochs_run, decision, accuracy_ci} (the
    accuracy's interval as the gate stored it; None before a gate decision)."""
    query = (
        sa.select(runs_t.c.run_id, runs_t.c.logical_date, runs_t.c.started_at, runs_t.c.lineage, results_t.c.state,
                  results_t.c.accuracy, results_t.c.loss, results_t.c.top3_accuracy, results_t.c.macro_f1,
                  results_t.c.train_seconds, results_t.c.inference_img_per_s, results_t.c.epochs_run,
                  results_t.c.eval_info, gates_t.c.decision, gates_t.c.details)
        .select_from(runs_t)
        .join(results_t, sa.and_(results_t.c.run_pk == runs_t.c.id, _newest_of_variant(conn, variant)))
        .outerjoin(gates_t, gates_t.c.result_id == results_t.c.id)
        .order_by(*_newest_first()).limit(max(int(limit), 0))
    )
    if lineage is not None:
        query = query.where(_in_lineage(conn, lineage))
    if until_run_id is not None:
        key = _order_key(conn, until_run_id)
        if key is None:
            return []
        query = query.where(_at_or_before(key))
    out = []
    for r in reversed(conn.execute(query).all()):
        d = pick(r, TREND_FIELDS)
        d["test_images"] = (r.eval_info or {}).get("test_images")
        d["accuracy_ci"] = (r.details or {}).get("accuracy_ci")
        out.append(d)
    return out


def trend_summary(conn: Connection, variant: str, lineage: str, until_run_id: str, skip: int,
                  limit: int = 10_000) -> dict | None:
    """The variant's older history in a lineage, summarised: the results before the newest `skip` (those the
    trend draws), at most `limit` of them: {runs, first, last, min, max, mean} of test accuracy; None if none."""
    key = _order_key(conn, until_run_id)
    if key is None:
        return None
    older = (
        sa.select(results_t.c.accuracy.label("accuracy"), runs_t.c.sort_time.label("sort_time"))
        .join(runs_t, runs_t.c.id == results_t.c.run_pk)
        .where(_newest_of_variant(conn, variant), _in_lineage(conn, lineage), _at_or_before(key),
               results_t.c.accuracy.is_not(None))
        .order_by(*_newest_first()).offset(max(int(skip), 0)).limit(max(int(limit), 0))
    ).subquery()
    row = conn.execute(sa.select(sa.func.count(), sa.func.min(older.c.sort_time), sa.func.max(older.c.sort_time),
                                 sa.func.min(older.c.accuracy), sa.func.max(older.c.accuracy),
                                 sa.func.avg(older.c.accuracy))).one()
    if not row[0]:
        return None
    return {"runs": int(row[0]), "first": plain(row[1]), "last": plain(row[2]), "min": float(row[3]),
            "max": float(row[4]), "mean": float(row[5])}


def recent_runs(conn: Connection, limit: int = 20, offset: int = 0, *, variant: str | None = None,
                since=None) -> list[dict]:
    """The last `limit` runs after skipping the `offset` newest ones, newest first (only runs with a result for
    `variant`, showing only that variant, when given; only runs ordered at or after `since` when given):
    {run_id, dag_id, logical_date, started_at, ended_at, state, profile, data_source, lineage, created_at,
    results: {variant: {state, accuracy, previous_accuracy, previous_run_id, delta, decision, champion_delta,
    p_value}}} (champion_delta and p_value: the gate's paired comparison).

    `previous_accuracy` is the variant's accuracy in the latest earlier run *of the same lineage* (the same test
    images) that has one (failed or missing results are skipped); `delta` = accuracy - previous_accuracy, None
    when either is missing or the run's lineage is unknown. Runs of different lineages are never compared.
    """
    query = sa.select(runs_t).order_by(*_newest_first()).limit(max(int(limit), 0)).offset(max(int(offset), 0))
    if since is not None:
        query = query.where(runs_t.c.sort_time >= sa.literal(to_utc(since, "since"), runs_t.c.sort_time.type))
    if variant is not None:
        query = query.where(sa.exists().where(results_t.c.run_pk == runs_t.c.id, results_t.c.variant == variant))
    runs = conn.execute(query).all()
    if not runs:
        return []
    by_run: dict[int, dict] = defaultdict(dict)
    rows_query = (
        sa.select(results_t.c.run_pk, results_t.c.variant, results_t.c.state, results_t.c.accuracy,
                  gates_t.c.decision, gates_t.c.delta, gates_t.c.details)
        .outerjoin(gates_t, gates_t.c.result_id == results_t.c.id)
        .where(results_t.c.run_pk.in_([r.id for r in runs]))
    )
    if variant is not None:
        rows_query = rows_query.where(results_t.c.variant == variant)
    rows = conn.execute(rows_query).all()
    for r in rows:
        by_run[r.run_pk][r.variant] = {"state": r.state, "accuracy": r.accuracy, "decision": r.decision,
                                       "champion_delta": r.delta, "p_value": (r.details or {}).get("p_value")}
    variants = in_registry_order({r.variant for r in rows})
    oldest = (runs[-1].sort_time, runs[-1].id)
    last: dict[tuple[str, str], tuple] = {}  # (variant, lineage) -> (accuracy, run_id) of the last one seen
    out = []
    for run in reversed(runs):  # oldest first, carrying each variant's last accuracy per lineage forward
        results = {}
        for v in variants:
            if v not in by_run[run.id]:
                continue
            res = by_run[run.id][v]
            prev = (None, None)
            if run.lineage is not None:
                if (v, run.lineage) not in last:
                    last[(v, run.lineage)] = _accuracy_before(conn, v, oldest, run.lineage)
                prev = last[(v, run.lineage)]
            acc = res["accuracy"]
            res.update(previous_accuracy=prev[0], previous_run_id=prev[1],
                       delta=None if acc is None or prev[0] is None else acc - prev[0])
            results[v] = {k: res[k] for k in ("state", "accuracy", "previous_accuracy", "previous_run_id", "delta",
                                              "decision", "champion_delta", "p_value")}
            if acc is not None and run.lineage is not None:
                last[(v, run.lineage)] = (acc, run.run_id)
        d = pick(run, ("run_id", "dag_id", "logical_date", "started_at", "ended_at", "state", "profile",
                        "data_source", "lineage", "created_at"))
        d["results"] = results
        out.append(d)
    return out[::-1]


def last_successful_run(conn: Connection, before_run_id: str) -> dict | None:
    """The latest run with state "success" ordered before `before_run_id` (run fields only, no results)."""
    key = _order_key(conn, before_run_id)
    if key is None:
        return None
    row = conn.execute(sa.select(runs_t).where(_before(key), runs_t.c.state == "success")
                       .order_by(*_newest_first()).limit(1)).first()
    return None if row is None else run_dict(conn, row, with_results=False)


def count_runs(conn: Connection) -> int:
    """How many runs are stored (counted on the primary key index, not by reading rows)."""
    return conn.execute(sa.select(sa.func.count()).select_from(runs_t)).scalar_one()


def run_position(conn: Connection, run_id: str) -> int | None:
    """How many runs are ordered before `run_id` (0 = the oldest), None if it is not stored.

    Counted on ix_runs_sort_time_id (an index range, no row reads): this is what places a run on a page of the
    paginated index."""
    key = _order_key(conn, run_id)
    if key is None:
        return None
    return conn.execute(sa.select(sa.func.count()).select_from(runs_t).where(_before(key))).scalar_one()


def _accuracy_before(conn: Connection, variant: str, key, lineage: str) -> tuple:
    row = conn.execute(
        sa.select(results_t.c.accuracy, runs_t.c.run_id)
        .join(runs_t, runs_t.c.id == results_t.c.run_pk)
        .where(_newest_of_variant(conn, variant), results_t.c.accuracy.is_not(None), _before(key),
               _in_lineage(conn, lineage))
        .order_by(*_newest_first()).limit(1)
    ).first()
    return (None, None) if row is None else (row.accuracy, row.run_id)
