"""The benchmarks run in their smallest mode and emit valid JSON records with the expected keys (structure, not speed).

Light benchmarks run for real (tiny mode, in this process); the two that time whole subprocess runs (Airflow, make
run) get a fake runner here, since their real tiny runs take minutes; their commands are checked to parse.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from bench import common

RESULT_KEYS = {
    "input_pipeline": {"bytes_per_image", "pipeline_only", "training"},
    "throughput": {"img_per_s", "cells", "skipped"},
    "feature_cache": {"cells", "measured_ratio_epoch_work", "measured_ratio_wall", "ratio_at_10_epochs_from_parts",
                      "ratio_at_10_epochs_wall_from_parts", "goal_ratio", "meets_goal"},
    "history_scaling": {"by_runs", "seeding"},
    "store": {"backends", "goal_ms", "meets_goal"},
    "orchestration": {"runs", "airflow_setup", "direct_seconds", "airflow_seconds", "overhead_seconds",
                      "ratio_airflow_over_direct", "goal_ratio"},
    "make_run": {"wall_seconds", "returncode", "success", "tasks", "variants", "task_seconds_by_task"},
}
MACHINE_KEYS = {"cpu_model", "cpu_cores", "ram_gib", "python", "versions", "keras_backend", "gpu"}


def _check_record(rec: dict, name: str) -> dict:
    rec = json.loads(json.dumps(rec))  # valid JSON, round trip
    assert set(common.RECORD_KEYS) <= set(rec), set(common.RECORD_KEYS) - set(rec)
    assert rec["name"] == name and rec["mode"] == "tiny"
    assert set(rec["machine"]) >= MACHINE_KEYS, MACHINE_KEYS - set(rec["machine"])
    assert RESULT_KEYS[name] <= set(rec["results"]), RESULT_KEYS[name] - set(rec["results"])
    assert isinstance(rec["parameters"], dict) and rec["notes"] and all(isinstance(n, str) for n in rec["notes"])
    return rec["results"]


@pytest.mark.slow  # each benchmark end to end: trains and times models
@pytest.mark.parametrize("name", ["history_scaling", "store", "throughput", "input_pipeline", "feature_cache"])
def test_benchmark_runs_in_tiny_mode(name):
    module = importlib.import_module(f"bench.bench_{name}")
    results = _check_record(module.run("tiny"), name)
    if name == "throughput":
        cell = results["cells"][0]
        assert cell["img_per_s"] > 0 and cell["steps"] >= 1 and cell["images"] == cell["steps"] * cell["batch_size"]
    elif name == "input_pipeline":
        t = results["training"]["frozen_base"]
        assert t["reference"]["img_per_s"] > 0 and t["ours"]["img_per_s"] > 0 and t["ratio_ours_over_reference"] > 0
    elif name == "feature_cache":
        cell = results["cells"][0]
        assert len(cell["naive"]["epoch_seconds"]) == len(cell["cached"]["head_epoch_seconds"]) == cell["epochs"]
    elif name == "history_scaling":
        row = results["by_runs"]["10"]
        assert row["build_report_seconds"] > 0 and row["trend_50_ms"] > 0
        assert row["build_index_seconds"] > 0 and row["build_index_full_seconds"] > 0


def _fake_runner(tmp_path: Path, calls: list):
    def run_timed(cmd, *, env, log_path, timeout, cwd=common.PROJECT_ROOT):
        calls.append((cmd, env))
        log_path = tmp_path / Path(log_path).name
        log_path.write_text("... DagRun Finished: run_duration=12.5, state=success\n")
        return {"seconds": 20.0 + len(calls), "returncode": 0, "timed_out": False, "log": str(log_path)}

    return run_timed


@pytest.mark.parametrize("name", ["orchestration", "make_run"])
def test_subprocess_benchmark_records(name, tmp_path, monkeypatch):
    module = importlib.import_module(f"bench.bench_{name}")
    calls: list = []
    monkeypatch.setattr(common, "run_timed", _fake_runner(tmp_path, calls))
    monkeypatch.setattr(common, "logs_dir", lambda _name: tmp_path)
    results = _check_record(module.run("tiny"), name)
    assert calls and all(env["TL_HOME"] and "TL_AIRFLOW_HOME" in env for _, env in calls)
    if name == "orchestration":
        assert results["ratio_airflow_over_direct"] > 0
        assert results["airflow_dag_run_duration_seconds"] == [12.5]
        assert {r["side"] for r in results["runs"]} == {"direct", "airflow"}
    else:
        assert results["success"] is True


def test_orchestration_commands_are_valid():
    from bench import bench_orchestration as orch
    from tl_tasks.__main__ import build_parser

    for conf, _ in orch.CONFIG.values():
        direct = orch._command("direct", conf)
        args = build_parser().parse_args(direct[3:])  # after: python -m tl_tasks
        assert args.engine == "local" and args.profile == conf["profile"] and args.variants == conf["variants"]
        airflow = orch._command("airflow", conf)
        assert airflow[1] == "-m" and importlib.util.find_spec(airflow[2]) is not None, airflow
        assert json.loads(airflow[-1]) == conf


@pytest.mark.slow
def test_suite_writes_combined_results(tmp_path):
    from bench.__main__ import main

    assert main(["--mode", "tiny", "--only", "history_scaling", "--out", str(tmp_path)]) == 0
    combined = json.loads((tmp_path / "results.json").read_text())
    assert {"suite", "summary", "benchmarks"} <= set(combined)
    assert combined["suite"]["mode"] == "tiny" and set(combined["suite"]["machine"]) >= MACHINE_KEYS
    _check_record(combined["benchmarks"]["history_scaling"], "history_scaling")
    assert "10" in combined["summary"]["history_scaling"]
    assert json.loads((tmp_path / "history_scaling.json").read_text())["name"] == "history_scaling"


def test_modes_are_checked():
    with pytest.raises(ValueError, match="mode='huge'"):
        common.check_mode("huge")
    assert sys.modules.get("bench.common") is common
