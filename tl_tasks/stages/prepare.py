"""The prepare stage: the run's data under `runs/<key>/data/`, the run opened in the metrics database, and the
skip-unchanged check that decides whether anything is trained."""
from __future__ import annotations

import logging
import os
import platform
from datetime import datetime
from importlib import metadata

from tl_tasks.data import prepare_data
from tl_tasks.data.local import resolve_dataset
from tl_tasks.files import write_json_atomic
from tl_tasks.layout import cache_root
from tl_tasks.stages import skip
from tl_tasks.stages.context import RunContext, now, one_line
from tl_tasks.store import MetricsStore

log = logging.getLogger(__name__)


def prepare(ctx: RunContext, *, dag_id: str | None = None, logical_date: datetime | str | None = None) -> dict:
    """Prepare the run's data and record the run.

    Returns:
        `PreparedData.summary()` plus `data_dir` and `run_id`.
    """
    settings, store, run_id = ctx.settings, ctx.store, ctx.run_id
    write_json_atomic(ctx.layout.settings_file, settings.to_dict())
    started = now()
    store.upsert_run(
        run_id, dag_id=dag_id, logical_date=logical_date or started, started_at=started, ended_at=None,
        state="running", profile=settings.profile, params=settings.to_dict(), seed=settings.seed,
        data_source=settings.dataset, data_fingerprint=None, lineage=None, data_summary=None, class_names=None,
        versions=versions(), error=None, report_path=None,
    )
    out = ctx.layout.data_dir
    try:
        source = resolve_dataset(settings.dataset)  # e.g. cifar10 -> a local copy (recorded as data_source)
        prepared = prepare_data(source, out, limit_per_class=settings.limit_per_class,
                                val_fraction=settings.val_fraction, seed=settings.seed,
                                image_size=settings.data_size, cache_dir=cache_root())
    except Exception as exc:
        store.upsert_run(run_id, state="failed", ended_at=now(), error=f"prepare_data failed: {one_line(exc)}")
        raise
    summary = prepared.summary()
    store.upsert_run(run_id, data_source=source, data_fingerprint=summary["fingerprint"],
                     lineage=summary["test_fingerprint"], data_summary=summary, class_names=summary["class_names"])
    log.info("prepared %s for run %s: %s images (fingerprint %s)", source, run_id,
             summary["counts"], summary["fingerprint"][:12])
    return {**summary, "data_dir": str(out), "run_id": run_id}


def record_refused(store: MetricsStore, run_id: str, params: dict | None, exc: Exception, *,
                   dag_id: str | None = None, logical_date: datetime | str | None = None) -> None:
    """Keep a trace of a run whose parameters were refused, so its report can say why."""
    store.upsert_run(run_id, dag_id=dag_id, logical_date=logical_date or now(), started_at=now(), ended_at=now(),
                     state="failed", params=dict(params or {}), error=f"invalid parameters: {exc}")


def skip_if_unchanged(ctx: RunContext) -> dict | None:
    """Record the run as `skipped: unchanged` when its data fingerprint, settings and code version equal the
    last successful run's; returns the skip note ({reason, same_as}) or None when the run must train."""
    run = ctx.store.get_run(ctx.run_id)
    previous = ctx.store.last_successful_run(ctx.run_id)
    reason = skip.unchanged_reason(run or {}, previous)
    if reason is None:
        return None
    note = {"reason": reason, "same_as": previous["run_id"]}
    ctx.store.upsert_run(ctx.run_id, state="skipped", params={**(run.get("params") or {}), skip.SKIP_KEY: note})
    log.info("run %s skipped: %s (same data, settings and code as run %s); trigger with force=true to retrain",
             ctx.run_id, reason, previous["run_id"])
    return note


def versions() -> dict:
    """Versions of what the run's numbers depend on, read from package metadata (nothing is imported)."""
    out = {"python": platform.python_version(), "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
           skip.CODE_KEY: skip.code_version()}
    for dist in ("keras", "tensorflow", "jax", "torch", "numpy", "apache-airflow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
