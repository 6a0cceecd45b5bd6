"""Small file helpers shared by the stages; no heavy imports (the DAG parses modules that use them)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON to `path` in one step: a reader or a crash never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
