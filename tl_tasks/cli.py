"""Command-line views of the metrics database: `python -m tl_tasks runs`, `champion` and `db upgrade`.

Both return the text to print; errors are StoreError subclasses whose messages are ready to show.
"""
from __future__ import annotations

import json

from tl_tasks.gating.champions import verify
from tl_tasks.store import connect
from tl_tasks.store.db import create_store_engine, mask_url, upgrade
from tl_tasks.variants import in_registry_order, variant_sort_key


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


def champion_command(action: str, variant: str | None = None, as_json: bool = False) -> tuple[str, bool]:
    """`champion show` (the current champion of each variant and lineage) or `champion history` (every
    promotion, newest first), each checked against its published files. Returns (text, all intact)."""
    if action not in ("show", "history"):
        raise ValueError(f"action={action!r}; use show or history")
    with connect() as store:
        rows = store.champion_history(variant, limit=1000)
        where = store.url
    if action == "show":
        seen, current = set(), []
        for r in rows:  # newest first: the first promotion of each (variant, lineage) is its champion
            if (r["variant"], r["lineage"]) not in seen:
                seen.add((r["variant"], r["lineage"]))
                current.append(r)
        rows = current
    for r in rows:
        r["problems"] = verify(r, current=action == "show") if r.get("published") else []
        r["note"] = None if r.get("published") else "not published (promoted before champions were published)"
    ok = not any(r["problems"] for r in rows)
    if as_json:
        return json.dumps({"database": where, "champions": rows}, indent=2), ok
    if not rows:
        return f"no champions yet in {where}" + (f" for {variant}" if variant else ""), True
    if action == "show":
        rows.sort(key=lambda r: (variant_sort_key(r["variant"]), r["lineage"] or ""))
    table = [["variant", "lineage", "run", "accuracy", "decision", "model sha256", "published", "check"]]
    for r in rows:
        decision = r["decision"] + (" (forced)" if r["forced"] else "")
        table.append([r["variant"], (r["lineage"] or "-")[:12], r["run_id"], _acc(r["accuracy"]), decision,
                      (r["model_sha256"] or "-")[:12], r.get("published") or "-",
                      "PROBLEM: " + "; ".join(r["problems"]) if r["problems"] else r["note"] or "ok"])
    return _format(table, "lineage = the test set's sha256 (first 12 hex digits); champions are compared and "
                          "replaced only within a lineage"), ok


def _acc(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _format(rows: list[list[str]], footer: str) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, "", footer])


def _table(runs: list[dict]) -> str:
    variants = in_registry_order({v for run in runs for v in run["results"]})
    newest_lineage = next((run["lineage"] for run in runs if run.get("lineage")), None)
    rows = [["run", "date", "profile", "state", "lineage", *variants]]
    for run in runs:
        date = run["logical_date"] or run["started_at"] or run["created_at"] or ""
        lineage = (run.get("lineage") or "-")[:8]
        if run.get("lineage") and run.get("lineage") != newest_lineage:
            lineage = "≠ " + lineage
        rows.append([run["run_id"], date[:16].replace("T", " "), run["profile"] or "-", run["state"] or "-", lineage,
                     *(_cell(run["results"].get(v)) for v in variants)])
    return _format(rows, "test accuracy (change from the variant's previous run on the same test set; the gate's "
                         "paired change vs its champion, exact McNemar p-value: decision); lineage = the test set's "
                         "fingerprint, ≠ = another lineage than the newest run that has one, never compared with it; "
                         "failed = the variant failed in that run")


def _cell(result: dict | None) -> str:
    if result is None:
        return "-"
    if result["state"] == "failed":
        return "failed"
    if result["accuracy"] is None:
        return result["state"] or "-"
    text = f"{result['accuracy']:.4f}"
    extra = []
    if result["delta"] is not None:
        extra.append(f"{result['delta']:+.4f}")
    gate = result.get("decision") or ""
    if result.get("champion_delta") is not None and result.get("p_value") is not None:
        p = result["p_value"]
        gate = (f"vs champion {result['champion_delta']:+.4f}, " + ("p<0.0001" if p < 1e-4 else f"p={p:.2g}")
                + f": {gate}")
    if gate:
        extra.append(gate)
    return text + (f" ({'; '.join(extra)})" if extra else "")
