"""The metrics store's read queries with 10,000 runs x 5 variants x 25 epochs stored (goal: < 50 ms each).

    python -m bench.bench_store [--mode tiny|quick|full]   (50 / 1,000 / 10,000 runs)

Bulk-loads a throwaway SQLite file and, in full mode when PostgreSQL answers, a throwaway PostgreSQL database
(core executemany inserts, not the ORM), then times through the public `MetricsStore` API, each a median of
several calls: `trend(variant, 50)`, `get_run(run_id)` (a run with all its results: history, per-class,
confusion, gate), plus `previous_run`, `champion`, `recent_runs(20)` and one write (`record_training` +
`record_evaluation`). PostgreSQL: TL_TEST_PG_ADMIN_URL or postgres@127.0.0.1:5432.
"""
from __future__ import annotations

import os
import random
import socket
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import common
from tl_tasks.config import DAG_ID
from tl_tasks.data import CIFAR10_CLASSES as CLASSES
from tl_tasks.demo import LINEAGE  # one test set throughout: the history every query compares
from tl_tasks.variants import VARIANT_NAMES as VARIANTS

GOAL_MS = 50.0
PG_ADMIN_URL = os.environ.get("TL_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
T0 = datetime(2020, 1, 1, tzinfo=UTC)
CHUNK = 20_000
SIZES = {"tiny": (50, 3), "quick": (1000, 15), "full": (10_000, 15)}  # runs, calls timed per query
EPOCHS = 25


def run(mode: str) -> dict:
    begun = common.begin()
    n_runs, repeat = SIZES[common.check_mode(mode)]
    backends = ["sqlite"] + (["postgresql"] if mode == "full" and _postgres_answers() else [])
    results: dict = {"goal_ms": GOAL_MS, "statistic": "median ms per call (p90 alongside)", "backends": {}}
    for backend in backends:
        with _database(backend) as url:
            results["backends"][backend] = _bench(url, n_runs, EPOCHS, repeat)
    results["meets_goal"] = all(b["meets_goal"] for b in results["backends"].values())
    parameters = {"runs": n_runs, "variants": len(VARIANTS), "epochs": EPOCHS, "classes": len(CLASSES),
                  "repeat": repeat, "backends": backends}
    return common.record("store", mode, begun, parameters, results,
                         [f"goal: every read query under {GOAL_MS:g} ms (median) with {n_runs:,} runs stored"],
                         common.machine(probe_backend=False))


def _postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


class _database:
    """A throwaway database URL for `backend`, removed afterwards."""

    def __init__(self, backend: str):
        self.backend = backend

    def __enter__(self) -> str:
        if self.backend == "sqlite":
            self.tmp = tempfile.TemporaryDirectory(prefix="bench_store_")
            return f"sqlite:///{Path(self.tmp.name) / 'metrics.db'}"
        if self.backend != "postgresql":
            raise SystemExit(f"--backends: unknown backend {self.backend!r}; use sqlite and/or postgresql")
        import sqlalchemy as sa

        self.name = f"tl_bench_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.name}"

    def __exit__(self, *exc) -> None:
        if self.backend == "sqlite":
            self.tmp.cleanup()
            return
        import sqlalchemy as sa

        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def _bench(url: str, n_runs: int, n_epochs: int, repeat: int) -> dict:
    from tl_tasks.store import connect

    store = connect(url)
    t = time.perf_counter()
    rows = _seed(store, n_runs, n_epochs)
    seed_s = time.perf_counter() - t
    newest, middle = f"run_{n_runs - 1:06d}", f"run_{n_runs // 2:06d}"
    rng = random.Random(0)
    assert len(store.get_run(newest)["results"]) == len(VARIANTS)
    assert len(store.get_run(newest)["results"]["cnn"]["history"]) == n_epochs
    assert len(store.trend("resnet50_v3", limit=50)) == min(50, n_runs)

    timings = {
        "trend_50": _time(lambda: store.trend("resnet50_v3", limit=50), repeat),
        "trend_500": _time(lambda: store.trend("resnet50_v3", limit=500), repeat),
        "trend_50_until_middle": _time(lambda: store.trend("resnet50_v3", limit=50, until_run_id=middle), repeat),
        # worst case: a variant with no results walks every run
        "trend_50_absent_variant": _time(lambda: store.trend("resnet50_v9", limit=50), repeat),
        "get_run_newest": _time(lambda: store.get_run(newest), repeat),
        "get_run_random": _time(lambda: store.get_run(f"run_{rng.randrange(n_runs):06d}"), repeat),
        "previous_run": _time(lambda: store.previous_run(newest), repeat),
        "champion": _time(lambda: store.champion("cnn", before_run_id=newest), repeat),
        "recent_runs_20": _time(lambda: store.recent_runs(20), repeat),
    }
    counter = iter(range(10**9))

    def _write():
        run_id = f"bench_write_{next(counter)}"
        store.record_training(run_id, "cnn", _summary(n_epochs))
        store.record_evaluation(run_id, "cnn", _evaluation(0.7))

    timings["write_train_and_eval"] = _time(_write, repeat)
    store.close()
    goal_keys = ("trend_50", "get_run_newest", "get_run_random")
    return {
        "dialect": url.split(":", 1)[0],
        "seed_seconds": round(seed_s, 1),
        "rows": rows,
        "ms": timings,
        "meets_goal": all(timings[k]["median"] < GOAL_MS for k in goal_keys),
        "goal_applies_to": list(goal_keys),
    }


def _time(fn, repeat: int) -> dict:
    fn()  # warm: statement caches, pool
    samples = []
    for _ in range(max(repeat, 1)):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return {"median": round(statistics.median(samples), 2),
            "p90": round(samples[min(len(samples) - 1, int(0.9 * len(samples)))], 2),
            "min": round(samples[0], 2)}


def _seed(store, n_runs: int, n_epochs: int, children: bool = True) -> dict:
    """Bulk insert with explicit keys: runs, results (5 per run), epochs, per-class, confusion, gate rows
    (`children=False`: runs, results and gate rows only, for very long histories)."""
    import sqlalchemy as sa

    from tl_tasks.gating.decision import Decision
    from tl_tasks.store import rows
    from tl_tasks.store.db import write_transaction

    rng = random.Random(42)
    now = datetime.now(UTC)
    counts = dict.fromkeys(("runs", "results", "epoch_metrics", "class_metrics", "confusion_matrices",
                            "gate_decisions"), 0)
    buffers: dict[str, list] = {k: [] for k in counts}
    tables = {"runs": rows.runs_t, "results": rows.results_t, "epoch_metrics": rows.epochs_t,
              "class_metrics": rows.classes_t, "confusion_matrices": rows.confusion_t,
              "gate_decisions": rows.gates_t}

    def flush(conn, force=False):
        if not force and max(len(b) for b in buffers.values()) < CHUNK:
            return
        for name in counts:  # all tables, parents first (foreign keys are checked at once)
            if buffers[name]:
                conn.execute(tables[name].insert(), buffers[name])
                counts[name] += len(buffers[name])
                buffers[name] = []

    matrix = [[90 if i == j else 1 for j in range(len(CLASSES))] for i in range(len(CLASSES))]
    champion_acc = dict.fromkeys(VARIANTS, 0.0)
    with write_transaction(store.engine) as conn:
        result_id = 0
        for r in range(n_runs):
            when = T0 + timedelta(hours=6 * r)
            run_pk = r + 1
            buffers["runs"].append({
                "id": run_pk, "run_id": f"run_{r:06d}", "dag_id": DAG_ID, "logical_date": when,
                "started_at": when, "ended_at": when + timedelta(hours=1), "state": "success", "profile": "full",
                "params": {"epochs": n_epochs, "batch_size": 64}, "data_source": "cifar10",
                "data_fingerprint": f"{r:064x}", "data_summary": None, "class_names": list(CLASSES), "seed": 42,
                "versions": {"keras": "3.x", "python": "3.11"}, "device": "gpu", "report_path": None, "error": None,
                "created_at": now, "updated_at": now, "sort_time": when,
                "lineage": LINEAGE,  # one test set throughout: history that trend/champion/deltas all compare
            })
            for v in VARIANTS:
                result_id += 1
                acc = min(0.99, 0.5 + 0.4 * r / n_runs + rng.uniform(-0.02, 0.02))
                buffers["results"].append({
                    "id": result_id, "run_pk": run_pk, "variant": v, "state": "success", "stage": None, "error": None,
                    "weights": "imagenet", "model_path": f"/runs/run_{r:06d}/models/{v}/model.keras",
                    "epochs_run": n_epochs, "best_epoch": n_epochs, "resumed_from_epoch": None,
                    "train_seconds": 600.0, "train_info": None, "trained_at": when, "accuracy": acc,
                    "loss": 1 - acc, "top3_accuracy": min(1.0, acc + 0.1), "macro_f1": acc - 0.01,
                    "inference_img_per_s": 2000.0, "model_size_bytes": 100_000_000, "class_names": list(CLASSES),
                    "misclassified": [{"index": i, "true": i % 10, "predicted": (i + 1) % 10} for i in range(5)],
                    "eval_info": None, "evaluated_at": when, "params_total": 23_800_000,
                    "params_trainable": 23_700_000, "failed_at": None, "created_at": now, "updated_at": now,
                })
                if children:
                    buffers["epoch_metrics"].extend(
                        {"result_id": result_id, "epoch": e, "loss": 1.0 / e, "accuracy": acc * e / n_epochs,
                         "val_loss": 1.1 / e, "val_accuracy": acc * e / n_epochs, "seconds": 24.0}
                        for e in range(1, n_epochs + 1))
                    buffers["class_metrics"].extend(
                        {"result_id": result_id, "class_index": i, "class_name": c, "precision": acc,
                         "recall": acc, "f1": acc, "support": 1000} for i, c in enumerate(CLASSES))
                    buffers["confusion_matrices"].append(
                        {"result_id": result_id, "class_names": list(CLASSES), "matrix": matrix})
                promoted = acc > champion_acc[v]
                champion_acc[v] = max(acc, champion_acc[v])
                buffers["gate_decisions"].append({
                    "result_id": result_id, "decision": Decision.PROMOTED if promoted else Decision.KEPT,
                    "champion_run_id": None, "champion_accuracy": None, "accuracy": acc, "delta": None,
                    "tolerance": 0.005, "forced": False, "details": None, "decided_at": when,
                })
            flush(conn)
        flush(conn, force=True)
        if conn.dialect.name == "postgresql":  # explicit ids were inserted: move the sequences past them
            for table in ("runs", "results"):
                conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                     f"(SELECT max(id) FROM {table}))"))
    if store.dialect == "postgresql":  # what autovacuum does after a bulk load
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    return counts


def _summary(n_epochs: int) -> dict:
    return {"variant": "cnn", "state": "success", "model_path": "/m/model.keras", "weights": "none",
            "epochs_run": n_epochs, "best_epoch": n_epochs, "train_seconds": 60.0,
            "history": [{"epoch": e, "loss": 1 / e, "accuracy": 0.5, "val_loss": 1 / e, "val_accuracy": 0.5,
                         "seconds": 2.0} for e in range(1, n_epochs + 1)],
            "params_total": 1000, "params_trainable": 1000}


def _evaluation(acc: float) -> dict:
    return {"variant": "cnn", "accuracy": acc, "loss": 1 - acc, "top3_accuracy": acc, "macro_f1": acc,
            "per_class": [{"class_name": c, "precision": acc, "recall": acc, "f1": acc, "support": 1000}
                          for c in CLASSES],
            "confusion_matrix": [[0] * len(CLASSES) for _ in CLASSES], "misclassified": [],
            "inference_img_per_s": 1000.0, "params_total": 1000, "params_trainable": 1000,
            "model_size_bytes": 1000, "class_names": list(CLASSES)}


if __name__ == "__main__":
    raise SystemExit(common.cli("store", run))
