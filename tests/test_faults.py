"""Faults in the middle of a run: retry classification, lost results, corrupt checkpoints, timeouts, run keys,
PostgreSQL time limits."""
from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from tests.ml_helpers import small_settings, write_prepared
from tl_tasks import config, pipeline, schema
from tl_tasks.errors import BadInput, MissingInput
from tl_tasks.stages import timeouts
from tl_tasks.store import connect

# --- retry classification ------------------------------------------------------------------------

def test_only_bad_input_is_not_retried():
    no_retry = pipeline.NO_RETRY_EXCEPTIONS
    assert isinstance(BadInput("x"), no_retry) and isinstance(MissingInput("x"), no_retry)
    # a network failure, a truncated checkpoint, a plain ValueError from a library, a vanished file: retried
    for exc in (ConnectionError("reset"), OSError("No space left on device"), ValueError("truncated file"),
                FileNotFoundError("gone on NFS"), timeouts.StageTimeout("slow")):
        assert not isinstance(exc, no_retry), exc
    assert issubclass(BadInput, ValueError) and issubclass(MissingInput, FileNotFoundError)   # compatible


def test_bad_settings_are_bad_input():
    with pytest.raises(BadInput, match="epochs=0"):
        schema.settings_from_params({"profile": "smoke", "epochs": 0})
    with pytest.raises(BadInput, match=r"profile=.huge. is not one of smoke, quick, full"):
        schema.settings_from_params({"profile": "huge"})


# --- run keys ------------------------------------------------------------------------------------

def test_run_key_is_collision_free_and_readable():
    keys = {config.run_key(r) for r in ("a:b", "a_b", "a b", "a/b", "a__b")}
    assert len(keys) == 5
    key = config.run_key("manual__2026-11-22T10:00:00+00:00")
    assert key.startswith("manual__2026-11-22T10_00_00_00_00-") and len(key.rsplit("-", 1)[1]) == 10
    assert config.run_key("x" * 1000) != config.run_key("x" * 999) and len(config.run_key("x" * 1000)) < 140
    assert config.run_key("a:b") == config.run_key("a:b")     # stable


# --- timeouts ------------------------------------------------------------------------------------

def test_deadline_stops_a_hung_python_loop_and_is_retryable():
    started = time.perf_counter()
    with (pytest.raises(timeouts.StageTimeout, match=r"train cnn ran past its deadline of 0:00:00\.300000"),  # noqa: PT012
          timeouts.deadline(timedelta(seconds=0.3), "train cnn")):
        while True:
            time.sleep(0.01)
    assert time.perf_counter() - started < 5
    with timeouts.deadline(timedelta(seconds=5), "quick"):    # finishing in time raises nothing later
        pass
    time.sleep(0.1)


def test_deadlines_follow_profile_variant_and_epochs():
    assert timeouts.train_deadline("smoke", "cnn", 1) < timeouts.train_deadline("quick", "cnn", 1)
    assert timeouts.train_deadline("quick", "cnn", 2) < timeouts.train_deadline("quick", "resnet50", 2)
    assert timeouts.train_deadline("full", "resnet50", 3) < timeouts.train_deadline("full", "resnet50", 6)
    assert timeouts.train_deadline("full", "resnet50", 10_000) == timeouts.HARD["train"]
    assert timedelta(days=7) > timeouts.DAGRUN_TIMEOUT        # a weekly run ends before the next is due


def test_postgres_engine_has_connect_and_statement_timeouts(pg_url):
    import sqlalchemy as sa

    from tl_tasks.store.db import PG_STATEMENT_TIMEOUT_MS, create_store_engine

    engine = create_store_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "2min" and PG_STATEMENT_TIMEOUT_MS == 120_000
        with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
            conn.execute(sa.text("SET statement_timeout = 200; SELECT pg_sleep(3)"))
    engine.dispose()
    started = time.perf_counter()
    dead = create_store_engine("postgresql://postgres@10.255.255.1:5432/x")   # unroutable: would hang ~2 min
    with pytest.raises(sa.exc.OperationalError):
        dead.connect()
    assert time.perf_counter() - started < 30


# --- lost results and corrupt checkpoints --------------------------------------------------------

@pytest.mark.slow
def test_a_finished_model_is_rerecorded_not_retrained_when_recording_failed(tmp_path, monkeypatch):
    from tl_tasks.store import MetricsStore as Store
    from tl_tasks.training import loop as train_module

    settings = small_settings(variants=("cnn",))
    pipeline.prepare_stage("r1", settings.to_dict())
    calls = []
    original_fit = train_module._Run._fit
    monkeypatch.setattr(train_module._Run, "_fit",
                        lambda self, *a, **k: calls.append(1) or original_fit(self, *a, **k))
    record = Store.record_training

    def database_down(self, *args, **kwargs):
        raise ConnectionError("server closed the connection unexpectedly")
    monkeypatch.setattr(Store, "record_training", database_down)
    with pytest.raises(ConnectionError):
        pipeline.train_stage("r1", "cnn", settings.to_dict(), verbose=0)
    assert calls == [1]
    monkeypatch.setattr(Store, "record_training", record)
    summary = pipeline.train_stage("r1", "cnn", settings.to_dict(), verbose=0)   # the retry
    assert calls == [1], "the retry retrained instead of recording the finished model"
    assert summary["state"] == "success"
    with connect() as store:
        assert store.get_run("r1")["results"]["cnn"]["state"] == "success"
    # a deliberate rerun (the result is recorded) still trains from scratch, as before
    pipeline.train_stage("r1", "cnn", settings.to_dict(), verbose=0)
    assert calls == [1, 1]


@pytest.mark.slow
def test_a_changed_model_file_is_not_reused(tmp_path):
    from tl_tasks.training.loop import train_variant

    data = write_prepared(tmp_path / "data", n_train=60, n_val=20, n_test=10)
    out = tmp_path / "cnn"
    settings = small_settings()
    first = train_variant("cnn", data, out, settings, verbose=0)
    with open(out / "model.keras", "ab") as f:
        f.write(b"tampered")
    again = train_variant("cnn", data, out, settings, verbose=0, reuse_finished=True)
    assert again.train_seconds != first.train_seconds          # trained anew


class _Stop(Exception):
    """Raised by `_train_until_checkpoint`: the training stops as if the process died."""


def _train_until_checkpoint(monkeypatch, data, out, settings, epoch: int) -> None:
    """Train the CNN until the checkpoint of `epoch` is written, then stop it there (as a crash would)."""
    from tl_tasks.training.checkpoints import Checkpoints
    from tl_tasks.training.loop import train_variant

    original = Checkpoints.save

    def save_then_stop(self, model, completed, *args, **kwargs):
        original(self, model, completed, *args, **kwargs)
        if completed == epoch:
            raise _Stop()

    with monkeypatch.context() as patch:
        patch.setattr(Checkpoints, "save", save_then_stop)
        with pytest.raises(_Stop):
            train_variant("cnn", data, out, settings, verbose=0)


@pytest.mark.slow
def test_an_unloadable_checkpoint_falls_back_one_epoch(tmp_path, caplog, monkeypatch):
    from tl_tasks.training.loop import train_variant

    data = write_prepared(tmp_path / "data", n_train=60, n_val=20, n_test=10)
    out = tmp_path / "cnn"
    settings = small_settings(epochs={"cnn": 3, "resnet50": 1})
    _train_until_checkpoint(monkeypatch, data, out, settings, epoch=2)
    ckpt = out / "checkpoints"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["completed_epochs"] == 2 and (ckpt / "epoch_001.keras").is_file()
    latest = ckpt / state["model_file"]
    latest.write_bytes(latest.read_bytes()[:1000])             # truncated, as after a crash mid-write
    resumed = train_variant("cnn", data, out, settings, verbose=0)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 3
    assert "cannot be loaded" in caplog.text


@pytest.mark.slow
def test_both_checkpoints_unloadable_start_over(tmp_path, caplog, monkeypatch):
    from tl_tasks.training.loop import train_variant

    data = write_prepared(tmp_path / "data", n_train=60, n_val=20, n_test=10)
    out = tmp_path / "cnn"
    settings = small_settings(epochs={"cnn": 2, "resnet50": 1})
    _train_until_checkpoint(monkeypatch, data, out, settings, epoch=2)
    for f in (out / "checkpoints").glob("epoch_*.keras"):
        f.write_bytes(b"garbage")
    resumed = train_variant("cnn", data, out, settings, verbose=0)
    assert resumed.resumed_from_epoch == 0 and resumed.epochs_run == 2
    assert "training from scratch" in caplog.text
