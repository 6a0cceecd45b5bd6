"""Shared fixtures: an isolated TL_HOME per test, the shared real CIFAR-10 archive, throwaway PostgreSQL, Redis,
headless Chromium, and one migrated Airflow metadata database (SQLite and PostgreSQL) per test session. A session
that changed the checkout's own tl_home fails (a test wrote outside its temporary TL_HOME).

Helper libraries (plain functions) are modules of the `tests` package, imported one way: `from tests.x import y`.
Anything with set-up or clean-up is a fixture here. A fixture whose external requirement is missing on a
developer's machine skips with the reason; CI has them all and sets TL_TEST_FORBID_SKIPS=1, which turns every
skip into a failure (see pytest_runtest_makereport below).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.airflow_harness import PG_ADMIN_URL, REDIS_TEST_URL

pytest_plugins = ["pytester"]   # tests/test_forbid_skips.py runs the hooks below on throwaway test folders

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test WORKERS=2`: each worker's TensorFlow and XLA (and the processes its tests start) compute on one
    # thread, so two workers share two cores without oversubscribing them; what runs side by side is mostly
    # single-threaded anyway (tracing, imports, Airflow's start-up, waiting on real processes).
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR_JPG = PROJECT_ROOT.parent / "shared" / "data" / "cifar-10-images-jpg.tar.gz"
FORBID_SKIPS = os.environ.get("TL_TEST_FORBID_SKIPS") == "1"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """With TL_TEST_FORBID_SKIPS=1 (CI), a skipped test fails: CI has every requirement, so a skip hides a gap."""
    report = yield
    if FORBID_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but TL_TEST_FORBID_SKIPS=1 forbids skips (CI has every requirement): {reason}"
    return report


# The test files that take longest (their tests' total under `make test`: 130-310 s each), in that order, then
# the other files with long (`slow` or `airflow`) tests, then the rest.
LONGEST_FILES = ("test_dag.py", "test_gpu_bench.py", "test_distributed.py", "test_scheduler_run.py", "test_train.py",
                 "test_backends.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first, each file's tests kept together and in order: under pytest-xdist (`make test`:
    --dist loadfile --no-loadscope-reorder) they start early, so no worker is left alone with one at the end."""
    long_files = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("airflow")}

    def rank(item) -> int:
        if item.path.name in LONGEST_FILES:
            return LONGEST_FILES.index(item.path.name)
        return len(LONGEST_FILES) + (item.path not in long_files)

    items.sort(key=rank)


CHECKOUT_TL_HOME = PROJECT_ROOT / "tl_home"
_checkout_tl_home_key = pytest.StashKey[dict]()


def _tree_state(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder` with its kind, size and modification time (empty when it does not exist)."""
    state = {}
    for top, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(top) / name
            st = path.lstat()
            state[str(path.relative_to(folder))] = (st.st_mode >> 12, st.st_size if name in names else 0,
                                                    st.st_mtime_ns if name in names else 0)
    return state


def pytest_sessionstart(session):
    session.config.stash[_checkout_tl_home_key] = _tree_state(CHECKOUT_TL_HOME)


def _checkout_tl_home_changes(session) -> list[str]:
    """What the tests changed in the checkout's own tl_home: every test must write under its own TL_HOME."""
    before = session.config.stash.get(_checkout_tl_home_key, None)
    if before is None or hasattr(session.config, "workerinput"):  # an xdist worker: the controller checks
        return []
    after = _tree_state(CHECKOUT_TL_HOME)
    return sorted(f"{'added' if k not in before else 'removed' if k not in after else 'changed'} "
                  f"{CHECKOUT_TL_HOME / k}" for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def pytest_sessionfinish(session, exitstatus):
    """With TL_TEST_FORBID_SKIPS=1, a skip outside a test (a whole module skipped at collection) fails the run too.
    A test that wrote into the checkout's own tl_home (not its temporary TL_HOME) fails the run, always."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    changes = _checkout_tl_home_changes(session)
    if changes:
        if reporter is not None:
            reporter.write_line(f"the tests changed the checkout's {CHECKOUT_TL_HOME} (a test wrote outside its "
                                f"temporary TL_HOME):\n  " + "\n  ".join(changes[:20]), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if FORBID_SKIPS and reporter is not None and reporter.stats.get("skipped") and session.exitstatus == 0:
        reporter.write_line("TL_TEST_FORBID_SKIPS=1: something was skipped (see above); failing the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
    # Keras on JAX: one compilation cache for the session (this worker's), as a worker keeps one for all its runs:
    # a model that an earlier test compiled is not compiled again (each test's TL_HOME would start it empty)
    monkeypatch.setenv("TL_JAX_COMPILATION_CACHE", str(tmp_path_factory.getbasetemp() / "jax-compiled"))
    return home


@pytest.fixture(scope="session")
def shared_cifar_jpg() -> Path:
    """The real CIFAR-10 as JPEG image folders (../shared/data, beside the checkout); skips where it is missing."""
    if not SHARED_CIFAR_JPG.is_file():
        pytest.skip(f"missing {SHARED_CIFAR_JPG}: put the shared data folder beside the checkout")
    return SHARED_CIFAR_JPG


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless Chromium; skips where none is installed (`make system-deps` installs Debian's)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium is missing: run `make system-deps` (apt-get install chromium)")


@pytest.fixture
def redis_url() -> str:
    """A Redis database of its own for Celery tests (TL_TEST_REDIS_URL), flushed before; skips when unreachable."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis at {REDIS_TEST_URL} is not reachable ({exc}); start it (.ci/run does)")
    finally:
        client.close()
    return REDIS_TEST_URL


@pytest.fixture(scope="session")
def migrated_airflow_db(tmp_path_factory) -> Path:
    """One `airflow db migrate` (plus the `gpu` pool) per test session: a SQLite metadata database to copy.

    Use `airflow_home_with_db(folder)` (below) to get an AIRFLOW_HOME whose airflow.db is a copy of it.
    """
    home = tmp_path_factory.mktemp("airflow_template")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    proc = subprocess.run([sys.executable, "-m", "tl_tasks.airflow_local.env", "--setup"],
                          capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT,
                          env={**env, "TL_AIRFLOW_HOME": str(home)})
    assert proc.returncode == 0, f"airflow set-up failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return home / "airflow.db"


@pytest.fixture(scope="session")
def airflow_pg_template(tmp_path_factory, pg_server) -> str:
    """One `airflow db migrate` on PostgreSQL per test session: the name of a database that
    `pg_database(PG_ADMIN_URL, template=...)` copies (CREATE DATABASE ... TEMPLATE: seconds, not a migration)."""
    import sqlalchemy as sa

    from tests.airflow_harness import DAGS_FOLDER, AirflowHarness

    name = f"tl_af_template_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        AirflowHarness(home=tmp_path_factory.mktemp("airflow_pg_template"), dags_folder=DAGS_FOLDER,
                       executor="CeleryExecutor", sql_alchemy_conn=url).migrate()
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def airflow_home_with_db(migrated_airflow_db):
    """`airflow_home_with_db(folder)`: create `folder` with a copy of the session's migrated airflow.db; returns it."""
    def make(folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_airflow_db, folder / "airflow.db")
        return folder
    return make


@pytest.fixture
def webhook_server():
    """A JSON webhook receiver on loopback: yields (url, received), each POST as (path, content type, payload)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/retraining", received
    server.shutdown()
    server.server_close()


def _pg_admin_engine():
    import sqlalchemy as sa

    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of PostgreSQL on 127.0.0.1:5432; skips when it is not reachable."""
    import sqlalchemy as sa

    admin = _pg_admin_engine()
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({exc.orig}); start it (.ci/run does)")
    finally:
        admin.dispose()
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server):
    """A throwaway PostgreSQL database on 127.0.0.1:5432, dropped afterwards; yields its SQLAlchemy URL."""
    import sqlalchemy as sa

    name = f"tl_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


MLFLOW_BIN = PROJECT_ROOT / ".venv-mlflow" / "bin" / "mlflow"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (`make mlflow-venv`) on loopback with a SQLite backend and its own artifact
    folder; yields its URL and stops it afterwards. Skips where the tools venv is missing."""
    import signal
    import time

    import requests

    from tests.airflow_harness import free_port

    if not MLFLOW_BIN.is_file():
        pytest.skip(f"{MLFLOW_BIN} is missing: run `make mlflow-venv` (make test does)")
    home = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # No background job runner: it imports the GenAI scorers, whose dependencies the tools venv leaves out.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(home / "server.log", "w") as log:
        proc = subprocess.Popen([str(MLFLOW_BIN), "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                                 "--artifacts-destination", str(home / "artifacts")],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"mlflow server did not start:\n{(home / 'server.log').read_text()[-3000:]}"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
