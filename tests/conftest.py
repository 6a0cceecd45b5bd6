"""Shared fixtures: an isolated TL_HOME per test, the shared real CIFAR-10 archive, throwaway PostgreSQL."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR_JPG = PROJECT_ROOT.parent / "shared" / "data" / "cifar-10-images-jpg.tar.gz"
PG_ADMIN_URL = os.environ.get("TL_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def tl_home(tmp_path, tmp_path_factory, monkeypatch) -> Path:
    """Every test writes under its own TL_HOME with a SQLite metrics database, and no stray TL_* settings."""
    for key in list(os.environ):
        if key.startswith("TL_") and not key.startswith("TL_TEST_"):
            monkeypatch.delenv(key)
    home = tmp_path / "tl_home"
    home.mkdir()
    monkeypatch.setenv("TL_HOME", str(home))
    # data sources and weights must lie under an allowed root: pytest's temporary folders and the shared data
    monkeypatch.setenv("TL_DATA_ROOTS", os.pathsep.join([str(tmp_path_factory.getbasetemp()),
                                                         str(SHARED_CIFAR_JPG.parent)]))
    return home


@pytest.fixture(scope="session")
def shared_cifar_jpg() -> Path:
    """The real CIFAR-10 as JPEG image folders (../shared/data); the tests need it, so its absence fails."""
    assert SHARED_CIFAR_JPG.is_file(), f"missing {SHARED_CIFAR_JPG}: the shared data folder must sit beside the checkout"
    return SHARED_CIFAR_JPG


def _pg_admin_engine():
    import sqlalchemy as sa

    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_url():
    """A throwaway PostgreSQL database on 127.0.0.1:5432, dropped afterwards; yields its SQLAlchemy URL."""
    import sqlalchemy as sa

    name = f"tl_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:  # the server is part of the test environment: fail, do not skip
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({exc.orig}); start it (.ci/run does)")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
