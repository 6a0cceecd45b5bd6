"""Run real Airflow 3 components (api-server, scheduler, dag-processor, Celery workers) as subprocesses.

Reusable by tests and benchmarks: an isolated AIRFLOW_HOME configured through environment variables,
REST API access with a JWT from the simple auth manager, DAG triggering and task-instance inspection.
Every process listens on 127.0.0.1 only (log servers are skipped: logs are read from the shared
local log folder) and is stopped by its process group in `stop()`.

Top-level imports are standard library only: task processes import `worker_hostname` from here.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tl_tasks import config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DAGS_FOLDER = PROJECT_ROOT / "dags"
DAG_ID = config.DAG_ID
HOSTNAME_ENV = "TL_TEST_AIRFLOW_HOSTNAME"
PG_ADMIN_URL = os.environ.get("TL_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
# A Redis database of its own for Celery tests: flushed before and after each run.
# A Redis database of its own per pytest-xdist worker (gw0 -> 5, gw1 -> 6, ...): Celery tests flush it.
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_TEST_URL = os.environ.get("TL_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{5 + _XDIST_WORKER}")
ADMIN_USER = "admin"
TERMINAL_RUN_STATES = ("success", "failed")


def worker_hostname() -> str:
    """`[core] hostname_callable` for processes that share one machine: `$TL_TEST_AIRFLOW_HOSTNAME` or the FQDN.

    Task instances record this as their hostname, so two Celery workers on one machine stay distinguishable.
    """
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def max_concurrent(tis: list[dict]) -> int:
    """The largest number of task instances running at one instant (intervals are half-open)."""
    events = []
    for ti in tis:
        start, end = parse_time(ti.get("start_date")), parse_time(ti.get("end_date"))
        if start and end:
            events += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def overlapping_pairs(tis: list[dict]) -> list[tuple[str, str]]:
    """Pairs of task instances (by `task_id[map_index]`) whose [start_date, end_date] intervals overlap."""
    spans = []
    for ti in tis:
        start, end = parse_time(ti.get("start_date")), parse_time(ti.get("end_date"))
        if start and end:
            spans.append((f"{ti['task_id']}[{ti['map_index']}]", start, end))
    return [
        (a[0], b[0])
        for i, a in enumerate(spans)
        for b in spans[i + 1:]
        if a[1] < b[2] and b[1] < a[2]
    ]


class AirflowError(RuntimeError):
    """An Airflow component or API call failed; the message carries the relevant log tails."""


@dataclass
class Component:
    name: str
    process: subprocess.Popen
    log_path: Path

    def executed_workloads(self) -> list[tuple[str, int]]:
        """(task_id, map_index) of every task a Celery worker received, from its log."""
        text = self.log_path.read_text(errors="replace")
        return [(m[1], int(m[2])) for m in re.finditer(
            r"Executing workload in Celery:.*?task_id='([^']+)'.*?map_index=(-?\d+)", text)]

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


@dataclass
class AirflowHarness:
    """An isolated Airflow installation under `home`, configured only through environment variables.

    Args:
        home: AIRFLOW_HOME (created); logs of every component go to `home/proc-logs/<name>.log`.
        dags_folder: folder the dag-processor parses.
        executor: "LocalExecutor" or "CeleryExecutor".
        sql_alchemy_conn: metadata database URL; default a SQLite file in `home`.
        parallelism: `[core] parallelism` (LocalExecutor worker processes).
        extra_env: more variables for every component (TL_HOME, TL_METRICS_DB_URL, Celery URLs, ...).
    """

    home: Path
    dags_folder: Path
    executor: str = "LocalExecutor"
    sql_alchemy_conn: str | None = None
    parallelism: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)
    api_port: int = 0
    _token: str | None = None

    def __post_init__(self) -> None:
        self.home = Path(self.home)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "proc-logs").mkdir(exist_ok=True)
        (self.home / "plugins").mkdir(exist_ok=True)
        self.api_port = self.api_port or free_port()
        self.password = secrets.token_urlsafe(16)
        self.passwords_file = self.home / "simple_auth_manager_passwords.json"
        self.passwords_file.write_text(json.dumps({ADMIN_USER: self.password}))
        self.env = self._build_env()

    # ----------------------------------------------------------------------------------------- config
    @property
    def metadata_url(self) -> str:
        return self.sql_alchemy_conn or f"sqlite:///{self.home / 'airflow.db'}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _build_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        pythonpath = [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env.update({
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.home / "plugins"),
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(max(16, self.parallelism)),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.airflow_harness.worker_hostname",
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            # The execution API lives in the api-server; every component must sign and verify the
            # same JWTs, so the secret is shared (Airflow generates a random one per process otherwise).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(64),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
            # Log servers are skipped (--skip-serve-logs); pick free ports anyway in case one starts.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # Each DAG file parsed once: the tests never change them, so re-parsing would only take CPU from the tasks.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__CELERY__FLOWER_HOST": "127.0.0.1",
            # Sending a task to the broker may take more than the default 1 s on a busy two-core machine.
            "AIRFLOW__CELERY__OPERATION_TIMEOUT": "15",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES", ""),
        })
        if self.metadata_url.startswith("postgresql+psycopg://"):
            # psycopg 3 serves async too; Airflow would otherwise derive postgresql+asyncpg (not installed).
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = self.metadata_url
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------------------------------------- CLI
    def cli(self, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run `airflow <args>` to completion; raise AirflowError with its output when it fails."""
        proc = subprocess.run(
            [str(VENV_BIN / "airflow"), *args], env={**self.env, **(env or {})}, cwd=self.home,
            capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            raise AirflowError(f"airflow {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def migrate(self, template: Path | None = None) -> None:
        """`airflow db migrate`; with the default SQLite database and `template` (a migrated airflow.db: conftest's
        `migrated_airflow_db`), a copy of the template instead: one migration per test session."""
        if template is not None and self.sql_alchemy_conn is None:
            shutil.copyfile(template, self.home / "airflow.db")
            return
        self.cli("db", "migrate", timeout=600)

    def create_pool(self, name: str, slots: int, description: str = "") -> None:
        self.cli("pools", "set", name, str(slots), description or f"{name} pool")

    # ------------------------------------------------------------------------------------ processes
    def start(self, name: str, *args: str, env: dict | None = None) -> Component:
        """Start `airflow <args>` in its own process group, stdout and stderr to `proc-logs/<name>.log`."""
        log_path = self.home / "proc-logs" / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(VENV_BIN / "airflow"), *args], env={**self.env, **(env or {})}, cwd=self.home,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        component = Component(name, process, log_path)
        self.components.append(component)
        return component

    def start_core(self) -> None:
        """api-server, scheduler and dag-processor; returns once the api-server answers."""
        self.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port))
        self.start("scheduler", "scheduler", "--skip-serve-logs")
        self.start("dag-processor", "dag-processor")
        self.wait_healthy()

    def start_celery_worker(self, name: str, queues: str, concurrency: int, hostname: str) -> Component:
        """A Celery worker serving `queues`; task instances it runs record `hostname`."""
        return self.start(
            name, "celery", "worker", "--queues", queues, "--concurrency", str(concurrency),
            "--celery-hostname", hostname, "--skip-serve-logs", "--without-mingle", "--without-gossip",
            env={HOSTNAME_ENV: hostname},
        )

    def check_alive(self) -> None:
        for c in self.components:
            if c.process.poll() is not None:
                raise AirflowError(f"{c.name} exited with {c.process.returncode}:\n{c.tail()}\n{self.diagnostics()}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM every component's process group, SIGKILL what is left after `timeout` seconds."""
        for c in reversed(self.components):
            _signal_group(c.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in reversed(self.components):
            try:
                c.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(c.process, signal.SIGKILL)  # stragglers in the group (task processes, log servers)
            try:
                c.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.components.clear()

    def __enter__(self) -> AirflowHarness:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def diagnostics(self, chars: int = 3000) -> str:
        """Tails of every component log, for assertion messages."""
        return "\n".join(f"===== {c.name} ({c.log_path}) =====\n{c.tail(chars)}" for c in self.components)

    # ---------------------------------------------------------------------------------------- REST API
    def wait_healthy(self, timeout: float = 180) -> dict:
        """Poll the api-server's /api/v2/monitor/health until it answers (and the components stay up)."""
        import requests

        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                r = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
                if r.status_code == 200:
                    return r.json()
                last = f"HTTP {r.status_code}: {r.text[:300]}"
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(1)
        raise AirflowError(f"api-server not healthy after {timeout}s ({last})\n{self.diagnostics()}")

    def token(self) -> str:
        """A JWT for the admin user (POST /auth/token with the password from our passwords file)."""
        import requests

        if self._token is None:
            r = requests.post(f"{self.api_url}/auth/token",
                              json={"username": ADMIN_USER, "password": self.password}, timeout=30)
            if r.status_code not in (200, 201):
                raise AirflowError(f"POST /auth/token -> HTTP {r.status_code}: {r.text[:500]}")
            self._token = r.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), **kwargs):
        """Call the public REST API (`path` below /api/v2) and return the decoded JSON."""
        import requests

        r = requests.request(method, f"{self.api_url}/api/v2/{path.lstrip('/')}",
                             headers={"Authorization": f"Bearer {self.token()}"}, timeout=60, **kwargs)
        if r.status_code not in ok:
            raise AirflowError(f"{method} /api/v2/{path} -> HTTP {r.status_code}: {r.text[:1000]}")
        return r.json() if r.content else None

    def import_errors(self) -> list[dict]:
        return self.api("GET", "importErrors")["import_errors"]

    def wait_dag(self, dag_id: str, timeout: float = 300) -> dict:
        """Wait until the dag-processor has parsed and stored `dag_id`; fail fast on an import error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            dags = self.api("GET", "dags", params={"dag_id_pattern": dag_id})["dags"]
            found = [d for d in dags if d["dag_id"] == dag_id]
            if found:
                return found[0]
            errors = self.import_errors()
            if errors:
                raise AirflowError(f"DAG import errors: {json.dumps(errors, indent=1)[:4000]}")
            time.sleep(2)
        raise AirflowError(f"DAG {dag_id!r} not parsed after {timeout}s\n{self.diagnostics()}")

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None, run_id: str | None = None) -> str:
        """Unpause `dag_id` and start a manual run with `conf`; returns the run id."""
        self.unpause(dag_id)
        body = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.api("POST", f"dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 900, poll: float = 3) -> dict:
        """Poll the run until it is success or failed (components must stay up); returns the run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            run = self.dag_run(dag_id, run_id)
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            time.sleep(poll)
        states = {f"{t['task_id']}[{t['map_index']}]": t["state"] for t in self.task_instances(dag_id, run_id)}
        raise AirflowError(f"run {run_id} not finished after {timeout}s; task states {states}\n{self.diagnostics()}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run, mapped ones included (one per map index)."""
        out: list[dict] = []
        while True:
            page = self.api("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                            params={"limit": 100, "offset": len(out), "order_by": "id"})
            out.extend(page["task_instances"])
            if not page["task_instances"] or len(out) >= page["total_entries"]:
                return out

    def task_log(self, ti: dict, try_number: int | None = None) -> str:
        """The stored log of one task instance try (read by the api-server from the shared log folder)."""
        import requests

        n = try_number or max(1, ti["try_number"])
        r = requests.get(
            f"{self.api_url}/api/v2/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/"
            f"{ti['task_id']}/logs/{n}",
            params={"map_index": ti["map_index"], "full_content": "true"},
            headers={"Authorization": f"Bearer {self.token()}", "Accept": "text/plain"}, timeout=60,
        )
        return r.text

    def failure_report(self, dag_id: str, run_id: str) -> str:
        """Task states plus the logs of failed tasks and the component log tails: for assertion messages."""
        lines = []
        try:
            for ti in self.task_instances(dag_id, run_id):
                lines.append(f"{ti['task_id']}[{ti['map_index']}] {ti['state']} queue={ti['queue']} host={ti['hostname']}")
                if ti["state"] not in ("success", "skipped", None):
                    lines.append(self.task_log(ti)[-4000:])
        except Exception as exc:  # a report must never hide the original failure
            lines.append(f"(could not list task instances: {exc!r})")
        return "\n".join(lines) + "\n" + self.diagnostics()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the group id is the leader's pid (start_new_session=True)
    except (ProcessLookupError, PermissionError):
        pass


def flush_redis(url: str) -> None:
    """Empty the Redis database in `url` (a dedicated db number for Celery tests)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


# ------------------------------------------------------------------------------------- this project
def require_dag(dag_file: Path = DAGS_FOLDER / f"{DAG_ID}.py") -> Path:
    """The DAG file under test; its absence is a failure, not a skip."""
    assert dag_file.is_file(), f"missing {dag_file}: the end-to-end Airflow tests run the real DAG"
    return dag_file


def smoke_variants() -> list[str]:
    """Variants the real-process runs train: the CNN and the frozen ResNet50 by default (two mapped train tasks,
    one of each family). These runs check orchestration (parallel mapped tasks, queues, workers, restarts); fine-tuning
    runs in the five-variant dag.test and the training tests, and its train-step trace (~12 CPU-s in every task
    process) would only slow them. `TL_TEST_AIRFLOW_VARIANTS=all` (or a comma-separated list) overrides."""
    from tl_tasks.variants import VARIANT_NAMES

    chosen = os.environ.get("TL_TEST_AIRFLOW_VARIANTS", "cnn,resnet50_v1")
    return list(VARIANT_NAMES) if chosen == "all" else [v.strip() for v in chosen.split(",") if v.strip()]


def dag_runs(harness: AirflowHarness, dag_id: str) -> list[dict]:
    """The DAG's runs (newest 100) as the REST API lists them."""
    return harness.api("GET", f"dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]


def wait_finished_runs(harness: AirflowHarness, dag_id: str, at_least: int, timeout: float = 300) -> None:
    """Poll until `dag_id` has at least `at_least` finished runs (components must stay up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        harness.check_alive()
        done = [r for r in dag_runs(harness, dag_id) if r["state"] in TERMINAL_RUN_STATES]
        if len(done) >= at_least:
            return
        time.sleep(3)
    raise AssertionError(f"fewer than {at_least} {dag_id} runs finished in {timeout}s\n{harness.diagnostics()}")


def smoke_conf(variants: list[str] | None = None) -> dict:
    """Trigger conf of a test run: the smoke profile, 10 images per class (a few steps per epoch)."""
    return {"profile": "smoke", "variants": variants or smoke_variants(), "limit_per_class": 10}


def workflow_env(tl_home: Path, metrics_url: str) -> dict[str, str]:
    """Environment of every Airflow process for a test run of this project's DAG."""
    return {
        "TL_HOME": str(tl_home),
        "TL_METRICS_DB_URL": metrics_url,
        "TL_SCHEDULE": "none",          # no scheduled run next to the triggered one (max_active_runs=1)
        "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
    }


def stored_results(metrics_url: str, run_id: str) -> dict[str, dict]:
    """{variant: {state, accuracy, stage, error}} of one run, read straight from the metrics database."""
    import sqlalchemy as sa

    engine = sa.create_engine(metrics_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT r.variant, r.state, r.accuracy, r.stage, r.error FROM results r "
                "JOIN runs u ON u.id = r.run_pk WHERE u.run_id = :run_id"), {"run_id": run_id}).mappings().all()
    finally:
        engine.dispose()
    return {row["variant"]: dict(row) for row in rows}


def pg_database(admin_url: str, prefix: str = "tl_af", template: str | None = None):
    """Context manager: a throwaway PostgreSQL database (dropped afterwards); yields its SQLAlchemy URL.
    `template`: a copy of that database (conftest's `airflow_pg_template`: Airflow's schema, migrated once)."""
    import contextlib
    import uuid

    import sqlalchemy as sa

    @contextlib.contextmanager
    def _db():
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
            try:
                yield admin_url.rsplit("/", 1)[0] + f"/{name}"
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()

    return _db()


def celery_executor_problem() -> str | None:
    """Why the CeleryExecutor cannot load in this environment (None when it can), with the fix.

    Runs in a subprocess so that the calling process imports neither Airflow nor Celery.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="airflow-home-") as home:
        proc = subprocess.run(
            [sys.executable, "-c", "import airflow.providers.celery.executors.celery_executor_utils"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "AIRFLOW_HOME": home},
        )
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    hint = ""
    if "cannot import name 'retry' from 'celery.backends.database'" in proc.stderr:
        hint = (" celery 5.7 removed celery.backends.database.retry, which apache-airflow-providers-celery "
                "imports; pin celery==5.6.3 and kombu==5.6.2 in requirements.txt and reinstall.")
    return f"the CeleryExecutor does not import: {last}.{hint}"
