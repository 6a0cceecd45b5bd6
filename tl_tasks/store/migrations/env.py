"""Alembic environment of the metrics database, configured from code (tl_tasks.store.db), not alembic.ini.

`tl_tasks.store.db` hands over an open connection inside a transaction it holds (with the migration
lock taken); run from the alembic command line, the URL comes from `sqlalchemy.url` or TL_METRICS_DB_URL.
"""
from __future__ import annotations

from alembic import context

from tl_tasks.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, render_as_batch=True, **kwargs)


def run_migrations_offline() -> None:
    from tl_tasks.store.db import resolve_url

    _configure(url=resolve_url(config.get_main_option("sqlalchemy.url")), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    from tl_tasks.store.db import create_store_engine

    engine = create_store_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            _configure(connection=conn, transactional_ddl=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
