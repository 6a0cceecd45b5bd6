"""How report building and the trend queries scale with history: 10 / 100 / 1,000 / 10,000 / 100,000
stored runs.

For each size a fresh SQLite metrics database (in a throwaway TL_HOME) is bulk-loaded with the store
benchmark's seeding (bench.bench_store: runs x 5 variants with epoch history, per-class metrics, confusion matrix,
gate; from CHILDLESS_FROM runs on without epoch/per-class/confusion rows, which no history query reads), then one
newer, complete run is recorded through the store API (tl_tasks.demo.seed_run, with test images for the
thumbnails). Timed through the public APIs: `build_report` (the run's page plus the incremental refresh of the
paginated index, as the pipeline's report stage does), `build_index(run_id=...)` alone, `build_index(full=True)`
(every index page, once after an upgrade), `trend`, `recent_runs`, `champion`, `previous_run`, `get_run`.
"""
from __future__ import annotations

import statistics
import time
from datetime import timedelta

from bench import common

NAME = "history_scaling"
EPOCHS_PER_RESULT = 10  # the full profile's epochs
CONFIG = {  # (history sizes, query repeats, warm report builds)
    "tiny": ((10,), 1, 1),
    "quick": ((10, 100, 1000), 3, 1),
    "full": ((10, 100, 1000, 10_000, 100_000), 5, 2),
}
CHILDLESS_FROM = 100_000  # 5.5 M child rows at 100,000 runs would only cost seeding time and disk
CURRENT_RUN = "scheduled__current"
VARIANT = "resnet50_v3"


def run(mode: str = "full") -> dict:
    common.check_mode(mode)
    begun = common.begin()
    sizes, repeat, builds = CONFIG[mode]
    rows, seeding = [], _seeder()
    # Pay matplotlib/Jinja2 imports and template compilation once, outside the timings.
    with common.temp_home(f"{NAME}_warm") as home, common.env_vars(TL_HOME=str(home), TL_METRICS_DB_URL=None):
        _measure(0, seeding, 1, 1)
    for n in sizes:
        with common.temp_home(f"{NAME}_{n}") as home, common.env_vars(TL_HOME=str(home), TL_METRICS_DB_URL=None):
            rows.append(_measure(n, seeding, repeat, builds))
    by = {r["runs"]: r for r in rows}
    first, last = rows[0], rows[-1]
    growth = {}
    for key in ("build_report_seconds", "build_index_seconds", "build_index_full_seconds", "trend_50_ms", "trend_all_ms", "recent_runs_20_ms",
                "champion_ms", "get_run_ms"):
        growth[key] = common.ratio(last[key], first[key], 1)
    results = {"by_runs": {str(k): v for k, v in by.items()},
               f"growth_{last['runs']}_over_{first['runs']}_runs": growth,
               "seeding": seeding["name"]}
    notes = [
        "Times are medians of `repeat` calls after one warm-up call (ms) or the best of the warm report builds "
        "(seconds); imports and template compilation are paid once before the first size.",
        "build_report includes build_index(run_id=...): the pipeline's report stage refreshes the paginated index "
        f"(front page + the pages that changed, {_page_size()} runs a page); build_index_full rewrites every page.",
        f"From {CHILDLESS_FROM:,} runs on the older runs are seeded without child rows (epochs, per-class, "
        "confusion): only the current run's are read by a report build.",
        "trend_all = trend(variant, limit=reports.context.TREND_LIMIT): what the report's trend chart reads "
        "(the last runs of each variant, not its whole history).",
        "Each stored run: 5 variants, each with 10 epochs of history, 10 per-class rows, a confusion matrix and a "
        "gate decision (bench.bench_store's bulk loader).",
    ]
    params = {"sizes": list(sizes), "repeat": repeat, "warm_report_builds": builds,
              "epochs_per_result": EPOCHS_PER_RESULT, "database": "sqlite (file, throwaway TL_HOME)",
              "trend_variant": VARIANT}
    return common.record(NAME, mode, begun, params, results, notes, common.machine(False))


def _seeder() -> dict:
    """Bulk loader of the store benchmark when it offers one, else runs recorded one by one through the API."""
    try:
        from bench import bench_store

        seed = getattr(bench_store, "seed", None) or bench_store._seed
        return {"name": "bench.bench_store bulk insert",
                "fn": lambda store, n: seed(store, n, EPOCHS_PER_RESULT, children=n < CHILDLESS_FROM),
                "t0": bench_store.T0, "step": timedelta(hours=6)}
    except (ImportError, AttributeError):
        from tl_tasks import demo as rf

        return {"name": "tl_tasks.demo.seed_history (store API, one run at a time)",
                "fn": lambda store, n: rf.seed_history(store, n), "t0": rf.START, "step": timedelta(days=7)}


def _measure(n: int, seeding: dict, repeat: int, builds: int) -> dict:
    from reports import builder, context
    from tl_tasks import demo as rf
    from tl_tasks.store import connect

    store = connect()
    try:
        with common.Stopwatch() as sw:
            if n:
                seeding["fn"](store, n)
            rf.seed_run(store, CURRENT_RUN, seeding["t0"] + seeding["step"] * (n + 1), seed=n, epochs=EPOCHS_PER_RESULT)
        seed_s = sw.seconds
        index_full = _once(lambda: builder.build_index(store, full=True))  # the pages exist, as in a live TL_HOME
        report = [_once(lambda: builder.build_report(CURRENT_RUN, store)) for _ in range(builds + 1)]
        index = [_once(lambda: builder.build_index(store, run_id=CURRENT_RUN)) for _ in range(builds + 1)]
        return {
            "runs": n, "seed_seconds": round(seed_s, 2),
            "build_report_seconds": round(min(report[1:]), 3), "build_report_first_seconds": round(report[0], 3),
            "build_index_seconds": round(min(index[1:]), 3), "build_index_full_seconds": round(index_full, 3),
            "trend_50_ms": _ms(lambda: store.trend(VARIANT, limit=50), repeat),
            "trend_all_ms": _ms(lambda: store.trend(VARIANT, limit=context.TREND_LIMIT), repeat),
            "recent_runs_20_ms": _ms(lambda: store.recent_runs(20), repeat),
            "champion_ms": _ms(lambda: store.champion(VARIANT, before_run_id=CURRENT_RUN), repeat),
            "previous_run_ms": _ms(lambda: store.previous_run(CURRENT_RUN), repeat),
            "get_run_ms": _ms(lambda: store.get_run(CURRENT_RUN), repeat),
            "report_bytes": (builder.build_report(CURRENT_RUN, store)).stat().st_size,
            "index_bytes": builder.build_index(store).stat().st_size,
        }
    finally:
        store.close()


def _page_size() -> int:
    from reports import index

    return index.INDEX_PAGE_SIZE


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _ms(fn, repeat: int) -> float:
    fn()
    return round(statistics.median(_once(fn) * 1000 for _ in range(max(repeat, 1))), 2)


def main(argv: list[str] | None = None) -> int:
    return common.cli(NAME, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
