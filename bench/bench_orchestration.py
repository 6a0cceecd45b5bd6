"""Orchestration overhead: the DAG run headless by Airflow (`dag.test()` via tl_tasks.airflow_local.run_dag) against
the same stages called directly (`python -m tl_tasks run --engine local`, i.e. `tl_tasks.pipeline.run_local`).

Both sides run in a fresh subprocess with a fresh TL_HOME and the same settings, so imports and start-up count
equally; sides alternate (direct, airflow, airflow, direct, ...) so drifting machine load hits both. Airflow's
one-time set-up (`airflow db migrate` + the `gpu` pool, python -m tl_tasks.airflow_local.env --setup) is timed separately:
once on a fresh AIRFLOW_HOME and once more on the migrated one (what `make run` repeats before every run).
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from bench import common

NAME = "orchestration"
GOAL_RATIO = 1.10
# (DAG params = CLI settings, repetitions per side)
CONFIG = {
    "tiny": ({"profile": "smoke", "variants": ["cnn"], "limit_per_class": 10}, 1),
    "quick": ({"profile": "smoke", "variants": ["cnn"]}, 1),
    "full": ({"profile": "smoke", "variants": ["cnn", "resnet50_v1"]}, 2),
}
TIMEOUT_S = {"tiny": 600, "quick": 900, "full": 1800}


def run(mode: str = "full") -> dict:
    common.check_mode(mode)
    begun = common.begin()
    conf, reps = CONFIG[mode]
    logs = common.logs_dir(NAME)
    timeout = TIMEOUT_S[mode]
    results: dict = {"runs": []}
    with common.temp_home(NAME) as home:
        airflow_home = home / "airflow"
        env = common.subprocess_env(TL_AIRFLOW_HOME=str(airflow_home), TL_HOME=str(home / "setup_tl_home"))
        setup_cmd = [sys.executable, "-m", "tl_tasks.airflow_local.env", "--setup"]
        fresh = common.run_timed(setup_cmd, env=env, log_path=logs / "setup_fresh.log", timeout=timeout)
        again = None
        if mode == "full":  # what `make run` repeats before every run
            again = common.run_timed(setup_cmd, env=env, log_path=logs / "setup_again.log", timeout=timeout)
        results["airflow_setup"] = {"fresh_seconds": fresh["seconds"],
                                    "migrated_seconds": again["seconds"] if again else None,
                                    "returncodes": [fresh["returncode"]] + ([again["returncode"]] if again else [])}
        if fresh["returncode"] != 0:
            results["error"] = f"airflow set-up failed: {fresh.get('log_tail', '')[-1500:]}"
        else:
            order = [s for r in range(reps) for s in (("direct", "airflow") if r % 2 == 0 else ("airflow", "direct"))]
            for i, side in enumerate(order):
                tl_home = home / f"tl_home_{i}_{side}"
                side_env = common.subprocess_env(TL_AIRFLOW_HOME=str(airflow_home), TL_HOME=str(tl_home))
                out = common.run_timed(_command(side, conf), env=side_env, log_path=logs / f"{i}_{side}.log",
                                       timeout=timeout)
                out["side"] = side
                if side == "airflow":
                    out["dag_run_duration_seconds"] = _dag_run_duration(Path(out["log"]))
                results["runs"].append(out)
    ok = {s: [r["seconds"] for r in results["runs"] if r["side"] == s and r["returncode"] == 0]
          for s in ("direct", "airflow")}
    failed = [r for r in results["runs"] if r["returncode"] != 0]
    if failed:
        results["error"] = "; ".join(f"{r['side']} exited {r['returncode']}: {r.get('log_tail', '')[-800:]}"
                                     for r in failed)
    cpu = {s: [r["cpu_seconds"] for r in results["runs"] if r["side"] == s and r["returncode"] == 0
               and r.get("cpu_seconds") is not None] for s in ("direct", "airflow")}
    direct = statistics.median(ok["direct"]) if ok["direct"] else None
    dag = statistics.median(ok["airflow"]) if ok["airflow"] else None
    direct_cpu = statistics.median(cpu["direct"]) if cpu["direct"] else None
    dag_cpu = statistics.median(cpu["airflow"]) if cpu["airflow"] else None
    durations = [r.get("dag_run_duration_seconds") for r in results["runs"] if r["side"] == "airflow"]
    results.update({
        "direct_seconds": direct,
        "airflow_seconds": dag,
        "overhead_seconds": round(dag - direct, 2) if direct and dag else None,
        "ratio_airflow_over_direct": common.ratio(dag, direct),
        "direct_cpu_seconds": direct_cpu, "airflow_cpu_seconds": dag_cpu,
        "ratio_airflow_over_direct_cpu": common.ratio(dag_cpu, direct_cpu),
        "airflow_dag_run_duration_seconds": [d for d in durations if d is not None],
        "goal_ratio": GOAL_RATIO,
        "goal_applies_to": "the quick profile: see summary.derived in results.json (needs the make_run record)",
    })
    notes = [
        "direct_seconds / airflow_seconds: median wall time of the subprocess, start to exit (Python start-up, "
        "imports, every stage, report). ratio_airflow_over_direct = airflow_seconds / direct_seconds; *_cpu_seconds: "
        "user + system CPU time of the subprocess and its children (robust to other programs sharing the cores).",
        "airflow side: python -m tl_tasks.airflow_local.run_dag --skip-setup (dag.test(): the DAG parsed, a DagRun and task instances "
        "in Airflow's SQLite database, each task run by Airflow's task runner in this process, XComs stored).",
        "airflow_dag_run_duration_seconds: Airflow's own run_duration from its log (start of the first task to "
        "the end of the last); the rest of airflow_seconds is start-up (imports, DAG parsing, serialisation).",
        "The overhead is roughly constant per run (plus a little per task): on the small workload measured here "
        "the ratio is an upper bound of the ratio on the quick profile's ~10-minute workload.",
        "airflow_setup: `airflow db migrate` + `airflow pools set gpu` on a fresh AIRFLOW_HOME and (full mode) "
        "again on the migrated one; `make run` (python -m tl_tasks run) repeats it before every run.",
        f"logs of every subprocess: {common.logs_dir(NAME)}",
    ]
    params = {"conf": conf, "repetitions_per_side": reps, "order": "direct, airflow, airflow, direct, ...",
              "direct_command": _command("direct", conf), "airflow_command": _command("airflow", conf)}
    return common.record(NAME, mode, begun, params, results, notes, common.machine(False))


def _command(side: str, conf: dict) -> list[str]:
    if side == "airflow":
        return [sys.executable, "-m", "tl_tasks.airflow_local.run_dag", "--skip-setup", "--conf", json.dumps(conf)]
    cmd = [sys.executable, "-m", "tl_tasks", "run", "--engine", "local"]
    for key, value in conf.items():
        flag = "--" + key.replace("_", "-")
        cmd += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return cmd


def _dag_run_duration(log: Path) -> float | None:
    found = re.findall(r"run_duration=([0-9.]+)", common.tail(log, 200_000))
    return round(float(found[-1]), 2) if found else None


def main(argv: list[str] | None = None) -> int:
    return common.cli(NAME, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
