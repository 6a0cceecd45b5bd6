"""The decode cache: a file source decoded once is kept under `$TL_HOME/cache/<kind>-<key>/` (the arrays +
meta.json), keyed by its path, image size and the sha256 of its content; a hit refreshes the entry's mtime (gc).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tl_tasks.data import limits
from tl_tasks.data.raw import Raw
from tl_tasks.data.storage import write_arrays
from tl_tasks.files import publish_dir
from tl_tasks.layout import DataFiles

log = logging.getLogger(__name__)

CACHE_VERSION = "2"


def load_cached(cache_dir: Path, kind: str, path: Path, image_size: int, decode: Callable[[], Raw]) -> Raw:
    """The decoded source from `cache_dir` when its content is unchanged, else `decode()` (then cached)."""
    entry = cache_dir / f"{kind}-{cache_key(kind, path, image_size)[:24]}"
    raw = read_cache(entry)
    if raw is not None:
        log.info("using decoded %s from cache %s", path, entry)
        return raw
    raw = decode()
    write_cache(entry, raw, source=f"{kind}:{path}")
    return raw


def cache_key(kind: str, path: Path, image_size: int) -> str:
    """Changes when the source's content does: sha256 over the bytes of the archive, or over the relative name,
    kind and bytes of every file in a folder (a file replaced with the same size and mtime is noticed)."""
    h = hashlib.sha256(f"{CACHE_VERSION}|{kind}|{path}|{image_size}".encode())
    if path.is_dir():
        entries = 0
        for top, dirnames, filenames in os.walk(path):
            dirnames.sort()
            entries += len(dirnames) + len(filenames)
            limits.check_archive_budget(path, entries, 0)
            h.update(f"D {os.path.relpath(top, path)}|{sorted(dirnames)}\n".encode())
            for f in sorted(filenames):
                full = os.path.join(top, f)
                st = os.lstat(full)
                h.update(f"F {os.path.relpath(full, path)}|{limits.file_kind(st.st_mode)}|{st.st_size}\n".encode())
                if stat.S_ISREG(st.st_mode) and st.st_size <= limits.MAX_IMAGE_FILE_BYTES:
                    _hash_file(h, full)
    else:
        _hash_file(h, str(path))
    return h.hexdigest()


def _hash_file(h, path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:   # unreadable: its name and error go into the key; decoding reports it
        h.update(f"unreadable {exc.errno}".encode())
        return
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def read_cache(entry: Path) -> Raw | None:
    """The decoded source in cache folder `entry`, or None when there is none or it is damaged."""
    files = DataFiles(entry)
    try:
        meta = json.loads(files.meta.read_text())
        arrays = {n: np.load(files.array(n), mmap_mode="r") for n in meta["arrays"]}
    except (OSError, ValueError, KeyError):
        return None   # no entry, or a damaged one: decode again
    try:
        os.utime(files.meta)   # last use, for `python -m tl_tasks gc` (evicts entries unused for long)
    except OSError:
        pass
    return Raw(arrays["x_train"], arrays["y_train"], arrays.get("x_test"), arrays.get("y_test"),
               tuple(meta["class_names"]), tuple(meta["skipped"]), int(meta["attempted"]))


def write_cache(entry: Path, raw: Raw, *, source: str) -> None:
    """Keep a decoded source in cache folder `entry` (atomically); a failure only logs a warning."""
    arrays = {"x_train": raw.x_train, "y_train": raw.y_train}
    if raw.x_test is not None:
        arrays.update(x_test=raw.x_test, y_test=raw.y_test)
    meta = {"source": source, "class_names": list(raw.class_names), "skipped": list(raw.skipped),
            "attempted": raw.attempted, "arrays": list(arrays)}
    try:
        publish_dir(entry, lambda tmp: write_arrays(DataFiles(tmp), arrays, meta))
    except OSError as exc:  # a cache that cannot be written only costs time on the next run
        log.warning("could not write the data cache %s (%s); the next run decodes again", entry, exc)
