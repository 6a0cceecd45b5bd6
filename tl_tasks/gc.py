"""Disk lifecycle: `python -m tl_tasks gc --keep N [--dry-run]`.

Keeps everything of the newest N runs. Of older runs it removes the heavy files -- the prepared data arrays
(`data/*.npy`), models (`models/<variant>/model.keras`) and checkpoints -- but keeps what is small and what
history needs: every `predictions.npy`, summaries (`*.json`), `settings.json`, `data/meta.json`, every report
(`report/`, and so everything a kept report links to) and every database row. It also removes the checkpoints
of failed variants of runs that have ended, decode-cache entries and JAX's compiled programs
(`layout.jax_compiled_dir()`) not used for `cache_days`, and the Airflow task logs of the runs it thinned.

Never touched: `$TL_HOME/champions/**` (current champions and their history), and the model of any run that is
or ever was a champion (a gate decision `promoted`/`bootstrap`, or a run named in a file under champions/).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from tl_tasks import layout
from tl_tasks.errors import BadInput
from tl_tasks.gating.decision import PROMOTING
from tl_tasks.layout import DataFiles, ModelFiles, RunLayout
from tl_tasks.store import connect

log = logging.getLogger(__name__)

KEEP_ALWAYS = (layout.PREDICTIONS_FILE, layout.CONFIDENCE_FILE)
DEFAULT_CACHE_DAYS = 30
ENDED_STATES = ("success", "failed")


@dataclass
class GcPlan:
    """What gc removes (or would, on a dry run) and why; `freed_bytes` counts files removed."""

    kept_runs: list[str] = field(default_factory=list)
    thinned_runs: list[str] = field(default_factory=list)
    champion_runs: list[str] = field(default_factory=list)
    removals: list[tuple[str, int, str]] = field(default_factory=list)   # (path, bytes, reason)
    dry_run: bool = False

    @property
    def freed_bytes(self) -> int:
        return sum(size for _, size, _ in self.removals)

    def text(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        lines = [f"{'[dry run] ' if self.dry_run else ''}{verb} {_human(self.freed_bytes)} in "
                 f"{len(self.removals)} path(s); kept {len(self.kept_runs)} newest run(s) whole, thinned "
                 f"{len(self.thinned_runs)} older run(s), kept the models of {len(self.champion_runs)} champion run(s)"]
        lines += [f"  {'would remove' if self.dry_run else 'removed'} {path} ({_human(size)}): {why}"
                  for path, size, why in self.removals]
        return "\n".join(lines)


def collect_garbage(keep: int, *, dry_run: bool = False, cache_days: float = DEFAULT_CACHE_DAYS,
                    airflow_logs: Path | None = None, store=None) -> GcPlan:
    """Remove what the newest `keep` runs and the champions do not need (see the module docstring)."""
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise BadInput(f"keep={keep!r} must be a whole number >= 1 (the newest runs kept whole)")
    champions_dir = layout.champions_root()
    plan = GcPlan(dry_run=dry_run)
    runs = _runs(store)   # newest first
    champion_runs = _champion_runs(runs, champions_dir)
    plan.champion_runs = sorted(champion_runs)
    for i, run in enumerate(runs):
        run_id = run["run_id"]
        folder = _run_folder(run_id)
        run_files = RunLayout(run_id, folder=folder) if folder is not None else None
        if i < keep:
            plan.kept_runs.append(run_id)
            if run_files is not None and run.get("state") in ENDED_STATES:
                for variant, result in (run.get("results") or {}).items():
                    if result.get("state") == "failed":
                        _plan(plan, ModelFiles(run_files.models_dir / variant).checkpoints,
                              "checkpoints of a failed variant")
            continue
        if folder is None or run.get("state") not in ENDED_STATES:
            continue   # never prepared here, or still running: nothing to thin
        plan.thinned_runs.append(run_id)
        for array in run_files.data.arrays():
            _plan(plan, array, f"data array of run {run_id!r}, older than the newest {keep}")
        for model_dir in sorted(p for p in run_files.models_dir.glob("*") if p.is_dir()):
            files = ModelFiles(model_dir)
            _plan(plan, files.checkpoints, "checkpoints of an old run")
            if run_id not in champion_runs:
                _plan(plan, files.model, f"model of run {run_id!r}, older than the newest {keep}, never a champion")
        if airflow_logs is not None:
            for log_dir in sorted(airflow_logs.glob(f"dag_id=*/run_id={run_id}")):
                _plan(plan, log_dir, f"Airflow task logs of run {run_id!r}")
    _plan_cache(plan, layout.cache_root(), cache_days)
    _plan_compiled(plan, layout.jax_compiled_dir(), cache_days)
    for path, _, _ in plan.removals:
        if _inside(Path(path), champions_dir):   # belt and braces: champions are never deleted
            raise RuntimeError(f"gc planned to remove {path} under {champions_dir}; refusing (a bug)")
    if not dry_run:
        for path, _, _ in plan.removals:
            _remove(Path(path))
    log.info("%s", plan.text().splitlines()[0])
    return plan


def _runs(store) -> list[dict]:
    own = store is None
    store = store or connect()
    try:
        runs = store.recent_runs(limit=10**9)
    finally:
        if own:
            store.close()
    return runs


def _champion_runs(runs: list[dict], champions_dir: Path) -> set[str]:
    """Runs whose model is or was a champion: a promoting gate decision, or named in a champions/ file."""
    ids = {run["run_id"] for run in runs
           if any((r or {}).get("decision") in PROMOTING for r in (run.get("results") or {}).values())}
    if champions_dir.is_dir():
        for meta in champions_dir.rglob("*.json"):
            try:
                ids |= set(_run_ids_in(json.loads(meta.read_text())))
            except (OSError, ValueError):
                continue
    return ids


def _run_ids_in(data) -> list[str]:
    if isinstance(data, dict):
        found = [str(v) for k, v in data.items() if k in ("run_id", "champion_run_id") and v]
        return found + [x for v in data.values() for x in _run_ids_in(v)]
    if isinstance(data, list):
        return [x for v in data for x in _run_ids_in(v)]
    return []


def _run_folder(run_id: str) -> Path | None:
    """The run's folder: today's collision-free key, else the key of older versions (slug only)."""
    return next((folder for folder in layout.run_folder_candidates(run_id) if folder.is_dir()), None)


def _plan(plan: GcPlan, path: Path | None, why: str) -> None:
    if path is None or not os.path.lexists(path) or path.name in KEEP_ALWAYS:
        return
    plan.removals.append((str(path), _size(path), why))


def _plan_cache(plan: GcPlan, cache: Path, days: float) -> None:
    if not cache.is_dir():
        return
    cutoff = time.time() - days * 86400
    for entry in sorted(cache.iterdir()):
        try:
            used = DataFiles(entry).meta.stat().st_mtime if entry.is_dir() else entry.stat().st_mtime
        except OSError:
            used = 0
        if used < cutoff:
            plan.removals.append((str(entry), _size(entry), f"decode-cache entry unused for {days:g}+ days"))


def _plan_compiled(plan: GcPlan, folder: Path | None, days: float) -> None:
    """JAX's compiled programs not read or written for `days` (the later of the file's access and modification
    times; where the file system records no access times, the write time alone): the next process that needs one
    compiles it again. Only regular files named as JAX names them, in an absolute folder."""
    if folder is None or not folder.is_absolute() or not folder.is_dir():
        return
    cutoff = time.time() - days * 86400
    for program in layout.jax_compiled_programs(folder):
        try:
            st = program.lstat()
            if not stat.S_ISREG(st.st_mode) or max(st.st_atime, st.st_mtime) >= cutoff:
                continue
        except OSError:   # removed meanwhile
            continue
        plan.removals.append((str(program), st.st_size, f"compiled program unused for {days:g}+ days"))
        atime = program.with_name(program.name.removesuffix("-cache") + "-atime")
        try:
            st = atime.lstat()
        except OSError:   # none: JAX writes it only when it bounds the cache's size
            continue
        if stat.S_ISREG(st.st_mode):
            plan.removals.append((str(atime), st.st_size, "its last-use record"))


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def default_airflow_logs() -> Path | None:
    """Airflow's task-log folder when it is local: $AIRFLOW__LOGGING__BASE_LOG_FOLDER or $AIRFLOW_HOME/logs."""
    folder = os.environ.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER")
    if not folder and os.environ.get("AIRFLOW_HOME"):
        folder = os.path.join(os.environ["AIRFLOW_HOME"], "logs")
    return Path(folder) if folder and Path(folder).is_dir() else None
