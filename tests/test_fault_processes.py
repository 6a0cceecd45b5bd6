"""Faults with real processes and real devices (slow): a full disk during checkpointing, `make airflow`
stopping every component after SIGTERM, PostgreSQL stopped during evaluate. A Celery worker killed during train:
tests/test_distributed.py (its Airflow also serves the distributed run)."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ml_helpers import small_settings, write_prepared

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs (we are root in the test environment; without root this test cannot reproduce the fault)."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.fail("this fault test mounts a tmpfs and needs root (the project's test machines run as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_a_full_disk_during_checkpointing_is_a_clear_error_and_the_previous_checkpoint_loads(tmp_path, small_disk):
    import keras

    from tl_tasks.training.loop import train_variant

    data = write_prepared(tmp_path / "data", n_train=60, n_val=20, n_test=10)
    out = small_disk / "cnn"
    settings = small_settings(epochs={"cnn": 4, "resnet50": 1})
    with pytest.raises(OSError) as err:      # a CNN checkpoint is ~3.5 MB: the second one cannot fit beside the first
        train_variant("cnn", data, out, settings, verbose=0)
    assert err.value.errno == errno.ENOSPC
    message = str(err.value)
    assert "no space left on the device while writing" in message and "intact" in message and "TL_HOME" in message
    assert not list((out / "checkpoints").glob(".tmp-*")), "a partial temporary file was left on the full disk"
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["completed_epochs"] >= 1
    model = keras.models.load_model(out / "checkpoints" / state["model_file"], safe_mode=True)
    assert model.count_params() > 0                                     # the previous checkpoint still loads
    # once there is room again, the retry resumes from it
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = train_variant("cnn", data, out, settings, verbose=0)
    assert resumed.resumed_from_epoch == state["completed_epochs"] and resumed.epochs_run == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of every process whose environment contains `marker`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except OSError:
            continue
    found.pop(os.getpid(), None)
    return found


STOP_LIMIT_S = 40   # the script's 7 s grace plus headroom for a loaded machine


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_airflow_stops_every_component_after_sigterm(tmp_path):
    """Stopped with SIGTERM (twice), the script sends SIGTERM, then SIGKILL after a 7 s grace (about 10 s in all on an idle machine); the test
    allows STOP_LIMIT_S so that a loaded two-core machine does not fail it. What it checks is that nothing is
    left running, not how fast: a component that ignored SIGTERM would still be there without the SIGKILL."""
    home = tmp_path / "airflow_home"
    env = {**os.environ, "TL_AIRFLOW_HOME": str(home), "TL_AIRFLOW_PORT": str(_free_port()),
           "PY": sys.executable, "TL_HOME": str(tmp_path / "tl_home"), "TL_SCHEDULE": "none"}
    env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW")}
    log = open(tmp_path / "airflow.log", "w")  # noqa: SIM115 (the script writes to it until it stops; closed below)
    proc = subprocess.Popen(["bash", str(PROJECT_ROOT / "scripts" / "airflow_standalone.sh")], cwd=PROJECT_ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    marker = f"AIRFLOW_HOME={home}"
    try:
        deadline = time.monotonic() + 420
        while "Airflow is up" not in (tmp_path / "airflow.log").read_text():
            assert proc.poll() is None, (tmp_path / "airflow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Airflow did not come up:\n" + (tmp_path / "airflow.log").read_text()[-3000:]
            time.sleep(1)
        time.sleep(5)   # let every component settle (workers forked)
        before = _processes_with(marker)
        names = " ".join(before.values())
        for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
            assert component in names, f"{component} is not running: {before}"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # A second SIGTERM during the clean-up, as `make airflow` sends when its process group is terminated
        # (a supervisor's stop): GNU make forwards SIGTERM to its recipe. It must not cut the clean-up short.
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        while _processes_with(marker) and time.monotonic() - started < STOP_LIMIT_S:
            time.sleep(0.2)
        left = _processes_with(marker)
        took = time.monotonic() - started
        assert not left, f"after {took:.1f} s still running: {left}"
        assert "[airflow] stopped" in (tmp_path / "airflow.log").read_text()
        proc.wait(timeout=5)
    finally:
        for pid in _processes_with(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


# --- PostgreSQL stopped during evaluate ----------------------------------------------------------------------

def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    assert found, f"no {name} under /usr/lib/postgresql/*/bin: install PostgreSQL's server package"
    return str(found[-1])


class OwnPostgres:
    """A throwaway PostgreSQL server of our own (never the shared one), run as the unprivileged user postgres."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.data = root, port, root / "data"

    def _as_postgres(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True,
                              timeout=120, check=check)

    def init(self) -> None:
        self._as_postgres(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                          "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def own_postgres():
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.fail("this fault test starts its own PostgreSQL as user postgres via runuser and needs root")
    root = Path(tempfile.mkdtemp(prefix="tl-own-pg-", dir="/tmp"))
    shutil.chown(root, "postgres", "postgres")
    server = OwnPostgres(root, _free_port())
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_postgres_stopped_during_evaluate_fails_the_task_retryably_and_the_retry_completes(own_postgres,
                                                                                          monkeypatch):
    from tl_tasks import pipeline, schema
    from tl_tasks.store import connect
    from tl_tasks.store.db import DatabaseUnavailableError
    from tl_tasks.training import evaluate as evaluate_module

    monkeypatch.setenv("TL_METRICS_DB_URL", own_postgres.url)
    run_id = "manual__pg-outage"
    settings = schema.settings_from_params({"profile": "smoke", "variants": ["cnn"]})
    pipeline.prepare_stage(run_id, settings.to_dict())
    pipeline.train_stage(run_id, "cnn", settings.to_dict(), verbose=0)

    original = evaluate_module.evaluate_variant

    def evaluate_then_lose_the_database(*args, **kwargs):
        result = original(*args, **kwargs)
        own_postgres.stop()            # the server goes away while evaluate is running, before it records
        return result
    monkeypatch.setattr(evaluate_module, "evaluate_variant", evaluate_then_lose_the_database)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="cannot use the metrics database") as err:
        pipeline.evaluate_stage(run_id, "cnn", settings.to_dict())
    assert time.monotonic() - started < 120
    assert not isinstance(err.value, pipeline.NO_RETRY_EXCEPTIONS), f"would not be retried: {err.value!r}"
    from airflow.sdk import RetryAction

    from tl_tasks.airflow_local.run_dag import load_dag_module

    assert load_dag_module("cifar10_retraining").RETRY_POLICY.evaluate(err.value, 1, 3).action == RetryAction.DEFAULT

    own_postgres.start()               # PostgreSQL is back: the retry (the same task again) completes the run
    monkeypatch.setattr(evaluate_module, "evaluate_variant", original)
    evaluation = pipeline.evaluate_stage(run_id, "cnn", settings.to_dict())
    pipeline.gate_stage(run_id, settings.to_dict())
    pipeline.report_stage(run_id)
    assert pipeline.finish_stage(run_id)["state"] == "success"
    with connect() as store:
        run = store.get_run(run_id)
        assert list(run["results"]) == ["cnn"] and run["results"]["cnn"]["accuracy"] == evaluation["accuracy"]
        assert len(run["results"]["cnn"]["history"]) == settings.epochs_for("cnn")   # nothing lost or doubled
        assert run["state"] == "success"
