"""Run the benchmark suite: `python -m bench [--only NAME ...] [--quick]` (`make bench` runs it in full).

Each benchmark runs in its own process (`python -m bench.bench_<name> --mode M --out bench/out/<name>.json`), so
one's imports, memory and TensorFlow state cannot colour another's numbers and a crash costs one entry only.
Writes bench/out/<name>.json for each, bench/out/results.json with all of them plus a summary, logs under
bench/out/logs/, and prints the summary. Exit status 1 when a benchmark failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import common

# name -> module, cheap ones first, `make run` last; each writes one record (bench/common.py: `record`).
BENCHMARKS = {
    "history_scaling": "bench.bench_history_scaling",
    "store": "bench.bench_store",
    "input_pipeline": "bench.bench_input_pipeline",
    "feature_cache": "bench.bench_feature_cache",
    "throughput": "bench.bench_throughput",
    "orchestration": "bench.bench_orchestration",
    "make_run": "bench.bench_make_run",
}
ORDER = tuple(BENCHMARKS)
TIMEOUT_S = {"tiny": 900, "quick": 1200, "full": 3600}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=ORDER, metavar="NAME",
                        help=f"run only these benchmarks ({', '.join(ORDER)})")
    parser.add_argument("--skip", nargs="+", choices=ORDER, metavar="NAME", default=[],
                        help="leave these benchmarks out")
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all (smoke make run)")
    parser.add_argument("--mode", choices=common.MODES, help="tiny, quick or full (default full; --quick = quick)")
    parser.add_argument("--out", type=Path, default=common.OUT_DIR, help="output folder (default bench/out)")
    args = parser.parse_args(argv)
    mode = args.mode or ("quick" if args.quick else "full")
    names = [n for n in ORDER if (not args.only or n in args.only) and n not in args.skip]
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(exist_ok=True)

    started, started_at = time.perf_counter(), common.now_iso()
    records: dict[str, dict] = {}
    for name in names:
        print(f"[bench] {name} ({mode}) ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        records[name] = _run_one(name, mode, out_dir)
        state = "FAILED" if "error" in records[name] and not records[name].get("results") else "done"
        print(f"[bench] {name}: {state} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    summary = summarize(records)
    combined = {"suite": {"mode": mode, "benchmarks": names, "started_at": started_at,
                          "seconds": round(time.perf_counter() - started, 1), "machine": common.machine(False)},
                "summary": summary, "benchmarks": records}
    path = out_dir / "results.json"
    if args.only and path.is_file():  # a partial rerun keeps the other benchmarks' latest records
        try:
            previous = json.loads(path.read_text())
            kept = {k: v for k, v in previous.get("benchmarks", {}).items() if k not in records}
            if kept:
                combined["benchmarks"] = {**kept, **records}
                combined["summary"] = summarize(combined["benchmarks"])
                combined["suite"]["kept_from_earlier_runs"] = sorted(kept)
        except (OSError, ValueError):
            pass
    common.write_json(path, combined)
    print(format_summary(combined["summary"]))
    print(f"wrote {path}", file=sys.stderr)
    failed = [n for n, r in records.items() if r.get("error") and not r.get("results")]
    return 1 if failed else 0


def _run_one(name: str, mode: str, out_dir: Path) -> dict:
    log = out_dir / "logs" / f"{name}.log"
    json_path = out_dir / f"{name}.json"
    cmd = [sys.executable, "-m", BENCHMARKS[name], "--mode", mode, "--out", str(json_path)]
    json_path.unlink(missing_ok=True)
    out = common.run_timed(cmd, env=common.subprocess_env(), log_path=log, timeout=TIMEOUT_S[mode])
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError):
        data = None
    if data is None:
        return {"name": name, "mode": mode, "error": f"exited {out['returncode']} without a JSON record",
                "command": cmd, "log": str(log), "log_tail": out.get("log_tail", common.tail(log))[-3000:]}
    if out["returncode"] != 0:
        data["error"] = f"exited {out['returncode']}"
    return data


# ----------------------------------------------------------------------------------------------- summary

def summarize(records: dict[str, dict]) -> dict:
    """Headline numbers of each benchmark (and the ones derived across benchmarks, formulas included)."""
    s: dict = {}
    for name, rec in records.items():
        res = rec.get("results") or {}
        if rec.get("error") and not res:
            s[name] = {"error": rec["error"]}
            continue
        try:
            s[name] = _HEADLINES[name](res) if name in _HEADLINES else {}
        except (KeyError, TypeError, IndexError) as exc:
            s[name] = {"error": f"summary failed: {exc!r}"}
        s[name]["mode"] = rec.get("mode")
        if name == "make_run":
            s[name]["what"] = (rec.get("parameters") or {}).get("what", "")
    mr, orch = s.get("make_run", {}), s.get("orchestration", {})
    if mr.get("what", "").startswith("full") and mr.get("success") and orch.get("overhead_seconds") is not None:
        wall, over = mr["wall_seconds"], orch["overhead_seconds"] + (orch.get("airflow_setup_fresh_seconds") or 0)
        s["derived"] = {
            "orchestration_ratio_on_quick_profile_estimate": common.ratio(wall, wall - over),
            "formula": "make_run wall / (make_run wall - (orchestration overhead_seconds + Airflow set-up on a fresh "
                       "AIRFLOW_HOME)); goal <= 1.10",
        }
    return s


def _input_pipeline(r: dict) -> dict:
    out = {"pipeline_only_reference_img_per_s": r["pipeline_only"]["reference"]["img_per_s"],
           "pipeline_only_ours_img_per_s": r["pipeline_only"]["ours"]["img_per_s"]}
    for key, t in r["training"].items():
        out[key] = {"reference_img_per_s": t["reference"]["img_per_s"], "ours_img_per_s": t["ours"]["img_per_s"],
                    "ratio_ours_over_reference": t["ratio_ours_over_reference"],
                    "ratio_ours_over_reference_cpu": t.get("ratio_ours_over_reference_cpu")}
    return out


def _throughput(r: dict) -> dict:
    return {"img_per_s": r["img_per_s"], "cells": len(r["cells"]), "skipped_cells": len(r["skipped"])}


def _feature_cache(r: dict) -> dict:
    keys = ("image_size", "epochs_measured", "measured_ratio_epoch_work", "measured_ratio_wall", "measured_ratio_cpu",
            "ratio_at_10_epochs_from_parts", "ratio_at_10_epochs_wall_from_parts",
            "ratio_at_10_epochs_full_profile_scale_estimate", "ratio_at_10_epochs_full_profile_scale_estimate_cpu",
            "meets_goal")
    return {k: r.get(k) for k in keys}


def _orchestration(r: dict) -> dict:
    return {"direct_seconds": r["direct_seconds"], "airflow_seconds": r["airflow_seconds"],
            "overhead_seconds": r["overhead_seconds"], "ratio_airflow_over_direct": r["ratio_airflow_over_direct"],
            "ratio_airflow_over_direct_cpu": r.get("ratio_airflow_over_direct_cpu"),
            "airflow_setup_fresh_seconds": r["airflow_setup"]["fresh_seconds"],
            "airflow_setup_migrated_seconds": r["airflow_setup"]["migrated_seconds"]}


def _history(r: dict) -> dict:
    return {n: {k: v[k] for k in ("build_report_seconds", "build_index_seconds", "trend_50_ms", "trend_all_ms",
                                  "recent_runs_20_ms")} for n, v in r["by_runs"].items()}


def _make_run(r: dict) -> dict:
    return {k: r.get(k) for k in ("wall_seconds", "wall_minutes", "cpu_seconds", "success", "meets_goal",
                                  "task_seconds_by_task")}


def _store(r: dict) -> dict:
    return {b: {"trend_50_ms": v["ms"]["trend_50"]["median"], "get_run_newest_ms": v["ms"]["get_run_newest"]["median"],
                "meets_goal": v["meets_goal"]} for b, v in r.get("backends", {}).items()}


_HEADLINES = {"input_pipeline": _input_pipeline, "throughput": _throughput, "feature_cache": _feature_cache,
              "orchestration": _orchestration, "history_scaling": _history, "make_run": _make_run,
              "store": _store}


def format_summary(summary: dict) -> str:
    lines = ["", "benchmark summary", "================="]
    for name, values in summary.items():
        lines.append(f"{name}:")
        lines += [f"  {line}" for line in json.dumps(values, indent=1, default=str).splitlines()[1:-1]]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
