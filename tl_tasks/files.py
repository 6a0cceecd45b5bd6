"""Small file helpers shared by the stages; no heavy imports (the DAG parses modules that use them)."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path


def unique_tmp(path: Path, *, keep_suffix: bool = False) -> Path:
    """A temporary name beside `path`, unique per process and call (two writers never share one)."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".tmp-{tag}-{path.name}" if keep_suffix else f".{path.name}.{tag}.tmp")


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """fsync `tmp`, rename it over `path`, fsync the folder: after a crash the file is either old or new, whole."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON to `path` in one step: a reader or a crash never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
