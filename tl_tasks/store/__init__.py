"""The metrics database: every run's results, comparable over time (SQLite by default, PostgreSQL for real).

    store = connect()                       # TL_METRICS_DB_URL, migrated on first use
    store.record_evaluation(run_id, "cnn", evaluation)
    store.get_run(run_id)["results"]["cnn"]["accuracy"]

`MetricsStore` opens a transaction per call; the statements live in `writes.py` (upserts on natural keys, so
retrying a task replaces its rows) and `queries.py` (reads), the row-to-dict conversion in `rows.py`.
"""
from __future__ import annotations

from sqlalchemy.engine import Engine

from tl_tasks.store import queries, writes
from tl_tasks.store.db import (
    DatabaseUnavailableError,
    DatabaseURLError,
    SchemaVersionError,
    StoreError,
    create_store_engine,
    current_revision,
    ensure_schema,
    head_revision,
    mask_url,
    read_connection,
    resolve_url,
    write_transaction,
)
from tl_tasks.store.writes import RUN_WRITABLE_FIELDS

__all__ = [
    "RUN_WRITABLE_FIELDS",
    "DatabaseURLError",
    "DatabaseUnavailableError",
    "MetricsStore",
    "SchemaVersionError",
    "StoreError",
    "connect",
    "head_revision",
    "mask_url",
    "resolve_url",
]


def connect(url: str | None = None, *, migrate: bool = True) -> MetricsStore:
    """Open the metrics database at `url` (default `layout.metrics_db_url()`), migrating it to the current schema.

    Raises DatabaseURLError (malformed/unsupported URL), DatabaseUnavailableError (cannot connect),
    SchemaVersionError (database written by newer code); messages name the URL with its password masked.
    """
    engine = create_store_engine(url)
    try:
        if migrate:
            ensure_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return MetricsStore(engine)


class MetricsStore:
    """Reads and writes of the metrics database. All methods return plain, JSON-safe dicts and lists."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.url = mask_url(engine.url)  # password masked: safe to print
        self.dialect = engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> MetricsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetricsStore({self.url!r})"

    # --- writes (see writes.py): each in one write transaction -------------------------------------------------

    def upsert_run(self, run_id: str, **fields) -> dict:
        with write_transaction(self.engine) as conn:
            return writes.upsert_run(conn, run_id, **fields)

    def record_training(self, run_id: str, variant: str, summary: dict) -> dict:
        with write_transaction(self.engine) as conn:
            return writes.record_training(conn, run_id, variant, summary)

    def record_evaluation(self, run_id: str, variant: str, evaluation: dict) -> dict:
        with write_transaction(self.engine) as conn:
            return writes.record_evaluation(conn, run_id, variant, evaluation)

    def record_failure(self, run_id: str, variant: str, stage: str, error: str) -> dict:
        with write_transaction(self.engine) as conn:
            return writes.record_failure(conn, run_id, variant, stage, error)

    def record_gate(self, run_id: str, variant: str, decision: dict) -> dict:
        with write_transaction(self.engine) as conn:
            return writes.record_gate(conn, run_id, variant, decision)

    def delete_run(self, run_id: str) -> bool:
        with write_transaction(self.engine) as conn:
            return writes.delete_run(conn, run_id)

    # --- reads (see queries.py) --------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict | None:
        """The run's fields plus `results`: {variant: result dict}, variants in registry order."""
        with read_connection(self.engine) as conn:
            return queries.get_run(conn, run_id)

    def get_result(self, run_id: str, variant: str) -> dict | None:
        with read_connection(self.engine) as conn:
            return queries.get_result(conn, run_id, variant)

    def previous_run(self, run_id: str, *, same_lineage: bool = False) -> dict | None:
        with read_connection(self.engine) as conn:
            return queries.previous_run(conn, run_id, same_lineage=same_lineage)

    def champion(self, variant: str, before_run_id: str | None = None, *, lineage: str | None = None) -> dict | None:
        with read_connection(self.engine) as conn:
            return queries.champion(conn, variant, before_run_id, lineage=lineage)

    def champion_history(self, variant: str | None = None, limit: int = 50) -> list[dict]:
        with read_connection(self.engine) as conn:
            return queries.champion_history(conn, variant, limit)

    def lineage_size(self, lineage: str, until_run_id: str | None = None) -> int:
        with read_connection(self.engine) as conn:
            return queries.lineage_size(conn, lineage, until_run_id)

    def trend(self, variant: str, limit: int = 50, until_run_id: str | None = None, *,
              lineage: str | None = None) -> list[dict]:
        with read_connection(self.engine) as conn:
            return queries.trend(conn, variant, limit, until_run_id, lineage=lineage)

    def trend_summary(self, variant: str, lineage: str, until_run_id: str, skip: int,
                      limit: int = 10_000) -> dict | None:
        with read_connection(self.engine) as conn:
            return queries.trend_summary(conn, variant, lineage, until_run_id, skip, limit)

    def recent_runs(self, limit: int = 20, offset: int = 0, *, variant: str | None = None, since=None) -> list[dict]:
        with read_connection(self.engine) as conn:
            return queries.recent_runs(conn, limit, offset, variant=variant, since=since)

    def last_successful_run(self, before_run_id: str) -> dict | None:
        with read_connection(self.engine) as conn:
            return queries.last_successful_run(conn, before_run_id)

    def count_runs(self) -> int:
        with read_connection(self.engine) as conn:
            return queries.count_runs(conn)

    def run_position(self, run_id: str) -> int | None:
        with read_connection(self.engine) as conn:
            return queries.run_position(conn, run_id)

    def schema_revision(self) -> str | None:
        with read_connection(self.engine) as conn:
            return current_revision(conn)



# Each method documents itself with its statement's docstring (one copy, where the statement is written).
for _name, _fn in vars(MetricsStore).copy().items():
    _statement = getattr(writes, _name, None) or getattr(queries, _name, None)
    if callable(_fn) and not _name.startswith("_") and _fn.__doc__ is None and getattr(_statement, "__doc__", None):
        _fn.__doc__ = _statement.__doc__
del _name, _fn, _statement
