"""`python -m tl_tasks gc --keep N`: thins old runs, never deletes a champion or what history needs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tl_tasks import demo as rf
from tl_tasks.errors import BadInput
from tl_tasks.gc import collect_garbage
from tl_tasks.layout import RunLayout
from tl_tasks.store import connect

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("cnn", "resnet50_v1")


def _files_of(run_id: str, variants=VARIANTS) -> dict[str, Path]:
    """The heavy and the small files a real run leaves, written for a seeded fake run."""
    run = RunLayout(run_id).folder
    files = {"x_train": run / "data" / "x_train.npy", "meta": run / "data" / "meta.json",
             "settings": run / "settings.json", "report": run / "report" / "index.html"}
    for v in variants:
        files[f"{v}/model"] = run / "models" / v / "model.keras"
        files[f"{v}/predictions"] = run / "models" / v / "predictions.npy"
        files[f"{v}/summary"] = run / "models" / v / "train_summary.json"
        files[f"{v}/ckpt"] = run / "models" / v / "checkpoints" / "epoch_001.keras"
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(os.urandom(4096 if name.endswith(("model", "x_train", "ckpt")) else 64))
    return files


@pytest.fixture
def history(tl_home):
    """Five ended runs, oldest first: run 0 promotes (bootstrap) both variants, later runs are kept or regress,
    run 3 promotes cnn; run 4 has a failed variant. Plus a champion published under $TL_HOME/champions/."""
    store = connect()
    accuracies = [{"cnn": 0.60, "resnet50_v1": 0.80}, {"cnn": 0.55, "resnet50_v1": 0.70},
                  {"cnn": 0.58, "resnet50_v1": 0.79}, {"cnn": 0.70, "resnet50_v1": 0.78}, {"cnn": 0.65}]
    ids, files = [], {}
    for i, acc in enumerate(accuracies):
        run_id = f"scheduled__2026-0{i + 1}-01T00:00:00+00:00"
        failed = {"resnet50_v1": ("train", "RuntimeError: boom")} if i == 4 else None
        rf.seed_run(store, run_id, rf.run_date(i), variants=VARIANTS, accuracies=acc, failed=failed, detail=True,
                    write_data=False, seed=i)
        ids.append(run_id)
        files[run_id] = _files_of(run_id)
    store.close()
    champ = tl_home / "champions" / "cnn"
    (champ / "history").mkdir(parents=True)
    (champ / "model.keras").write_bytes(b"champion model")
    (champ / "champion.json").write_text(json.dumps({"run_id": ids[3], "variant": "cnn"}))
    (champ / "history" / "0001.keras").write_bytes(b"old champion")
    (champ / "history" / "0001.json").write_text(json.dumps({"run_id": ids[0]}))
    cache = tl_home / "cache"
    for name, age_days in (("folder-old", 90), ("folder-new", 1)):
        (cache / name).mkdir(parents=True)
        (cache / name / "x_train.npy").write_bytes(b"x" * 1000)
        (cache / name / "meta.json").write_text("{}")
        stamp = time.time() - age_days * 86400
        os.utime(cache / name / "meta.json", (stamp, stamp))
    return ids, files, champ


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_champions_are_never_deleted_and_old_runs_are_thinned(history, tl_home):
    ids, files, champ = history
    before = _snapshot(champ)
    with connect() as store:
        decisions = {r: {v: (res or {}).get("decision") for v, res in store.get_run(r)["results"].items()}
                     for r in ids}
    plan = collect_garbage(2)
    assert _snapshot(champ) == before, "gc touched $TL_HOME/champions"
    assert plan.kept_runs == ids[:-3:-1] and set(plan.thinned_runs) == set(ids[:3])
    for run_id in ids[:3]:
        f = files[run_id]
        assert not f["x_train"].exists() and not f["cnn/ckpt"].exists()
        for keep in ("meta", "settings", "report", "cnn/predictions", "cnn/summary", "resnet50_v1/predictions"):
            assert f[keep].exists(), (run_id, keep)
        for v in VARIANTS:   # a run that is or was a champion keeps its model
            was_champion = decisions[run_id][v] in ("promoted", "bootstrap") or run_id in (ids[0], ids[3])
            assert f[f"{v}/model"].exists() == (was_champion or any(
                d in ("promoted", "bootstrap") for d in decisions[run_id].values())), (run_id, v)
    assert files[ids[0]]["cnn/model"].exists()          # bootstrap + named in champions/history
    assert not files[ids[1]]["cnn/model"].exists()      # neither promoted nor referenced
    for run_id in ids[3:]:                             # the newest two: whole, except a failed variant's checkpoints
        assert files[run_id]["x_train"].exists() and files[run_id]["cnn/model"].exists()
    assert not files[ids[4]]["resnet50_v1/ckpt"].exists() and files[ids[4]]["cnn/ckpt"].exists()
    assert not (tl_home / "cache" / "folder-old").exists() and (tl_home / "cache" / "folder-new").exists()
    with connect() as store:                           # every database row is still there
        assert [r["run_id"] for r in store.recent_runs(100)] == ids[::-1]
    assert plan.freed_bytes > 0


def test_dry_run_removes_nothing_and_the_cli_prints_what_it_frees(history, tl_home):
    ids, files, _ = history
    before = _snapshot(tl_home)
    out = subprocess.run([sys.executable, "-m", "tl_tasks", "gc", "--keep", "2", "--dry-run"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("[dry run] would free ") and "would remove" in out.stdout
    assert str(files[ids[1]]["x_train"]) in out.stdout and "champions" not in out.stdout.replace(
        "champion run", "")
    assert _snapshot(tl_home) == before
    real = subprocess.run([sys.executable, "-m", "tl_tasks", "gc", "--keep", "2"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert real.returncode == 0 and real.stdout.startswith("freed ")
    assert not files[ids[1]]["x_train"].exists()


def test_airflow_logs_of_thinned_runs_go(history, tmp_path):
    ids, _, _ = history
    logs = tmp_path / "logs"
    for run_id in ids:
        (logs / "dag_id=cifar10_retraining" / f"run_id={run_id}" / "task_id=train").mkdir(parents=True)
        (logs / "dag_id=cifar10_retraining" / f"run_id={run_id}" / "task_id=train" / "attempt=1.log").write_text("x")
    collect_garbage(2, airflow_logs=logs)
    left = sorted(p.name for p in (logs / "dag_id=cifar10_retraining").iterdir())
    assert left == sorted(f"run_id={r}" for r in ids[3:])


def test_keep_must_be_positive():
    with pytest.raises(BadInput, match="keep=0"):
        collect_garbage(0)


def test_the_maintenance_dag_runs_gc_on_a_schedule(tmp_path, history, tl_home):
    """The DAG file parses, schedules gc, and its task (run as a plain function) thins the same way."""
    code = ("import json, sys; from airflow.dag_processing.dagbag import DagBag; "
            "bag = DagBag(dag_folder=sys.argv[1]); d = bag.dags['tl_maintenance']; "
            "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'schedule': d.schedule, "
            "'tasks': d.task_ids}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False", TL_GC_KEEP="2")
    out = subprocess.run([sys.executable, "-c", code, str(PROJECT_ROOT / "dags")], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {} and parsed["schedule"] == "@daily" and parsed["tasks"] == ["collect_garbage"]
