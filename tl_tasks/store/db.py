"""Engines for the metrics database: URL checks and masking, SQLite pragmas, Alembic migration on first use.

SQLite runs in WAL mode with a 30 s busy timeout, and write transactions start with BEGIN IMMEDIATE, so
parallel training tasks queue for the write lock instead of failing with "database is locked".
"""
from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from tl_tasks.layout import metrics_db_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
# Key of the PostgreSQL advisory lock that serialises concurrent migrations ("tl_tasks" in ASCII).
_PG_MIGRATION_LOCK = 0x746C5F7461736B73
# The newest migration in migrations/versions (a test checks it equals the Alembic head); comparing with it
# first lets an up-to-date database be opened without importing Alembic.
SCHEMA_REVISION = "0003_explain"
# PostgreSQL: give up connecting after this long (a dead host fails the task, which retries), and cancel any
# statement running longer (a hung query must not hold a GPU slot and the DAG's single active run).
PG_CONNECT_TIMEOUT_S = 10
PG_STATEMENT_TIMEOUT_MS = 120_000
URL_EXAMPLES = "sqlite:////abs/path/metrics.db or postgresql://user:password@host:5432/metrics"


class StoreError(RuntimeError):
    """Base class of the metrics store's errors."""


class DatabaseURLError(StoreError, ValueError):
    """The metrics database URL is malformed, or names a database type or driver that is not supported."""


class DatabaseUnavailableError(StoreError):
    """The metrics database cannot be reached (server down, wrong host/port/credentials, unwritable file)."""


class SchemaVersionError(StoreError):
    """The database schema was written by newer code than this, or is not a metrics database."""


def resolve_url(url: str | URL | None = None) -> str:
    """The URL to use: `url`, else `layout.metrics_db_url()`; postgres:// and postgresql:// -> postgresql+psycopg://."""
    if url is None:
        url = metrics_db_url()
    if isinstance(url, URL):
        url = url.render_as_string(hide_password=False)
    url = str(url).strip()
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def mask_url(url: str | URL | None) -> str:
    """`url` with any password replaced by ***; works on malformed URLs too."""
    if url is None:
        return "<none>"
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # malformed: mask whatever sits between "user:" and "@"
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def _parse(url: str, given: str) -> URL:
    try:
        parsed = sa.make_url(url)
    except Exception as exc:
        raise DatabaseURLError(
            f"metrics database URL {mask_url(given)!r} is malformed ({exc}); set TL_METRICS_DB_URL to e.g. {URL_EXAMPLES}"
        ) from None
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise DatabaseURLError(
            f"metrics database URL {mask_url(url)!r} uses {parsed.get_backend_name()!r}; "
            f"supported are SQLite and PostgreSQL, e.g. {URL_EXAMPLES}"
        )
    return parsed


def _hide(text: str, parsed: URL) -> str:
    if parsed.password:
        text = text.replace(str(parsed.password), "***")
    return text


def create_store_engine(url: str | URL | None = None) -> Engine:
    """An Engine for the metrics database at `url` (default from config); validates the URL, sets up SQLite."""
    given = resolve_url(url) if url is None else str(url)
    url = resolve_url(url)
    parsed = _parse(url, given)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    kwargs: dict = {}
    if is_sqlite:
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailableError(
                    f"cannot create the folder {folder} of the metrics database {mask_url(url)} ({exc.strerror}); "
                    f"set TL_METRICS_DB_URL (or TL_HOME) to a writable place, e.g. {URL_EXAMPLES}"
                ) from None
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = _pg_connect_args(parsed)
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except Exception as exc:  # unknown driver, bad query arguments, ...
        raise DatabaseURLError(
            f"cannot use metrics database URL {mask_url(url)!r}: {_hide(str(exc), parsed)}; "
            f"set TL_METRICS_DB_URL to e.g. {URL_EXAMPLES}"
        ) from None
    if is_sqlite:
        _setup_sqlite(engine)
    return engine


def _pg_connect_args(parsed: URL) -> dict:
    """connect_timeout and statement_timeout, unless the URL sets them itself (its query wins)."""
    args: dict = {}
    if "connect_timeout" not in parsed.query:
        args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    options = str(parsed.query.get("options", ""))
    if "statement_timeout" not in options:
        args["options"] = f"{options} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}".strip()
    return args


def _setup_sqlite(engine: Engine) -> None:
    # The pysqlite recipe: take BEGIN away from the driver, emit our own (IMMEDIATE for writes).
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA foreign_keys = ON")
            _set_wal(cur)
            cur.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, much faster commits
        finally:
            cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("tl_write") else "BEGIN")


def _set_wal(cur) -> None:
    # Switching a fresh file to WAL needs an exclusive lock for a moment; with many processes
    # opening it at once that can fail fast, so retry for up to the busy timeout.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _connect(engine: Engine) -> Connection:
    """A new connection; a server that went away since the store was opened is DatabaseUnavailableError (retried)."""
    try:
        return engine.connect()
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sqlite3.OperationalError) as exc:
        raise _connection_error(engine, exc) from exc


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection inside a write transaction (BEGIN IMMEDIATE on SQLite), committed on success."""
    with _connect(engine).execution_options(tl_write=True) as conn, conn.begin():
        yield conn


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reads. SQLite: inside one read transaction (a consistent snapshot). PostgreSQL:
    autocommit, since under READ COMMITTED each statement takes its own snapshot anyway, and it saves the
    BEGIN and ROLLBACK round trips."""
    if engine.dialect.name == "postgresql":
        with _connect(engine).execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn
        return
    with _connect(engine) as conn, conn.begin():
        yield conn


# --- migrations --------------------------------------------------------------------------------------------

def alembic_config(engine: Engine, connection: Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR))


def head_revision() -> str:
    """The schema revision this code expects (the Alembic head)."""
    return _script().get_current_head()


def current_revision(conn: Connection) -> str | None:
    """The database's schema revision, None when it has none (empty database)."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    revisions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(revisions) > 1:
        raise SchemaVersionError(f"metrics database {mask_url(conn.engine.url)} has several schema revisions "
                                 f"{sorted(revisions)}; it was not written by tl_tasks alone")
    return revisions[0] if revisions else None


def _check_known(conn: Connection, engine: Engine, current: str | None) -> None:
    if current is None:
        if sa.inspect(conn).has_table("runs"):
            raise SchemaVersionError(
                f"metrics database {mask_url(engine.url)} has a 'runs' table but no Alembic version; it was not "
                "created by tl_tasks.store. Point TL_METRICS_DB_URL at an empty or tl_tasks database"
            )
        return
    try:
        known = _script().get_revision(current) is not None
    except Exception:
        known = False
    if not known:
        raise SchemaVersionError(
            f"metrics database {mask_url(engine.url)} is at schema revision {current!r}, which this code does not "
            f"know (its newest is {head_revision()!r}): a newer tl_tasks wrote it. Update this checkout "
            "(git pull; pip install -r requirements.txt) or point TL_METRICS_DB_URL at another database"
        )


def _connection_error(engine: Engine, exc: Exception) -> DatabaseUnavailableError:
    orig = getattr(exc, "orig", None) or exc
    reason = " ".join(str(orig).split()).rstrip(".")
    return DatabaseUnavailableError(
        f"cannot use the metrics database {mask_url(engine.url)}: {_hide(reason, engine.url)}. "
        f"Check that the server is running and TL_METRICS_DB_URL is right (e.g. {URL_EXAMPLES})"
    )


def ensure_schema(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to the head revision if it is behind; safe when many processes start at once.

    Returns (revision before, revision after). Raises SchemaVersionError for a database newer than the code,
    DatabaseUnavailableError when it cannot be reached.
    """
    try:
        with read_connection(engine) as conn:
            current = current_revision(conn)
            if current == SCHEMA_REVISION:
                return current, current
            if current is not None:  # a newer schema fails fast; "tables but no version" is judged under the
                _check_known(conn, engine, current)  # lock, since another process may be mid-migration now
        return _upgrade_locked(engine, head_revision())
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sqlite3.OperationalError) as exc:
        raise _connection_error(engine, exc) from exc


def _upgrade_locked(engine: Engine, head: str) -> tuple[str | None, str]:
    from alembic import command

    # One transaction holds the migration lock (SQLite: the write lock of BEGIN IMMEDIATE; PostgreSQL:
    # an advisory lock) while it re-reads the revision and upgrades, so a second process waits, then
    # finds the schema at head and does nothing.
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        current = current_revision(conn)
        _check_known(conn, engine, current)
        if current != head:
            command.upgrade(alembic_config(engine, conn), "head")
        return current, head


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Explicit `db upgrade`: same as the automatic migration, returns (before, after)."""
    return ensure_schema(engine)
