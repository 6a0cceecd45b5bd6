"""Atomic, durable writes (the one owner of "temporary name, fsync, rename") and small file helpers.

No heavy imports (the DAG parses modules that use them); NumPy is imported only by `save_npy_atomic`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
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


def write_atomic(path: Path, write: Callable[[Path], None], *, keep_suffix: bool = False,
                 mode: int | None = None) -> None:
    """Call `write(tmp)` on a unique temporary name beside `path`, then `replace_durably` it over `path`.

    A reader or a crash sees the old file or the new one, whole, never half; on any error the temporary file
    is removed and the error re-raised. `keep_suffix` keeps `path`'s suffix on the temporary name (Keras
    insists on `.keras`). `mode` sets the file's permissions whatever the umask (pages other users serve).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path, keep_suffix=keep_suffix)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: Path, text: str, *, encoding: str = "utf-8", mode: int | None = None) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding=encoding), mode=mode)


def write_json_atomic(path: Path, data: dict, *, default: Callable | None = None) -> None:
    """Write `data` as JSON to `path` in one step: a reader or a crash never sees half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, default=default))


def copy_file_atomic(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` durably (unique temporary name, fsync, rename)."""
    write_atomic(dest, lambda tmp: shutil.copyfile(src, tmp))


def save_npy_atomic(path: Path, array) -> None:
    """`numpy.save` of `array` to `path` (exactly that name: no `.npy` appended), atomically and durably."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    write_atomic(path, write)


def publish_dir(target: Path, build: Callable[[Path], None], *, clean_stale: bool = False) -> None:
    """Build a new version of the folder `target` beside it (`build(tmp)` fills it), then point `target` at it
    with one symlink swap: a reader of `target` finds the old version or the new one, whole, at every moment;
    a crash leaves the old one in place and no half folder under `target`.

    `target` is a symlink to a hidden sibling `.<name>.v-<id>` (see `version_dirs`); the version it replaced is
    removed after the swap. A `target` that is still a plain folder (published before versions existed) is
    moved into a version first, the one step where a reader can briefly miss it. `clean_stale` first removes
    what crashed earlier attempts left beside `target` (only where one writer at a time publishes `target`).
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    if clean_stale:
        current = _link_name(target)
        for stale in [*parent.glob(f".{target.name}.tmp-*"), *parent.glob(f".{target.name}.old-*"),
                      *version_dirs(target)]:
            if stale.name != current:
                shutil.rmtree(stale, ignore_errors=True)
    version = parent / f".{target.name}.v-{uuid.uuid4().hex[:12]}"
    version.mkdir()
    moved = False
    try:
        build(version)
        for top, _, names in os.walk(version):  # the files first: after a crash the new folder is whole, not empty
            for name in names:
                if not os.path.islink(os.path.join(top, name)):
                    fsync_path(Path(top) / name)
            fsync_path(Path(top))
        previous, moved = _link_name(target), False
        if previous is None and target.is_dir():  # a plain folder from before versions: becomes a version
            previous = f".{target.name}.v-{uuid.uuid4().hex[:12]}"
            os.replace(target, parent / previous)
            moved = True
        replace_symlink(target, version.name)
    except BaseException:
        if moved and not os.path.lexists(target):   # put the plain folder back: never leave no target
            os.replace(parent / previous, target)
        if _link_name(target) != version.name:      # a failure after the swap (its fsync) keeps the new one
            shutil.rmtree(version, ignore_errors=True)
        raise
    if previous and previous != version.name and (parent / previous).is_dir():
        shutil.rmtree(parent / previous, ignore_errors=True)


def published_path(target: Path) -> Path:
    """`target` made absolute with the folders above it resolved, but not itself: a `publish_dir` target is a
    link to its current version, and resolving it would name a version that the next publish removes."""
    target = Path(target).expanduser()
    return target.parent.resolve() / target.name


def version_dirs(target: Path) -> list[Path]:
    """The hidden version folders of a `publish_dir` target (the current one among them), sorted by name."""
    target = Path(target)
    return sorted(target.parent.glob(f".{target.name}.v-*"))


def _link_name(target: Path) -> str | None:
    """The version folder `target` points at (a sibling's name), or None when `target` is not such a link."""
    try:
        name = os.readlink(target)
    except OSError:   # missing, or a plain folder
        return None
    return name if os.sep not in name else None


def replace_symlink(link: Path, points_to: str | Path) -> None:
    """Point `link` at `points_to` in one rename: readers see the old target or the new one, never none."""
    link = Path(link)
    tmp = unique_tmp(link)
    try:
        os.symlink(points_to, tmp)
        os.replace(tmp, link)
    except BaseException:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        raise
    fsync_path(link.parent)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
