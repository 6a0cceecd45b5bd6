"""`python -m tl_tasks gc --keep N`: thins old runs, never deletes a champion or what history needs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tl_tasks import config
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


LABELS = ("run0", "run1", "run2", "run3", "run4", "run5")   # oldest first
# The gate's decisions, as each run's results hold them (res["gate"]["decision"]).
DECISIONS = {"run0": {"cnn": "bootstrap", "resnet50_v1": "bootstrap"},
             "run1": {"cnn": "kept", "resnet50_v1": "kept"},
             "run2": {"cnn": "promoted", "resnet50_v1": "regressed"},   # a champion once; its version was pruned
             "run3": {"cnn": "kept", "resnet50_v1": "kept"},            # kept, yet published under champions/
             "run4": {"cnn": "kept", "resnet50_v1": "kept"},
             "run5": {"cnn": "kept", "resnet50_v1": "failed"}}


@pytest.fixture
def history(tl_home):
    """Six ended runs (LABELS, oldest first) with the gate decisions in DECISIONS, and champions published the
    real way (champions.publish + make_current: `<variant>/<lineage>/versions/<run>/` and `current`):
    run0's cnn and resnet50_v1 (current), run2's cnn (published, then its version removed by hand and
    `current` pointed back at run0: the database alone remembers it), run3's resnet50_v1 (named under
    champions/ although its stored decision says kept)."""
    from tl_tasks.gating import champions

    store = connect()
    ids, files = {}, {}
    for i, label in enumerate(LABELS):
        run_id = f"scheduled__2026-0{i + 1}-01T00:00:00+00:00"
        failed = {"resnet50_v1": ("train", "RuntimeError: boom")} if label == "run5" else None
        rf.seed_run(store, run_id, rf.run_date(i), variants=VARIANTS, accuracies={"cnn": 0.6, "resnet50_v1": 0.7},
                    failed=failed, detail=True, write_data=False, seed=i)
        for variant, decision in DECISIONS[label].items():
            store.record_gate(run_id, variant, {"decision": decision, "accuracy": None if decision == "failed"
                                                else 0.6})
        ids[label] = run_id
        files[label] = _files_of(run_id)

    def publish(label, variant):
        run = store.get_run(ids[label])
        result = {**run["results"][variant], "variant": variant}
        return champions.make_current(champions.publish(run, result, result["gate"]))

    publish("run0", "cnn")
    publish("run2", "cnn")
    pruned = champions.lineage_dir("cnn", rf.seed_run.__kwdefaults__["lineage"]) / "versions" / config.run_key(
        ids["run2"])
    shutil.rmtree(pruned.resolve())
    pruned.unlink()
    champions.make_current(pruned.with_name(config.run_key(ids["run0"])))
    publish("run0", "resnet50_v1")
    publish("run3", "resnet50_v1")
    store.close()
    cache = tl_home / "cache"
    for name, age_days in (("folder-old", 90), ("folder-new", 1)):
        (cache / name).mkdir(parents=True)
        (cache / name / "x_train.npy").write_bytes(b"x" * 1000)
        (cache / name / "meta.json").write_text("{}")
        stamp = time.time() - age_days * 86400
        os.utime(cache / name / "meta.json", (stamp, stamp))
    return ids, files, tl_home / "champions"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_files(tl_home: Path, ids: dict) -> set[str]:
    """Every file under runs/, named `<label>/<path in the run folder>` (the data folder's version hidden)."""
    names = {config.run_key(run_id): label for label, run_id in ids.items()}
    out = set()
    for path in (tl_home / "runs").rglob("*"):
        if path.is_file() and not path.is_symlink():
            key, *rest = path.relative_to(tl_home / "runs").parts
            out.add("/".join([names[key], *rest]))
    return out


# What gc --keep 2 removes, written out: data arrays and checkpoints of the four older runs, the models of the
# older runs that were never a champion (run1 only: run0 and run2 by their decisions, run3 by champions/), and
# the checkpoints of run5's failed variant. Nothing else.
REMOVED = {f"{label}/{path}" for label in ("run0", "run1", "run2", "run3")
           for path in ("data/x_train.npy", "models/cnn/checkpoints/epoch_001.keras",
                        "models/resnet50_v1/checkpoints/epoch_001.keras")} | {
    "run1/models/cnn/model.keras", "run1/models/resnet50_v1/model.keras",
    "run5/models/resnet50_v1/checkpoints/epoch_001.keras"}
KEPT_MODELS = {f"{label}/models/{v}/model.keras" for label in ("run0", "run2", "run3", "run4", "run5")
               for v in VARIANTS}


def test_champions_are_never_deleted_and_old_runs_are_thinned(history, tl_home):
    ids, _, champions_dir = history
    with connect() as store:   # the fixture's decisions, read back the way get_run returns them
        stored = {label: {v: res["gate"]["decision"] for v, res in store.get_run(run_id)["results"].items()}
                  for label, run_id in ids.items()}
    assert stored == DECISIONS
    named = {json.loads(p.read_text())["run_id"] for p in champions_dir.rglob("champion.json")}
    assert named == {ids["run0"], ids["run3"]}, "run2 must be a champion the champions/ folder no longer names"
    before_champions, before_runs = _snapshot(champions_dir), _run_files(tl_home, ids)
    assert before_runs >= REMOVED | KEPT_MODELS

    plan = collect_garbage(2)

    assert _snapshot(champions_dir) == before_champions, "gc touched $TL_HOME/champions"
    assert plan.kept_runs == [ids["run5"], ids["run4"]]
    assert set(plan.thinned_runs) == {ids[label] for label in ("run0", "run1", "run2", "run3")}
    assert set(plan.champion_runs) == {ids["run0"], ids["run2"], ids["run3"]}
    after = _run_files(tl_home, ids)
    assert before_runs - after == REMOVED
    assert after >= KEPT_MODELS
    assert not (tl_home / "cache" / "folder-old").exists() and (tl_home / "cache" / "folder-new").exists()
    with connect() as store:                           # every database row is still there
        assert [r["run_id"] for r in store.recent_runs(100)] == list(ids.values())[::-1]
    assert plan.freed_bytes > 0


@pytest.mark.slow
def test_dry_run_removes_nothing_and_the_cli_prints_what_it_frees(history, tl_home):
    _, files, _ = history
    before = _snapshot(tl_home)
    out = subprocess.run([sys.executable, "-m", "tl_tasks", "gc", "--keep", "2", "--dry-run"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("[dry run] would free ") and "would remove" in out.stdout
    assert str(files["run1"]["x_train"]) in out.stdout and "champions" not in out.stdout.replace(
        "champion run", "")
    assert _snapshot(tl_home) == before
    real = subprocess.run([sys.executable, "-m", "tl_tasks", "gc", "--keep", "2"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert real.returncode == 0 and real.stdout.startswith("freed ")
    assert not files["run1"]["x_train"].exists()


def _airflow_logs(folder: Path, ids: dict) -> Path:
    for run_id in ids.values():
        (folder / "dag_id=cifar10_retraining" / f"run_id={run_id}" / "task_id=train").mkdir(parents=True)
        (folder / "dag_id=cifar10_retraining" / f"run_id={run_id}" / "task_id=train" / "attempt=1.log").write_text("x")
    return folder


def test_airflow_logs_of_thinned_runs_go(history, tmp_path):
    ids, _, _ = history
    logs = _airflow_logs(tmp_path / "logs", ids)
    collect_garbage(2, airflow_logs=logs)
    left = sorted(p.name for p in (logs / "dag_id=cifar10_retraining").iterdir())
    assert left == sorted(f"run_id={ids[label]}" for label in ("run4", "run5"))


def test_keep_must_be_positive():
    with pytest.raises(BadInput, match="keep=0"):
        collect_garbage(0)


@pytest.mark.slow
def test_the_maintenance_dag_runs_gc_on_a_schedule(tmp_path, history, tl_home):
    """The DAG file parses with no import errors and schedules gc daily; its task, run as Airflow calls it
    (the operator's python_callable) with TL_GC_KEEP=2, thins exactly what collect_garbage(2) does and removes
    the thinned runs' Airflow logs under $AIRFLOW_HOME/logs."""
    ids, _, champions_dir = history
    airflow_home = tmp_path / "airflow"
    _airflow_logs(airflow_home / "logs", ids)
    before_champions, before_runs = _snapshot(champions_dir), _run_files(tl_home, ids)
    code = ("import json, sys; from airflow.dag_processing.dagbag import DagBag; "
            "bag = DagBag(dag_folder=sys.argv[1]); d = bag.dags['tl_maintenance']; "
            "out = d.get_task('collect_garbage').python_callable(); "
            "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'schedule': d.schedule, "
            "'tasks': d.task_ids, 'out': out}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(airflow_home), AIRFLOW__CORE__LOAD_EXAMPLES="False", TL_GC_KEEP="2")
    proc = subprocess.run([sys.executable, "-c", code, str(PROJECT_ROOT / "dags" / "tl_maintenance.py")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {} and parsed["schedule"] == "@daily" and parsed["tasks"] == ["collect_garbage"]
    assert set(parsed["out"]["thinned_runs"]) == {ids[label] for label in ("run0", "run1", "run2", "run3")}
    assert before_runs - _run_files(tl_home, ids) == REMOVED
    assert _snapshot(champions_dir) == before_champions
    left = sorted(p.name for p in (airflow_home / "logs" / "dag_id=cifar10_retraining").iterdir())
    assert left == sorted(f"run_id={ids[label]}" for label in ("run4", "run5"))
    logs_removed = 4
    assert parsed["out"]["removed"] == len(REMOVED) + logs_removed + 1   # + the old decode-cache entry


def test_compiled_programs_unused_for_cache_days_go(tl_home, monkeypatch):
    monkeypatch.delenv("TL_JAX_COMPILATION_CACHE")  # the default: under TL_HOME
    folder = tl_home / "compiled" / "jax"
    folder.mkdir(parents=True)
    key = "0123456789abcdef" * 4   # JAX names a program <name>-<sha256 of its key>-cache
    names = {"old": f"jit_step-{key}-cache", "old_atime": f"jit_step-{key}-atime",
             "new": f"jit_new-{key}-cache", "read": f"jit_read-{key}-cache", "other": "notes-cache"}
    for label, name in names.items():
        (folder / name).write_bytes(b"p" * 100)
        stamp = time.time() - (1 if label == "new" else 40) * 86400
        os.utime(folder / name, (stamp, stamp))
    (folder / f"dir-{key}-cache").mkdir()   # not a program JAX writes: never removed
    read = time.time() - 86400   # written 40 days ago, read yesterday: still in use
    os.utime(folder / names["read"], (read, time.time() - 40 * 86400))
    plan = collect_garbage(2, cache_days=30)
    assert sorted(Path(path).name for path, _, _ in plan.removals) == sorted([names["old"], names["old_atime"]])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [names["new"], names["read"], names["other"], f"dir-{key}-cache"])


def test_gc_leaves_a_relative_or_switched_off_compilation_cache_alone(tl_home, monkeypatch, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    old = folder / f"jit_step-{'ab' * 32}-cache"
    old.write_bytes(b"p")
    os.utime(old, (time.time() - 90 * 86400,) * 2)
    monkeypatch.chdir(tmp_path)
    for value in ("work", "off"):   # relative: refused by the worker too, so never its cache
        monkeypatch.setenv("TL_JAX_COMPILATION_CACHE", value)
        assert collect_garbage(2, cache_days=30).removals == [] and old.exists(), value
