"""Allowed data roots: `dataset` and `weights` paths must lie under one of them (checked after resolving symlinks).

`TL_DATA_ROOTS` (os.pathsep-separated folders) replaces the default, which is the project's shared data folder
beside the checkout (`<checkout>/../shared/data`), `<checkout>/data` and `$TL_HOME`. The worker's current
directory is deliberately not a default root: a worker started in `/` would allow the whole filesystem.
"""
from __future__ import annotations

import os
from pathlib import Path

from tl_tasks import config
from tl_tasks.errors import BadInput

ENV = "TL_DATA_ROOTS"


def data_roots() -> tuple[Path, ...]:
    """The allowed roots, resolved (symlinks followed), in order, without duplicates."""
    raw = os.environ.get(ENV)
    if raw is not None and raw.strip():
        entries = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    else:
        entries = [config.PROJECT_ROOT.parent / "shared" / "data", config.PROJECT_ROOT / "data", config.tl_home()]
    roots: list[Path] = []
    for entry in entries:
        resolved = entry.resolve()
        if resolved not in roots:
            roots.append(resolved)
    return tuple(roots)


def check_allowed(path: Path | str, what: str) -> Path:
    """`path` resolved (symlinks followed); BadInput naming the path, the roots and the fix when outside them.

    Args:
        what: how the user named it, e.g. "dataset='folder:/x'" or "weights='/x.h5'".
    """
    resolved = Path(path).expanduser().resolve()
    roots = data_roots()
    if any(resolved == root or root in resolved.parents for root in roots):
        return resolved
    shown = os.pathsep.join(str(r) for r in roots)
    raise BadInput(f"{what}: {str(resolved)!r} is outside the allowed data roots ({shown}); move or copy the "
                   f"data under one of them, or add its folder to {ENV} (os.pathsep-separated) on every worker")
