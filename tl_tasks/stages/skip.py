"""Skip what did not change: a run whose data fingerprint, training settings and code version all equal the last
successful run's trains nothing (recorded as `skipped: unchanged`, pointing at that run) unless forced."""
from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache

from tl_tasks import __version__, config
from tl_tasks.store.models import CODE_KEY, SKIP_KEY

__all__ = ["CODE_KEY", "SKIP_KEY", "code_version", "skip_note", "training_settings", "unchanged_reason"]


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus the git commit of the checkout when there is one (and a hash of uncommitted
    changes to tracked files, so an edited tree never looks like its commit)."""
    try:
        git = ["git", "-C", str(config.PROJECT_ROOT)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return __version__
        diff = subprocess.run([*git, "diff", "HEAD", "--", "tl_tasks", "reports", "dags"], capture_output=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):  # no git on this worker: the package version alone
        return __version__
    dirty = f".dirty-{hashlib.sha256(diff).hexdigest()[:12]}" if diff.strip() else ""
    return f"{__version__}+{commit.stdout.strip()[:12]}{dirty}"


def training_settings(params: dict | None) -> dict:
    """The parts of a run's stored params that decide what gets trained (gate options, skip notes and
    evaluation-only settings aside)."""
    return {k: v for k, v in (params or {}).items() if k not in ("gate", SKIP_KEY, *config.EVALUATION_ONLY)}


def unchanged_reason(run: dict, previous: dict | None) -> str | None:
    """None when `run` must train; else why it need not: equal to `previous` (the last successful run) in data
    fingerprint, training settings and code version."""
    if previous is None or not run.get("data_fingerprint"):
        return None
    same = (run["data_fingerprint"] == previous.get("data_fingerprint")
            and training_settings(run.get("params")) == training_settings(previous.get("params"))
            and (run.get("versions") or {}).get(CODE_KEY) is not None
            and (run.get("versions") or {}).get(CODE_KEY) == (previous.get("versions") or {}).get(CODE_KEY))
    return "unchanged" if same else None


def skip_note(run: dict | None) -> dict | None:
    """The note of a run recorded as skipped (`{"reason", "same_as"}`), None for a run that trained."""
    return ((run or {}).get("params") or {}).get(SKIP_KEY)
