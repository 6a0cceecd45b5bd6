"""Airflow settings of this project and its one-time set-up, shared by `make airflow` and `make run`.

    eval "$(python -m tl_tasks.airflow_local.env)"   # export the settings into a shell
    python -m tl_tasks.airflow_local.env --setup     # migrate Airflow's database (if behind) and create the `gpu` pool

AIRFLOW_HOME is project-local (`./airflow_home`, or $TL_AIRFLOW_HOME); the DAGs come from ./dags, the
plugin from ./plugins, Airflow's example DAGs are off, and the API server listens on 127.0.0.1 only.
"""
from __future__ import annotations

import os
import secrets
import shlex
import sys
from pathlib import Path

from tl_tasks.config import GPU_POOL, PROJECT_ROOT
from tl_tasks.files import write_text_atomic
from tl_tasks.integrations import OPENLINEAGE_AIRFLOW_ENV

GPU_POOL_DESCRIPTION = "training/evaluation slots: how many variants run at once (TL_GPU_POOL_SLOTS)"


def airflow_home() -> Path:
    return Path(os.environ.get("TL_AIRFLOW_HOME") or PROJECT_ROOT / "airflow_home").expanduser().resolve()


def airflow_env() -> dict[str, str]:
    """The environment variables that point Airflow at this project."""
    port = os.environ.get("TL_AIRFLOW_PORT") or "8080"
    home = airflow_home()
    return {
        "AIRFLOW_HOME": str(home),
        # The API server signs the tokens that the scheduler's task processes present: every component must
        # share the secret (Airflow otherwise draws one per process, and tasks fail with "Invalid auth token").
        "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET") or _home_secret(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        # OpenLineage hooks (inert until a transport such as OPENLINEAGE_URL is set); the user's values win
        **{key: os.environ.get(key, value) for key, value in OPENLINEAGE_AIRFLOW_ENV.items()},
    }


def _home_secret(home: Path) -> str:
    """A random secret made once per Airflow home and kept in it (readable by its owner only)."""
    path = home / "jwt_secret"
    if not path.is_file():
        home.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, secrets.token_urlsafe(64), mode=0o600)
    return path.read_text().strip()


def pool_slots() -> int:
    raw = os.environ.get("TL_GPU_POOL_SLOTS") or "2"
    try:
        slots = int(raw)
    except ValueError:
        slots = 0
    if slots < 1:
        raise SystemExit(f"TL_GPU_POOL_SLOTS={raw!r} must be a whole number >= 1 (variants trained at once)")
    return slots


def setup(verbose: bool = True) -> None:
    """Migrate Airflow's metadata database when it is not at this Airflow's head, and create (or resize) the `gpu`
    pool; idempotent. Runs in this process (two `airflow` CLI processes cost ~6 CPU-seconds of start-up): call it
    before Airflow is imported, or with Airflow's settings (`airflow_env`) already in the environment."""
    env = airflow_env()
    os.environ.update(env)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    slots = pool_slots()
    from airflow.models.pool import Pool
    from airflow.utils import db
    from airflow.utils.session import create_session

    if _at_head(db):
        if verbose:
            print(f"airflow: database at head ({env['AIRFLOW_HOME']})", file=sys.stderr)
    else:
        if verbose:
            print(f"airflow: migrating Airflow's database ({env['AIRFLOW_HOME']})", file=sys.stderr)
        db.upgradedb()
    if verbose:
        print(f"airflow: pool {GPU_POOL!r}: {slots} slots", file=sys.stderr)
    with create_session() as session:
        Pool.create_or_update_pool(GPU_POOL, slots, GPU_POOL_DESCRIPTION, include_deferred=False, session=session)


def _at_head(db) -> bool:
    """Whether the metadata database's revisions are this Airflow's migration heads (then there is nothing to do)."""
    from airflow.utils.db_manager import RunDBManager
    from airflow.utils.session import create_session

    with db._configured_alembic_environment() as alembic:  # what `airflow db check-migrations` compares
        if set(alembic.get_context().get_current_heads()) != set(alembic.script.get_heads()):
            return False
    with create_session() as session:  # tables of providers' own migrations (none in this project's freeze)
        return RunDBManager().check_migration(session)


def main(argv: list[str]) -> int:
    if "--setup" in argv:
        setup()
        return 0
    for key, value in airflow_env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
