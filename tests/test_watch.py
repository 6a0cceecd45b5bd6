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


@pytest.mark.slow
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
