"""The data watcher: a cheap signature (names, sizes, mtimes), changes confirmed across two looks, state kept in
$TL_HOME across restarts; the watcher DAG parses without TensorFlow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tl_tasks.data import watch

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _image(path: Path, payload: bytes = b"\x89PNG fake but never decoded") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        for i in range(3):
            _image(root / "train" / cls / f"{i}.png")
    return root


def test_baseline_then_only_real_changes(folder, tl_home):
    first = watch.check(folder, settle_seconds=0)
    assert not first["changed"] and first["reason"] == "first look: baseline recorded"
    assert first["signature"]["files"] == 6
    assert not watch.check(folder, settle_seconds=0)["changed"]  # touching nothing: no event
    _image(folder / "train" / "cat" / "new.png")
    added = watch.check(folder, settle_seconds=0)
    assert added["changed"] and added["reason"] == "changed: 6 -> 7 files"
    assert not watch.check(folder, settle_seconds=0)["changed"]  # reported once
    (folder / "train" / "dog" / "0.png").unlink()
    assert watch.check(folder, settle_seconds=0)["changed"]  # removed
    target = folder / "train" / "dog" / "1.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # rewritten: same size, new mtime
    assert watch.check(folder, settle_seconds=0)["changed"]
    for junk in (".DS_Store", "x.png.part", "~lock.tmp"):  # temporary and hidden files are not data
        _image(folder / "train" / "cat" / junk)
    assert not watch.check(folder, settle_seconds=0)["changed"]


def test_a_source_being_written_is_reported_only_once_it_settles(folder, tl_home, monkeypatch):
    watch.check(folder, settle_seconds=0)
    writes = iter(range(100))

    def sleep_while_copying(seconds):  # a copy in progress: a new file appears between the two looks
        _image(folder / "train" / "cat" / f"copy{next(writes)}.png")

    monkeypatch.setattr(watch.time, "sleep", sleep_while_copying)
    busy = watch.check(folder)
    assert not busy["changed"] and "changing" in busy["reason"]
    monkeypatch.setattr(watch.time, "sleep", lambda s: None)
    assert watch.check(folder)["changed"]  # the copy finished: one event


def test_state_survives_a_restart_and_a_torn_state_file_is_a_new_baseline(folder, tl_home):
    watch.check(folder, settle_seconds=0)
    state = watch.state_path(folder)
    assert state.is_relative_to(tl_home) and json.loads(state.read_text())["signature"]["files"] == 6
    _image(folder / "train" / "dog" / "new.png")
    # a new process (a restarted scheduler/worker) sees the change exactly once
    code = ("from pathlib import Path; from tl_tasks.data import watch; import json; "
            f"print(json.dumps(watch.check(Path({str(folder)!r}), settle_seconds=0)['changed']))")
    outputs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                              env={**os.environ, "TL_HOME": str(tl_home)}, timeout=120).stdout.strip()
               for _ in range(2)]
    assert outputs == ["true", "false"]
    state.write_text("{half")
    assert not watch.check(folder, settle_seconds=0)["changed"]


def test_an_archive_source_and_the_source_setting(tmp_path, tl_home, monkeypatch):
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(b"one")
    watch.check(archive, settle_seconds=0)
    assert not watch.check(archive, settle_seconds=0)["changed"]
    archive.write_bytes(b"a new, longer archive")
    assert watch.check(archive, settle_seconds=0)["changed"]
    monkeypatch.delenv("TL_WATCH_SOURCE", raising=False)
    assert watch.watched_source() is None and watch.watched_dataset() is None
    assert "nothing to watch" in watch.check(settle_seconds=0)["reason"]
    monkeypatch.setenv("TL_WATCH_SOURCE", f"folder:{archive}")
    assert watch.watched_source() == archive and watch.watched_dataset() == f"folder:{archive}"
    monkeypatch.setenv("TL_WATCH_SOURCE", str(tmp_path))
    assert watch.watched_source() == tmp_path and watch.watched_dataset() == f"folder:{tmp_path}"


def test_a_watcher_event_names_the_dataset_of_the_run_it_starts(monkeypatch):
    class Event:
        def __init__(self, extra, source_dag_id=watch.WATCHER_DAG_ID):
            self.extra, self.source_dag_id = extra, source_dag_id

    assert watch.dataset_from_events(None) is None and watch.dataset_from_events({}) is None
    events = {"tl_training_data": [Event({"source": "/d"}), Event({"dataset": "folder:/d1"}),
                                   Event({"dataset": "folder:/d2"})]}
    assert watch.dataset_from_events(events) == "folder:/d2"  # the newest
    posted = {"tl_training_data": [Event({"dataset": "folder:/etc"}, source_dag_id=None)]}  # a REST API event
    assert watch.dataset_from_events(posted) is None

    monkeypatch.setenv("TL_WATCH_SOURCE", "/watched")
    assert watch.dataset_for_run("synthetic", events, manual=False) == "synthetic"  # given: always wins
    assert watch.dataset_for_run(None, events, manual=False) == "folder:/d2"        # the watcher's run
    assert watch.dataset_for_run(None, None, manual=False) == "folder:/watched"     # a clock run: the watched data
    assert watch.dataset_for_run(None, None, manual=True) is None                   # a manual run: the profile's
    monkeypatch.delenv("TL_WATCH_SOURCE")
    assert watch.dataset_for_run(None, None, manual=False) is None


def test_the_watcher_event_names_the_source_it_checked(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("TL_WATCH_SOURCE", f"cifar10:{tmp_path / 'c.tar.gz'}")
    assert watch.check(other, settle_seconds=0)["dataset"] == f"folder:{other}"
    (tmp_path / "c.tar.gz").write_bytes(b"x")
    assert watch.check(settle_seconds=0)["dataset"] == f"cifar10:{tmp_path / 'c.tar.gz'}"


def test_watcher_dag_is_light_and_the_retraining_dag_listens_to_its_asset(tmp_path):
    code = ("import sys; from tl_tasks.airflow_local.run_dag import load_dag_module; "
            "w, r = load_dag_module('tl_data_watcher'), load_dag_module('cifar10_retraining'); "
            "from airflow.sdk import AssetOrTimeSchedule; "
            "assert isinstance(r.retraining_dag.timetable, AssetOrTimeSchedule), r.retraining_dag.timetable; "
            "assert [o.name for o in w.watcher_dag.get_task('look').outlets] == ['tl_training_data']; "
            "assert 'tl_training_data' in repr(r.retraining_dag.timetable); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env={**os.environ, "AIRFLOW_HOME": str(tmp_path)}, timeout=300)
    assert proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def _runs(harness, dag_id: str) -> list[dict]:
    return harness.api("GET", f"dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]


def _wait_watcher_runs(harness, at_least: int, timeout: float = 300) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        harness.check_alive()
        done = [r for r in _runs(harness, "tl_data_watcher") if r["state"] in ("success", "failed")]
        if len(done) >= at_least:
            return
        time.sleep(3)
    raise AssertionError(f"fewer than {at_least} watcher runs finished in {timeout}s\n{harness.diagnostics()}")


@pytest.mark.slow
def test_real_scheduler_new_images_start_exactly_one_retraining_run(tmp_path, tl_home, folder, migrated_airflow_db,
                                                                     webhook_server):
    import time

    from tests.airflow_harness import DAGS_FOLDER, AirflowHarness, workflow_env

    url, received = webhook_server
    env = {**workflow_env(tl_home, f"sqlite:///{tl_home / 'metrics.db'}"), "TL_WATCH_SOURCE": str(folder),
           "TL_WATCH_INTERVAL_S": "10", "TL_WATCH_SETTLE_S": "1",
           "TL_NOTIFY_WEBHOOK_URL": url}
    # The run the watcher starts trains on the watched folder (its event names it): fake images fail fast in
    # prepare_data, no training.
    harness = AirflowHarness(home=tmp_path / "airflow", dags_folder=DAGS_FOLDER, parallelism=2, extra_env=env)
    try:
        harness.migrate(migrated_airflow_db)
        harness.create_pool("gpu", 1)
        harness.start_core()
        harness.wait_dag("tl_data_watcher")
        harness.wait_dag("cifar10_retraining")
        harness.unpause("cifar10_retraining")
        harness.unpause("tl_data_watcher")
        _wait_watcher_runs(harness, 3)  # baseline, then two looks at an untouched folder
        assert _runs(harness, "cifar10_retraining") == [], "touching nothing must start no run"
        seen = len([r for r in _runs(harness, "tl_data_watcher") if r["state"] in ("success", "failed")])
        for i in range(3):
            _image(folder / "train" / "cat" / f"added{i}.png")
        _wait_watcher_runs(harness, seen + 3)
        runs = _runs(harness, "cifar10_retraining")
        if len(runs) == 1:  # the run fails in prepare_data: the dag-processor runs the failure notifier
            harness.wait_run("cifar10_retraining", runs[0]["dag_run_id"], timeout=300)
            deadline = time.monotonic() + 120
            while not received and time.monotonic() < deadline:
                time.sleep(2)
    finally:
        harness.stop()
    posts = [payload for _, _, payload in received]
    assert [r["run_type"] for r in runs] == ["asset_triggered"], runs
    assert [(p["run_id"], p["state"]) for p in posts] == [(runs[0]["dag_run_id"], "failed")], posts
    # the run trained on the data the watcher watches (its event named it), not on the profile's dataset
    from tl_tasks.store import connect

    with connect() as store:  # the same metrics database (TL_HOME's default) as the Airflow processes
        run = store.get_run(runs[0]["dag_run_id"])
    assert run["params"]["dataset"] == f"folder:{folder}", run["params"]
