"""Watch the training data and say when it really changed, cheaply: a signature of file names, sizes and
modification times (no decoding, no TensorFlow), confirmed stable across two looks so that a source being
written is not reported half-written. The last reported signature lives in `$TL_HOME/watch/<key>.json`
(written atomically), so a restart neither misses nor repeats a change.

The source is `TL_WATCH_SOURCE` (a path, `folder:<path>` or `cifar10:<path>`): a folder of images (or of
archives) or one archive file (a new or rewritten archive changes its size/mtime). The watcher's asset event
names it as a `dataset` setting, and a run that event starts trains on it (`dataset_from_events`).
"""
from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from tl_tasks import config, layout
from tl_tasks.files import write_json_atomic

DATASET_ASSET = "tl_training_data"  # the Airflow Asset the retraining DAG is scheduled on
WATCHER_DAG_ID = "tl_data_watcher"  # the DAG that emits it (dags/tl_data_watcher.py); only its events name data
SETTLE_SECONDS = 5.0                # between the two looks of one check (TL_WATCH_SETTLE_S)
_SKIPPED_PREFIXES = (".", "~")      # hidden and temporary files (editors, partial downloads)
_SKIPPED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")


def watched_source() -> Path | None:
    """The path to watch, from `TL_WATCH_SOURCE`; None when it is not set."""
    dataset = watched_dataset()
    return Path(dataset.partition(":")[2]).expanduser() if dataset else None


def watched_dataset() -> str | None:
    """`TL_WATCH_SOURCE` as a `dataset` setting: `cifar10:<path>` or `folder:<path>` (a bare path); None unset."""
    value = (os.environ.get("TL_WATCH_SOURCE") or "").strip()
    if not value:
        return None
    kind, _, rest = value.partition(":")
    return value if kind in ("folder", "cifar10") and rest.strip() else f"folder:{value}"


def _dataset_of(source: Path) -> str:
    """`source` as a `dataset` setting: TL_WATCH_SOURCE's spelling when it names this source, else folder:<source>."""
    configured = watched_dataset()
    if configured and Path(configured.partition(":")[2]).expanduser().resolve() == Path(source).resolve():
        return configured
    return f"folder:{source}"


def dataset_from_events(triggering_asset_events) -> str | None:
    """The `dataset` named by the newest event of the watcher DAG among a run's triggering asset events
    (Airflow's `triggering_asset_events`), or None. Events from anywhere else (a user POSTing an asset event
    through the REST API) cannot choose the training data."""
    found = None
    for events in (triggering_asset_events or {}).values():
        for event in events or ():
            extra = getattr(event, "extra", None) or {}
            if getattr(event, "source_dag_id", None) == WATCHER_DAG_ID and isinstance(extra, dict) \
                    and extra.get("dataset"):
                found = str(extra["dataset"])
    return found


def dataset_for_run(given: str | None, triggering_asset_events, *, manual: bool) -> str | None:
    """The dataset of a retraining run: the one given (trigger form, CLI); else, for a run the watcher started,
    the data it watched; else, for a scheduled run, `TL_WATCH_SOURCE` (the data this deployment trains on, so
    clock and watcher runs share one lineage); else None: the profile's (a manual smoke run stays synthetic)."""
    if given is not None:
        return given
    return dataset_from_events(triggering_asset_events) or (None if manual else watched_dataset())


def signature(source: Path) -> dict:
    """{digest, files, bytes} of `source`: every file's relative name, size and mtime (ns); missing = no files."""
    entries = []
    if source.is_file():
        st = source.stat()
        entries.append((source.name, st.st_size, st.st_mtime_ns))
    elif source.is_dir():
        for root, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith(_SKIPPED_PREFIXES))
            for name in files:
                if name.startswith(_SKIPPED_PREFIXES) or name.lower().endswith(_SKIPPED_SUFFIXES):
                    continue
                path = Path(root, name)
                try:
                    st = path.stat()
                except FileNotFoundError:  # removed while we looked: the second look tells
                    continue
                entries.append((path.relative_to(source).as_posix(), st.st_size, st.st_mtime_ns))
    entries.sort()
    digest = hashlib.sha256("\n".join(f"{n}\t{s}\t{m}" for n, s, m in entries).encode()).hexdigest()
    return {"digest": digest, "files": len(entries), "bytes": sum(e[1] for e in entries)}


def state_path(source: Path) -> Path:
    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    return layout.watch_root() / f"{config.run_key(source.name or 'source')}-{key}.json"


def check(source: Path | None = None, *, settle_seconds: float | None = None) -> dict:
    """Look at the source twice, `settle_seconds` apart; report a change only when both looks agree and differ
    from the last reported signature. The first check ever records a baseline and reports nothing.

    Returns:
        {changed: bool, reason, source, signature, previous}; when changed, the state file already holds it.
    """
    source = source if source is not None else watched_source()
    if source is None:
        return {"changed": False, "reason": "nothing to watch: set TL_WATCH_SOURCE (a folder or an archive)",
                "source": None, "signature": None, "previous": None}
    if settle_seconds is None:
        settle_seconds = float(os.environ.get("TL_WATCH_SETTLE_S") or SETTLE_SECONDS)
    settle = settle_seconds
    first = signature(source)
    time.sleep(settle)
    second = signature(source)
    path = state_path(source)
    previous = _read_state(path)
    out = {"changed": False, "source": str(source), "dataset": _dataset_of(source), "signature": second,
           "previous": previous.get("signature") if previous else None}
    if first["digest"] != second["digest"]:
        return {**out, "reason": "the source is changing; the next check looks again"}
    if previous is None:
        _write_state(path, source, second)
        return {**out, "reason": "first look: baseline recorded"}
    if previous["signature"]["digest"] == second["digest"]:
        return {**out, "reason": "unchanged"}
    _write_state(path, source, second)
    return {**out, "changed": True,
            "reason": f"changed: {previous['signature']['files']} -> {second['files']} files"}


def _read_state(path: Path) -> dict | None:
    import json

    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:  # a torn or edited file: start again from a baseline, never from a crash
        return None
    return state if isinstance(state, dict) and isinstance(state.get("signature"), dict) else None


def _write_state(path: Path, source: Path, sig: dict) -> None:
    write_json_atomic(path, {"source": str(source), "signature": sig,
                             "recorded_at": datetime.now(UTC).isoformat()})
