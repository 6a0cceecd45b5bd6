"""Command-line views of the metrics database: `python -m tl_tasks runs` and `python -m tl_tasks db upgrade`.

Both return the text to print; errors are StoreError subclasses whose messages are ready to show.
"""
from __future__ import annotations

import json

from tl_tasks.store import connect
from tl_tasks.store.db import create_store_engine, mask_url, upgrade


def runs_command(limit: int = 20, as_json: bool = False, *, variant: str | None = None, since=None,
                 as_csv: bool = False) -> str:
    """Recent runs, newest first, with each variant's test accuracy and its change from the previous run;
    only `variant` / runs since `since` (ISO date) when given; as a table, JSON or CSV."""
    if limit < 1:
        raise ValueError(f"--limit {limit} must be at least 1")
    if as_json and as_csv:
        raise ValueError("--json and --csv exclude each other: pick one output format")
    with connect() as store:
        runs = store.recent_runs(limit, variant=variant, since=since)
        if as_json:
            return json.dumps({"database": store.url, "runs": runs}, indent=2)
        if as_csv:
            return _csv(runs)
        if not runs:
            filters = (f" for variant {variant!r}" if variant else "") + (f" since {since}" if since else "")
            return f"no runs recorded{filters or ' yet'} in {store.url}"
        return _table(runs)


def _csv(runs: list[dict]) -> str:
    """One row per (run, variant): spreadsheet-friendly, newest run first."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run_id", "date", "profile", "run_state", "variant", "state", "accuracy", "previous_accuracy",
                     "delta", "decision"])
    for run in runs:
        date = run["logical_date"] or run["started_at"] or run["created_at"] or ""
        for v, r in run["results"].items():
            writer.writerow([run["run_id"], date, run["profile"] or "", run["state"] or "", v, r["state"] or "",
                             *("" if r[k] is None else r[k] for k in ("accuracy", "previous_accuracy", "delta")),
                             r["decision"] or ""])
    return out.getvalue().rstrip("\n")


def db_upgrade_command() -> str:
    """Migrate the metrics database to the current schema; says what it did."""
    engine = create_store_engine()
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    where = mask_url(engine.url)
    if before == after:
        return f"metrics database {where} is up to date (schema revision {after})"
    return f"metrics database {where} upgraded from {before or 'empty'} to schema revision {after}"


def _table(runs: list[dict]) -> str:
    from tl_tasks.store.queries import _variant_order

    variants = _variant_order({v for run in runs for v in run["results"]})
    header = ["run", "date", "profile", "state", *variants]
    rows = [header]
    for run in runs:
        date = run["logical_date"] or run["started_at"] or run["created_at"] or ""
        rows.append([run["run_id"], date[:16].replace("T", " "), run["profile"] or "-", run["state"] or "-",
                     *(_cell(run["results"].get(v)) for v in variants)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("test accuracy (change from the variant's previous run); failed = the variant failed in that run")
    return "\n".join(lines)


def _cell(result: dict | None) -> str:
    if result is None:
        return "-"
    if result["state"] == "failed":
        return "failed"
    if result["accuracy"] is None:
        return result["state"] or "-"
    text = f"{result['accuracy']:.4f}"
    if result["delta"] is not None:
        text += f" ({result['delta']:+.4f})"
    return text
