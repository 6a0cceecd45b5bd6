"""The metrics store, run against SQLite in tmp_path and against the real PostgreSQL (same tests, both)."""
from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys
import traceback
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from tl_tasks.store import (
    DatabaseUnavailableError,
    DatabaseURLError,
    SchemaVersionError,
    connect,
    head_revision,
    mask_url,
    resolve_url,
)
from tl_tasks.store.db import SCHEMA_REVISION

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
N_WRITERS = 16


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database: a SQLite file in tmp_path, or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'metrics.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url):
    with connect(db_url) as s:
        yield s


def _train_summary(variant: str, acc: float = 0.5, epochs: int = 3, **extra) -> dict:
    history = [{"epoch": e, "loss": 2.0 - 0.1 * e, "accuracy": acc - 0.01 * (epochs - e), "val_loss": 2.1 - 0.1 * e,
                "val_accuracy": acc - 0.02 * (epochs - e), "seconds": 1.5} for e in range(1, epochs + 1)]
    return {"variant": variant, "state": "success", "model_path": f"/m/{variant}/model.keras", "weights": "none",
            "epochs_run": epochs, "best_epoch": epochs, "train_seconds": 4.5, "history": history,
            "resumed_from_epoch": None, "params_total": 1000, "params_trainable": 800, **extra}


def _evaluation(variant: str, acc: float, classes=("cat", "dog", "ship")) -> dict:
    n = len(classes)
    return {
        "variant": variant, "accuracy": acc, "loss": 1.0 - acc, "top3_accuracy": min(1.0, acc + 0.2),
        "macro_f1": acc - 0.01,
        "per_class": [{"class_name": c, "precision": acc, "recall": acc, "f1": acc, "support": 10} for c in classes],
        "confusion_matrix": [[10 if i == j else 0 for j in range(n)] for i in range(n)],
        "misclassified": [{"index": 3, "true": 0, "predicted": 1}],
        "inference_img_per_s": 1234.5, "params_total": 1000, "params_trainable": 800, "model_size_bytes": 4096,
        "class_names": list(classes),
    }


def _record_run(store, run_id: str, when: datetime, accs: dict, gate: dict | None = None,
                lineage: str = "L1") -> None:
    store.upsert_run(run_id, dag_id="cifar10_retraining", logical_date=when, started_at=when, state="success",
                     profile="smoke", lineage=lineage)
    for variant, acc in accs.items():
        if acc is None:
            store.record_failure(run_id, variant, "train", "RuntimeError: out of memory")
            continue
        store.record_training(run_id, variant, _train_summary(variant, acc))
        store.record_evaluation(run_id, variant, _evaluation(variant, acc))
        if gate and variant in gate:
            store.record_gate(run_id, variant, {"decision": gate[variant], "accuracy": acc, "tolerance": 0.01})


def _count(store, table: str, **where) -> int:
    clause = " AND ".join(f"{k} = :{k}" for k in where) or "1 = 1"
    with store.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {clause}"), where).scalar_one()


# --- schema and migrations ------------------------------------------------------------------------------------

def test_migrations_from_empty_reach_head_and_match_the_orm(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from tl_tasks.store.models import Base

    with connect(db_url) as store:
        assert store.schema_revision() == head_revision() == SCHEMA_REVISION == "0002_lineage"
        with store.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            assert {"runs", "results", "epoch_metrics", "class_metrics", "confusion_matrices",
                    "gate_decisions", "alembic_version"} <= tables
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
        assert diff == [], f"the migrations and the ORM models disagree: {diff}"


def test_alembic_downgrade_to_base_and_upgrade_again(db_url):
    from alembic import command

    from tl_tasks.store.db import alembic_config, create_store_engine

    with connect(db_url) as store:
        store.upsert_run("r1")
    engine = create_store_engine(db_url)
    try:
        command.downgrade(alembic_config(engine), "base")
        with engine.connect() as conn:
            assert "runs" not in sa.inspect(conn).get_table_names()
        command.upgrade(alembic_config(engine), "head")
    finally:
        engine.dispose()
    with connect(db_url) as store:
        assert store.schema_revision() == head_revision()
        assert store.recent_runs() == []


def test_db_upgrade_command_and_second_connect_is_a_no_op(db_url, monkeypatch):
    from tl_tasks.cli import db_upgrade_command

    monkeypatch.setenv("TL_METRICS_DB_URL", db_url)
    assert "upgraded from empty to schema revision 0002_lineage" in db_upgrade_command()
    assert "up to date (schema revision 0002_lineage)" in db_upgrade_command()
    with connect() as store:
        assert store.schema_revision() == "0002_lineage"


def test_database_newer_than_the_code_is_a_clear_error(db_url):
    with connect(db_url) as store, store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaVersionError, match=r"'9999_future'.*does not know.*newest is '0002_lineage'") as err:
        connect(db_url)
    assert mask_url(db_url) in str(err.value)


def test_a_foreign_database_with_a_runs_table_is_refused(db_url):
    from tl_tasks.store.db import create_store_engine

    engine = create_store_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE runs (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="'runs' table but no Alembic version"):
        connect(db_url)


def test_default_url_is_a_wal_sqlite_file_in_tl_home(tl_home):
    with connect() as store:
        store.upsert_run("r1")
        assert store.dialect == "sqlite"
        assert store.url == f"sqlite:///{tl_home / 'metrics.db'}"
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert (tl_home / "metrics.db").is_file()


def test_env_var_selects_the_database(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere" / "m.db"
    monkeypatch.setenv("TL_METRICS_DB_URL", f"sqlite:///{path}")
    with connect() as store:
        store.upsert_run("r1")
    assert path.is_file()


# --- URLs and errors ------------------------------------------------------------------------------------------

def test_postgres_urls_are_mapped_to_psycopg3():
    assert resolve_url("postgres://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"
    assert resolve_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert resolve_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_url("sqlite:////x/m.db") == "sqlite:////x/m.db"


def test_mask_url():
    assert mask_url("postgresql+psycopg://tl:p%40ss@db:5432/metrics") == "postgresql+psycopg://tl:***@db:5432/metrics"
    assert mask_url("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    assert "pw" not in mask_url("postgresql://tl:pw@host:port/db")


def test_plain_postgresql_url_connects(pg_url):
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with connect(plain) as store:
        assert store.dialect == "postgresql"
        assert store.url.startswith("postgresql+psycopg://")
        store.upsert_run("r1")
    with connect(plain.replace("postgresql://", "postgres://")) as store:
        assert store.get_run("r1")["run_id"] == "r1"


def test_unreachable_database_names_the_url_with_the_password_masked():
    with pytest.raises(DatabaseUnavailableError) as err:
        connect("postgresql://tl:s3cret-pw@127.0.0.1:1/metrics")
    msg = str(err.value)
    assert "postgresql+psycopg://tl:***@127.0.0.1:1/metrics" in msg
    assert "s3cret" not in msg
    assert "TL_METRICS_DB_URL" in msg


def test_missing_postgresql_database_is_a_clear_error(pg_url):
    url = pg_url.rsplit("/", 1)[0].replace("postgres@", "postgres:hunter2@") + "/tl_no_such_db"
    with pytest.raises(DatabaseUnavailableError) as err:
        connect(url)
    assert "postgres:***@127.0.0.1:5432/tl_no_such_db" in str(err.value)
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("url, shown", [
    ("not a url", "not a url"),
    ("postgresql://tl:s3cret@host:notaport/db", "postgresql://tl:***@host:notaport/db"),
    ("mysql://tl:s3cret@host/db", "mysql://tl:***@host/db"),
    ("postgresql+nosuchdriver://tl:s3cret@host/db", "postgresql+nosuchdriver://tl:***@host/db"),
])
def test_malformed_or_unsupported_url_is_a_clear_error(url, shown):
    with pytest.raises(DatabaseURLError) as err:
        connect(url)
    assert shown in str(err.value)
    assert "s3cret" not in str(err.value)
    assert "sqlite:///" in str(err.value)  # shows an example of a good URL


def test_unopenable_sqlite_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DatabaseUnavailableError, match="cannot create the folder"):
        connect(f"sqlite:///{blocker}/sub/metrics.db")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "metrics.db").mkdir()  # a folder where the file should be
    with pytest.raises(DatabaseUnavailableError, match=r"sqlite:///.*ro/metrics.db.*unable to open"):
        connect(f"sqlite:///{tmp_path / 'ro' / 'metrics.db'}")


def test_in_memory_sqlite_works():
    with connect("sqlite://") as store:
        store.record_evaluation("r1", "cnn", _evaluation("cnn", 0.5))
        assert store.get_run("r1")["results"]["cnn"]["accuracy"] == 0.5


# --- writes ----------------------------------------------------------------------------------------------------

def test_writing_the_same_run_and_variant_three_times_leaves_one_row_with_the_latest_values(store):
    for i, acc in enumerate((0.5, 0.6, 0.7)):
        store.record_training("r1", "cnn", _train_summary("cnn", acc, epochs=4 - i, train_seconds=10.0 + i))
        store.record_evaluation("r1", "cnn", _evaluation("cnn", acc, classes=("a", "b", "c", "d")[: 4 - i]))
        store.record_gate("r1", "cnn", {"decision": ["bootstrap", "kept", "promoted"][i], "accuracy": acc})
        store.upsert_run("r1", state=["running", "failed", "success"][i], seed=i)
    assert _count(store, "runs") == 1
    assert _count(store, "results") == 1
    assert _count(store, "epoch_metrics") == 2
    assert _count(store, "class_metrics") == 2
    assert _count(store, "confusion_matrices") == 1
    assert _count(store, "gate_decisions") == 1
    run = store.get_run("r1")
    assert (run["state"], run["seed"]) == ("success", 2)
    res = run["results"]["cnn"]
    assert res["accuracy"] == pytest.approx(0.7)
    assert res["train_seconds"] == pytest.approx(12.0)
    assert res["epochs_run"] == 2 and [h["epoch"] for h in res["history"]] == [1, 2]
    assert [c["class_name"] for c in res["per_class"]] == ["a", "b"]
    assert res["confusion_matrix"] == [[10, 0], [0, 10]]
    assert res["gate"]["decision"] == "promoted"


def test_run_fields_round_trip_and_partial_updates(store):
    tz = timezone(timedelta(hours=2))
    store.upsert_run(
        "manual__2026-01-01T14:00:00+02:00", dag_id="cifar10_retraining",
        logical_date=datetime(2026, 1, 1, 14, 0, tzinfo=tz), started_at="2026-01-01T12:00:05Z", state="running",
        profile="smoke", params={"epochs": 1, "variants": ("cnn",)}, data_source="synthetic",
        data_fingerprint="ab" * 32, data_summary={"counts": {"train": 360, "val": 40, "test": 100}},
        class_names=["cat", "dog"], seed=42, versions={"keras": "3.0", "python": "3.11"}, device="cpu",
    )
    run = store.upsert_run("manual__2026-01-01T14:00:00+02:00", state="success",
                           ended_at=datetime(2026, 1, 1, 12, 10))  # naive = UTC
    assert run["logical_date"] == "2026-01-01T12:00:00+00:00"
    assert run["started_at"] == "2026-01-01T12:00:05+00:00"
    assert run["ended_at"] == "2026-01-01T12:10:00+00:00"
    assert run["state"] == "success" and run["profile"] == "smoke"  # untouched fields keep their values
    assert run["params"] == {"epochs": 1, "variants": ["cnn"]}
    assert run["versions"]["keras"] == "3.0" and run["class_names"] == ["cat", "dog"] and run["seed"] == 42
    assert run["data_summary"]["counts"]["train"] == 360
    full = store.get_run("manual__2026-01-01T14:00:00+02:00")
    assert full["results"] == {} and full["data_fingerprint"] == "ab" * 32
    json.dumps(full)  # JSON-safe


def test_bad_writes_are_clear_errors(store):
    with pytest.raises(ValueError, match=r"unknown field.*'colour'"):
        store.upsert_run("r1", colour="blue")
    with pytest.raises(ValueError, match="run_id"):
        store.upsert_run("")
    with pytest.raises(ValueError, match="'sideways' is not a gate decision"):
        store.record_gate("r1", "cnn", {"decision": "sideways"})
    with pytest.raises(ValueError, match="is for variant 'cnn' but was recorded as 'resnet50_v1'"):
        store.record_training("r1", "resnet50_v1", _train_summary("cnn"))
    with pytest.raises(ValueError, match="ISO 8601"):
        store.upsert_run("r1", logical_date="yesterday")


def test_results_may_arrive_before_the_run_row(store):
    store.record_evaluation("r1", "cnn", _evaluation("cnn", 0.4))
    store.record_training("r1", "resnet50_v1", _train_summary("resnet50_v1"))
    store.upsert_run("r1", dag_id="cifar10_retraining", state="success")
    run = store.get_run("r1")
    assert run["dag_id"] == "cifar10_retraining"
    assert list(run["results"]) == ["cnn", "resnet50_v1"]  # registry order
    assert run["results"]["cnn"]["accuracy"] == pytest.approx(0.4)
    assert run["results"]["resnet50_v1"]["accuracy"] is None


def test_failure_then_successful_retry(store):
    store.record_failure("r1", "resnet50_v2", "train", "Traceback ...\nResourceExhaustedError: OOM")
    res = store.get_result("r1", "resnet50_v2")
    assert (res["state"], res["stage"]) == ("failed", "train") and "OOM" in res["error"]
    store.record_training("r1", "resnet50_v2", _train_summary("resnet50_v2"))
    store.record_evaluation("r1", "resnet50_v2", _evaluation("resnet50_v2", 0.8))
    res = store.get_result("r1", "resnet50_v2")
    assert (res["state"], res["stage"], res["error"]) == ("success", None, None)
    assert _count(store, "results") == 1
    store.record_failure("r1", "resnet50_v2", "evaluate", "x" * 50_000)
    res = store.get_result("r1", "resnet50_v2")
    assert res["state"] == "failed" and res["stage"] == "evaluate" and len(res["error"]) < 20_100
    assert res["history"], "a failure keeps the rows an earlier stage wrote"


def test_result_shape_holds_what_the_report_needs(store):
    store.upsert_run("r1", logical_date=T0)
    store.record_training("r1", "cnn", _train_summary("cnn", 0.61, extra_key={"lr": 0.001}))
    store.record_evaluation("r1", "cnn", {**_evaluation("cnn", 0.62), "loss": float("nan"), "seconds": 3.0})
    store.record_gate("r1", "cnn", {"decision": "bootstrap", "champion_run_id": None, "champion_accuracy": None,
                                    "accuracy": 0.62, "delta": None, "tolerance": 0.005, "forced": False,
                                    "reason": "no champion yet"})
    res = store.get_run("r1")["results"]["cnn"]
    assert res["variant"] == "cnn" and res["state"] == "success"
    assert res["model_path"] == "/m/cnn/model.keras" and res["weights"] == "none"
    assert (res["epochs_run"], res["best_epoch"], res["train_seconds"]) == (3, 3, 4.5)
    assert res["history"][0] == {"epoch": 1, "loss": 1.9, "accuracy": pytest.approx(0.59), "val_loss": 2.0,
                                 "val_accuracy": pytest.approx(0.57), "seconds": 1.5}
    assert res["accuracy"] == pytest.approx(0.62) and res["loss"] is None  # NaN is stored as missing
    assert res["top3_accuracy"] == pytest.approx(0.82) and res["macro_f1"] == pytest.approx(0.61)
    assert res["inference_img_per_s"] == 1234.5 and res["model_size_bytes"] == 4096
    assert (res["params_total"], res["params_trainable"]) == (1000, 800)
    assert res["per_class"][1] == {"class_name": "dog", "precision": 0.62, "recall": 0.62, "f1": 0.62, "support": 10}
    assert res["confusion_matrix"][0] == [10, 0, 0] and res["class_names"] == ["cat", "dog", "ship"]
    assert res["misclassified"] == [{"index": 3, "true": 0, "predicted": 1}]
    assert res["train_info"] == {"extra_key": {"lr": 0.001}} and res["eval_info"] == {"seconds": 3.0}
    gate = res["gate"]
    assert gate["decision"] == "bootstrap" and gate["tolerance"] == 0.005 and gate["forced"] is False
    assert gate["reason"] == "no champion yet" and gate["decided_at"].endswith("+00:00")
    json.dumps(store.get_run("r1"))


# --- queries ---------------------------------------------------------------------------------------------------

def test_previous_run_follows_logical_date_not_insertion_order(store):
    _record_run(store, "r3", T0 + timedelta(days=3), {"cnn": 0.7})
    _record_run(store, "r1", T0 + timedelta(days=1), {"cnn": 0.5})
    _record_run(store, "r2", T0 + timedelta(days=2), {"cnn": 0.6})
    store.upsert_run("r2b", logical_date=T0 + timedelta(days=2, hours=1))  # a run with no results is skipped
    assert store.previous_run("r3")["run_id"] == "r2"
    assert store.previous_run("r3")["results"]["cnn"]["accuracy"] == pytest.approx(0.6)
    assert store.previous_run("r2")["run_id"] == "r1"
    assert store.previous_run("r1") is None
    assert store.previous_run("unknown") is None


def test_runs_without_logical_date_order_by_start_time(store):
    store.upsert_run("cli-a", started_at=T0)
    store.record_evaluation("cli-a", "cnn", _evaluation("cnn", 0.5))
    store.upsert_run("cli-b", started_at=T0 + timedelta(minutes=5))
    store.record_evaluation("cli-b", "cnn", _evaluation("cnn", 0.55))
    assert store.previous_run("cli-b")["run_id"] == "cli-a"
    assert [p["run_id"] for p in store.trend("cnn")] == ["cli-a", "cli-b"]


def test_champion_is_the_latest_promoted_or_bootstrap_result(store):
    _record_run(store, "r1", T0, {"cnn": 0.50, "resnet50_v1": 0.70}, {"cnn": "bootstrap", "resnet50_v1": "bootstrap"})
    _record_run(store, "r2", T0 + timedelta(days=1), {"cnn": 0.60, "resnet50_v1": 0.60},
                {"cnn": "promoted", "resnet50_v1": "regressed"})
    _record_run(store, "r3", T0 + timedelta(days=2), {"cnn": 0.59, "resnet50_v1": 0.71},
                {"cnn": "kept", "resnet50_v1": "promoted"})
    champ = store.champion("cnn")
    assert champ["run_id"] == "r2" and champ["accuracy"] == pytest.approx(0.60)
    assert champ["gate"]["decision"] == "promoted" and champ["history"] and champ["logical_date"]
    assert store.champion("cnn", before_run_id="r2")["run_id"] == "r1"
    assert store.champion("cnn", before_run_id="r1") is None
    assert store.champion("resnet50_v1")["run_id"] == "r3"
    assert store.champion("resnet50_v1", before_run_id="r3")["run_id"] == "r1"
    assert store.champion("resnet50_v4") is None
    # a forced promotion makes the (worse) model champion
    _record_run(store, "r4", T0 + timedelta(days=3), {"cnn": 0.30})
    store.record_gate("r4", "cnn", {"decision": "promoted", "forced": True, "accuracy": 0.30, "delta": -0.3})
    assert store.champion("cnn")["run_id"] == "r4"


def test_trend_is_the_last_n_results_oldest_first(store):
    for i in range(8):
        accs = {"cnn": 0.5 + i / 100, "resnet50_v1": None if i == 5 else 0.6}
        _record_run(store, f"r{i}", T0 + timedelta(days=i), accs, {"cnn": "promoted"})
    points = store.trend("cnn", limit=5)
    assert [p["run_id"] for p in points] == ["r3", "r4", "r5", "r6", "r7"]
    assert [p["accuracy"] for p in points] == pytest.approx([0.53, 0.54, 0.55, 0.56, 0.57])
    assert set(points[0]) >= {"run_id", "logical_date", "accuracy", "state", "macro_f1", "decision"}
    assert points[0]["logical_date"] == (T0 + timedelta(days=3)).isoformat()
    assert points[0]["decision"] == "promoted"
    v1 = store.trend("resnet50_v1", limit=50)
    assert len(v1) == 8 and v1[5]["state"] == "failed" and v1[5]["accuracy"] is None
    assert [p["run_id"] for p in store.trend("cnn", limit=3, until_run_id="r4")] == ["r2", "r3", "r4"]
    assert store.trend("resnet50_v4") == []


def test_recent_runs_give_accuracy_and_change_from_the_previous_run(store):
    _record_run(store, "r1", T0, {"cnn": 0.50, "resnet50_v1": 0.70})
    _record_run(store, "r2", T0 + timedelta(days=1), {"cnn": 0.55, "resnet50_v1": None})
    _record_run(store, "r3", T0 + timedelta(days=2), {"cnn": 0.52, "resnet50_v1": 0.75})
    runs = store.recent_runs(limit=2)
    assert [r["run_id"] for r in runs] == ["r3", "r2"]
    r3, r2 = runs[0]["results"], runs[1]["results"]
    assert r3["cnn"]["accuracy"] == pytest.approx(0.52) and r3["cnn"]["delta"] == pytest.approx(-0.03)
    assert r2["cnn"]["previous_accuracy"] == pytest.approx(0.50)  # from r1, outside the window
    assert r2["resnet50_v1"] == {"state": "failed", "accuracy": None, "previous_accuracy": pytest.approx(0.70),
                                 "previous_run_id": "r1", "delta": None, "decision": None, "champion_delta": None,
                                 "p_value": None}
    assert r3["resnet50_v1"]["delta"] == pytest.approx(0.05)  # compared with r1: r2's run failed
    assert store.recent_runs(limit=10)[-1]["results"]["cnn"]["delta"] is None


def test_runs_command_table_and_json(db_url, monkeypatch):
    from tl_tasks.cli import runs_command

    monkeypatch.setenv("TL_METRICS_DB_URL", db_url)
    assert "no runs recorded yet" in runs_command(limit=5, as_json=False)
    with connect() as store:
        _record_run(store, "run-a", T0, {"cnn": 0.50, "resnet50_v1": 0.70})
        _record_run(store, "run-b", T0 + timedelta(days=1), {"cnn": 0.55, "resnet50_v1": None})
    table = runs_command(limit=5, as_json=False)
    lines = table.splitlines()
    assert lines[0].split() == ["run", "date", "profile", "state", "lineage", "cnn", "resnet50_v1"]
    assert lines[2].startswith("run-b") and "0.5500 (+0.0500)" in lines[2] and "failed" in lines[2]
    assert lines[3].startswith("run-a") and "2026-01-01 12:00" in lines[3] and "0.7000" in lines[3]
    data = json.loads(runs_command(limit=1, as_json=True))
    assert [r["run_id"] for r in data["runs"]] == ["run-b"]
    assert data["runs"][0]["results"]["cnn"]["delta"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="--limit"):
        runs_command(limit=0, as_json=False)


def test_migration_0002_keeps_every_row_and_gives_old_runs_a_legacy_lineage(db_url):
    """A database written before lineages (schema 0001) upgrades with all its rows; runs with a data
    fingerprint get a lineage of their own ("legacy-..."), so they are never compared with new runs."""
    from alembic import command

    from tl_tasks.store.db import alembic_config, create_store_engine

    engine = create_store_engine(db_url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(engine, conn), "0001")
        now = "2026-01-01 12:00:00"
        with engine.begin() as conn:
            for i, fp in enumerate(("f" * 64, None)):
                conn.execute(sa.text("INSERT INTO runs (run_id, data_fingerprint, created_at, updated_at, sort_time) "
                                     "VALUES (:r, :fp, :t, :t, :t)"), {"r": f"old{i}", "fp": fp, "t": now})
            pk = conn.execute(sa.text("SELECT id FROM runs WHERE run_id = 'old0'")).scalar_one()
            conn.execute(sa.text("INSERT INTO results (run_pk, variant, state, accuracy, created_at, updated_at) "
                                 "VALUES (:pk, 'cnn', 'success', 0.61, :t, :t)"), {"pk": pk, "t": now})
            rid = conn.execute(sa.text("SELECT id FROM results")).scalar_one()
            conn.execute(sa.text("INSERT INTO gate_decisions (result_id, decision, forced, decided_at) "
                                 "VALUES (:rid, 'bootstrap', false, :t)"), {"rid": rid, "t": now})
    finally:
        engine.dispose()
    with connect(db_url) as store:  # migrates to head on first use
        assert store.schema_revision() == SCHEMA_REVISION
        old = store.get_run("old0")
        assert old["lineage"] == "legacy-" + "f" * 16 and old["results"]["cnn"]["accuracy"] == pytest.approx(0.61)
        assert old["results"]["cnn"]["gate"]["decision"] == "bootstrap"
        assert store.get_run("old1")["lineage"] is None
        assert store.champion("cnn", lineage="legacy-" + "f" * 16)["run_id"] == "old0"
        _record_run(store, "new", T0 + timedelta(days=400), {"cnn": 0.7}, lineage="n" * 64)
        assert store.champion("cnn", before_run_id="new") is None  # the legacy champion is another lineage


def test_lineages_are_never_compared(store):
    """Runs on another test set (lineage) neither change a lineage's champion nor its deltas."""
    _record_run(store, "a1", T0, {"cnn": 0.67}, {"cnn": "bootstrap"}, lineage="A")
    _record_run(store, "b1", T0 + timedelta(days=1), {"cnn": 0.15}, {"cnn": "bootstrap"}, lineage="B")
    _record_run(store, "a2", T0 + timedelta(days=2), {"cnn": 0.60}, {"cnn": "kept"}, lineage="A")
    assert store.champion("cnn", before_run_id="a2")["run_id"] == "a1"
    assert store.champion("cnn", lineage="B")["run_id"] == "b1"
    assert store.champion("cnn", before_run_id="b1") is None  # nothing earlier in lineage B
    runs = {r["run_id"]: r for r in store.recent_runs(limit=10)}
    assert runs["a2"]["results"]["cnn"]["previous_run_id"] == "a1"
    assert runs["a2"]["results"]["cnn"]["delta"] == pytest.approx(-0.07)
    assert runs["b1"]["results"]["cnn"]["delta"] is None and runs["b1"]["lineage"] == "B"
    assert [p["run_id"] for p in store.trend("cnn", lineage="A")] == ["a1", "a2"]
    assert store.previous_run("a2", same_lineage=True)["run_id"] == "a1"
    assert store.previous_run("a2")["run_id"] == "b1"
    assert store.lineage_size("A") == 2 and store.lineage_size("A", until_run_id="a1") == 1
    # a run of unknown lineage (prepare failed) has no champion to compare with
    store.upsert_run("x", logical_date=T0 + timedelta(days=3))
    assert store.champion("cnn", before_run_id="x") is None


def test_trend_summary_of_older_history_is_bounded_and_per_lineage(store):
    for i in range(6):
        _record_run(store, f"t{i}", T0 + timedelta(days=i), {"cnn": 0.50 + i / 100})
    _record_run(store, "other", T0 + timedelta(days=10), {"cnn": 0.99}, lineage="B")
    s = store.trend_summary("cnn", "L1", "t5", skip=2)  # t4, t5 are drawn; t0..t3 summarised
    assert s["runs"] == 4 and s["min"] == pytest.approx(0.50) and s["max"] == pytest.approx(0.53)
    assert s["mean"] == pytest.approx(0.515) and s["first"].startswith("2026-01-01")
    assert store.trend_summary("cnn", "L1", "t5", skip=2, limit=3)["runs"] == 3
    assert store.trend_summary("cnn", "L1", "t1", skip=2) is None


def test_champion_is_only_a_successful_result(store):
    _record_run(store, "r1", T0, {"cnn": 0.60}, {"cnn": "bootstrap"})
    _record_run(store, "r2", T0 + timedelta(days=1), {"cnn": 0.70}, {"cnn": "promoted"})
    store.record_failure("r2", "cnn", "evaluate", "retried later and failed")  # promoted, then failed
    assert store.champion("cnn")["run_id"] == "r1"
    assert [h["run_id"] for h in store.champion_history("cnn")] == ["r1"]


def test_delete_run_removes_its_rows(store):
    _record_run(store, "r1", T0, {"cnn": 0.5}, {"cnn": "bootstrap"})
    _record_run(store, "r2", T0 + timedelta(days=1), {"cnn": 0.6})
    assert store.delete_run("r1") is True and store.delete_run("r1") is False
    assert store.get_run("r1") is None and store.get_run("r2") is not None
    assert _count(store, "results") == 1 and _count(store, "gate_decisions") == 0
    assert _count(store, "epoch_metrics") == 3


# --- concurrency -------------------------------------------------------------------------------------------------

def _concurrent_writer(url: str, variant: str, barrier, errors) -> None:
    """One parallel training task: connect (migrating a fresh database), write its variant three times."""
    try:
        barrier.wait(timeout=120)
        with connect(url) as store:
            for attempt in range(3):
                acc = 0.1 + attempt / 10
                store.record_training("run-1", variant, _train_summary(variant, acc, epochs=5))
                store.record_evaluation("run-1", variant, _evaluation(variant, acc))
                store.upsert_run("run-1", state="running", dag_id="cifar10_retraining")
    except BaseException:
        errors.put(f"{variant}: {traceback.format_exc()}")
        raise


@pytest.mark.slow
def test_sixteen_processes_write_one_run_at_the_same_moment(db_url):
    """16 spawned processes start behind a barrier on an EMPTY database (so they also race the migration)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(N_WRITERS), ctx.Queue()
    variants = [f"variant_{i:02d}" for i in range(N_WRITERS)]
    procs = [ctx.Process(target=_concurrent_writer, args=(db_url, v, barrier, errors)) for v in variants]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, "\n".join(found)
    assert [p.exitcode for p in procs] == [0] * N_WRITERS
    with connect(db_url) as store:
        run = store.get_run("run-1")
        assert sorted(run["results"]) == variants
        for res in run["results"].values():
            assert res["accuracy"] == pytest.approx(0.3)
            assert len(res["history"]) == 5 and len(res["per_class"]) == 3
        assert _count(store, "runs") == 1
        assert _count(store, "results") == N_WRITERS
        assert _count(store, "epoch_metrics") == 5 * N_WRITERS
        assert store.schema_revision() == head_revision()


def test_importing_the_store_loads_no_ml_framework():
    code = ("import sys, tl_tasks.store, tl_tasks.cli, tl_tasks.store.queries; "
            "bad = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


def test_sqlite_writers_wait_instead_of_failing_while_another_holds_the_lock(tmp_path):
    """A writer that holds the SQLite write lock for a while delays, but does not fail, a store write."""
    import threading
    import time

    url = f"sqlite:///{tmp_path / 'm.db'}"
    with connect(url) as store:
        store.upsert_run("r1")
        raw = sqlite3.connect(tmp_path / "m.db", isolation_level=None, check_same_thread=False)
        raw.execute("BEGIN IMMEDIATE")
        threading.Timer(1.0, lambda: raw.execute("COMMIT")).start()
        t = time.monotonic()
        store.record_training("r1", "cnn", _train_summary("cnn"))
        assert time.monotonic() - t >= 0.5
        raw.close()
        assert store.get_result("r1", "cnn")["state"] == "success"
