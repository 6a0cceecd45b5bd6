"""Limits on hostile or broken sources: every read is bounded in size, count and kind (regular files only).

Other modules read the limits as `limits.MAX_...` at call time, so a test can lower one in one place.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from tl_tasks.errors import BadInput

MAX_BATCH_FILE_BYTES = 64 * 2**20      # a CIFAR-10 python batch is 30 MiB; checked before reading
MAX_IMAGE_FILE_BYTES = 32 * 2**20      # one image file (folder, tar or zip member); larger ones are skipped
MAX_ENTRIES = 1_000_000                # files + folders in a folder source (CIFAR-10 as images: 60 000)
MAX_TOTAL_BYTES = 2 * 2**30            # uncompressed bytes of all members of an archive (bounds the time; the
                                       # CIFAR-10 JPEG tar is 93 MB; skipping a member still decompresses it)
MAX_IMAGE_PIXELS = 50_000_000          # width x height of one image, read from its header before decoding


class Skip(OSError):
    """One member that is not read (not a regular file, too large): skipped and listed like a broken image."""


def read_capped(f, limit: int, where: str) -> bytes:
    """At most `limit` bytes from file object `f`; Skip when there are more (never reads more than limit+1)."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise Skip(f"{where} holds more than {limit} bytes, the limit for one file")
    return data


def read_regular_file(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most `limit`: a symlink, FIFO or device is refused before it is opened
    (O_NOFOLLOW | O_NONBLOCK, then fstat), and the size is checked before reading."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise Skip(f"{path} is not a regular file ({file_kind(st.st_mode)}); only regular files are read")
    if st.st_size > limit:
        raise Skip(f"{path} is {st.st_size} bytes, more than the limit of {limit} for one file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):   # replaced between lstat and open
            raise Skip(f"{path} is not a regular file; only regular files are read")
        return read_capped(f, limit, str(path))


def file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def check_archive_budget(path: Path, entries: int, total_bytes: int) -> None:
    if entries > MAX_ENTRIES:
        raise BadInput(f"source {str(path)!r} has more than {MAX_ENTRIES} entries; that is not an image dataset "
                       "this workflow reads (split it, or remove what is not train/<class>/<image>)")
    if total_bytes > MAX_TOTAL_BYTES:
        raise BadInput(f"source {str(path)!r} unpacks to more than {MAX_TOTAL_BYTES} bytes, the limit for one "
                       "source (an archive bomb, or far more data than CIFAR-sized training needs)")

