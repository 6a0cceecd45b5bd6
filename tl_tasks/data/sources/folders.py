"""`folder:<path>`: train/<class>/<image> (and optionally test/<class>/<image>) in a folder, a tar or a zip,
walked once with bounded reads and decoded with Pillow."""
from __future__ import annotations

import io
import logging
import os
import stat
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tl_tasks.data import limits
from tl_tasks.data.raw import Raw
from tl_tasks.errors import BadInput
from tl_tasks.progress import Progress

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, MemoryError)


def read_folder(path: Path, image_size: int) -> Raw:
    """Decode train/<class>/* and test/<class>/* images; one enclosing top-level folder is allowed."""
    dirs: set[str] = set()
    decoded: dict[str, np.ndarray | None] = {}   # name relative to the source -> image, None if unreadable
    errors: dict[str, str] = {}
    with Progress(f"decoding {path.name}") as progress:
        _decode_folder(path, image_size, dirs, decoded, errors, progress)
    root = _find_root(path, dirs)
    display = (lambda n: str(path / n)) if path.is_dir() else (lambda n: f"{path}/{n}")
    # (split, class) -> image names, from folders (so that empty ones show up) and from files
    found: dict[tuple[str, str], list[str]] = {}
    for d in dirs:
        rel = _relative(d, root)
        if rel is not None and len(rel) == 2 and rel[0] in ("train", "test"):
            found.setdefault((rel[0], rel[1]), [])
    for name in decoded:
        rel = _relative(name, root)
        if rel is not None and len(rel) >= 3 and rel[0] in ("train", "test"):
            found.setdefault((rel[0], rel[1]), []).append(name)
    where = display(root) if root else str(path)
    class_names = tuple(sorted(c for s, c in found if s == "train"))
    if not class_names:
        raise BadInput(f"folder source {where!r} has no train/<class>/ folders; expected "
                         "train/<class>/<image> (and optionally test/<class>/<image>)")
    if len(class_names) < 2:
        raise BadInput(f"folder source {where!r} has {len(class_names)} class folder(s) {list(class_names)} "
                         "under train/; a classifier needs at least 2: add a folder per class")
    extra = sorted(c for s, c in found if s == "test" and c not in class_names)
    if extra:
        raise BadInput(f"folder source {where!r}: test/ has class folder(s) {extra} that train/ lacks; "
                         f"train/ has {list(class_names)}: rename or remove them")
    for (split, cls), names in sorted(found.items()):
        if not names:
            raise BadInput(f"dataset folder has 0 images in class {cls!r} ({display(_join(root, split, cls))}); "
                             f"add images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder")
    index = {c: i for i, c in enumerate(class_names)}
    out = {}
    bad: list[str] = []
    for split in ("train", "test"):
        xs, ys = [], []
        for key in sorted(k for k in found if k[0] == split):
            for name in sorted(found[key]):
                if decoded[name] is None:
                    bad.append(name)
                else:
                    xs.append(decoded[name])
                    ys.append(index[key[1]])
        out[split] = (np.stack(xs), np.asarray(ys, np.int64)) if xs else (None, None)
    attempted = sum(len(v) for v in found.values())
    if bad:
        log.warning("skipped %d unreadable image(s) of %d in %s; first: %s", len(bad), attempted, where,
                    "; ".join(f"{display(n)} ({errors[n]})" for n in bad[:5]))
    skipped = tuple(display(n) for n in bad)
    x_train, y_train = out["train"]
    if x_train is None:
        raise BadInput(f"folder source {where!r}: none of the {attempted} images under train/ could be read; "
                         f"first: {list(skipped[:5])}")
    x_test, y_test = out["test"]
    return Raw(x_train, y_train, x_test, y_test, class_names, skipped, attempted)


def _decode_folder(path: Path, image_size: int, dirs: set[str], decoded: dict, errors: dict, progress) -> None:
    """Walk the source once: note folders, decode images (None + error for unreadable ones), count progress."""
    for name, is_dir, read in _walk_source(path):
        parts = name.split("/")
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if is_dir:
            dirs.add(name)
            continue
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if Path(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS or len(parts) < 3:
            continue
        try:
            decoded[name] = decode_image(read(), image_size)
        except _DECODE_ERRORS as exc:
            decoded[name] = None
            errors[name] = f"{type(exc).__name__}: {exc}"
        progress.update()


def _walk_source(path: Path) -> Iterator[tuple[str, bool, Callable[[], bytes] | None]]:
    """(name relative to `path` with '/' separators, is_dir, read bytes) for a directory, tar or zip.

    Bounded: at most limits.MAX_ENTRIES entries and limits.MAX_TOTAL_BYTES in all (BadInput beyond), and `read`
    returns at most limits.MAX_IMAGE_FILE_BYTES of a regular file; it raises limits.Skip (an OSError) for anything
    else (symlink, FIFO, device, a member too large), so that member is skipped and listed like an unreadable image.
    """
    entries = 0
    if path.is_dir():
        for top, dirnames, filenames in os.walk(path):   # does not follow symlinked folders
            dirnames.sort()
            entries += len(dirnames) + len(filenames)
            limits.check_archive_budget(path, entries, 0)
            rel = os.path.relpath(top, path).replace(os.sep, "/")
            prefix = "" if rel == "." else rel + "/"
            for d in dirnames:
                yield prefix + d, True, None
            for f in sorted(filenames):
                full = Path(top) / f
                yield prefix + f, False, (lambda full=full: limits.read_regular_file(full, limits.MAX_IMAGE_FILE_BYTES))
        return
    lower = path.name.lower()
    if lower.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                limits.check_archive_budget(path, len(infos), 0)
                declared = 0
                for info in infos:
                    declared += info.file_size
                    limits.check_archive_budget(path, len(infos), declared)
                    yield _clean(info.filename), info.is_dir(), (lambda info=info: _read_zip_member(zf, info, path))
        except zipfile.BadZipFile as exc:
            raise BadInput(f"source folder:{path} is not a readable zip archive ({exc}); "
                           "re-create it or give the extracted folder") from exc
        return
    if lower.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")):
        try:
            # one forward pass, nothing extracted to disk; random-access mode because it skips a member's data
            # 15x faster than streaming mode ("r|*"); the member list is dropped as we go (flat memory)
            with tarfile.open(path, "r:*") as tar:
                total = 0
                while (member := tar.next()) is not None:
                    tar.members.clear()
                    entries += 1
                    total += max(member.size, 0)   # skipping a member still decompresses it: count it too
                    limits.check_archive_budget(path, entries, total)
                    if member.isdir():
                        yield _clean(member.name), True, None
                    elif member.isfile() and not member.issparse():
                        yield _clean(member.name), False, (lambda member=member: _read_tar_member(tar, member, path))
                    else:
                        yield _clean(member.name), False, (lambda member=member: _refuse_tar_member(member, path))
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise BadInput(f"source folder:{path} is not a readable tar archive ({exc}); "
                           "re-create it or give the extracted folder") from exc
        return
    raise BadInput(f"source folder:{path} is neither a folder nor a .tar.gz/.tgz/.tar/.zip archive; "
                   "give a folder holding train/<class>/<image> or such an archive")


def _read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    where = f"{path}/{info.filename}"
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_IFMT(mode) and not stat.S_ISREG(mode):   # 3 = Unix: a file type is set
        raise limits.Skip(f"{where} is not a regular file ({limits.file_kind(mode)}); only regular files are read")
    if info.file_size > limits.MAX_IMAGE_FILE_BYTES:
        raise limits.Skip(f"{where} unpacks to {info.file_size} bytes, more than the limit of "
                          f"{limits.MAX_IMAGE_FILE_BYTES}")
    try:
        with zf.open(info) as f:
            return limits.read_capped(f, limits.MAX_IMAGE_FILE_BYTES, where)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise limits.Skip(f"{where} could not be unpacked ({type(exc).__name__}: {exc})") from exc


def _read_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    where = f"{path}/{member.name}"
    if member.size > limits.MAX_IMAGE_FILE_BYTES:
        raise limits.Skip(f"{where} is {member.size} bytes, more than the limit of {limits.MAX_IMAGE_FILE_BYTES} "
                          "for one file")
    try:
        return limits.read_capped(tar.extractfile(member), limits.MAX_IMAGE_FILE_BYTES, where)
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise limits.Skip(f"{where} could not be unpacked ({type(exc).__name__}: {exc})") from exc


def _refuse_tar_member(member: tarfile.TarInfo, path: Path) -> bytes:
    kind = ("a sparse file" if member.issparse() else "a symlink" if member.issym() else "a hard link"
            if member.islnk() else "a FIFO" if member.isfifo() else "a device" if member.isdev() else "not a file")
    raise limits.Skip(f"{path}/{member.name} is {kind}; only regular files are read")


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def _find_root(path: Path, dirs: set[str]) -> str:
    """'' when train/ is at the top, else the single top-level folder that holds it."""
    if "train" in dirs:
        return ""
    tops = sorted({d.split("/")[0] for d in dirs})
    if len(tops) == 1 and f"{tops[0]}/train" in dirs:
        return tops[0]
    raise BadInput(f"folder source {str(path)!r} has no train/ folder (top level: {tops[:10]}); expected "
                     "train/<class>/<image> and optionally test/<class>/<image>, directly or inside one folder")


def _relative(name: str, root: str) -> list[str] | None:
    if not root:
        return name.split("/")
    if not name.startswith(root + "/"):
        return None
    return name[len(root) + 1:].split("/")


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """One image file's bytes -> (image_size, image_size, 3) uint8 RGB, squashed to the square size."""
    from PIL import Image

    with warnings.catch_warnings():
        # PIL only warns between limits.MAX_IMAGE_PIXELS and twice that, then decodes fully: make it an error (a skip)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadInput(f"decompression bomb: {exc}") from exc
        width, height = img.size
        if width * height > limits.MAX_IMAGE_PIXELS:
            img.close()
            raise BadInput(f"image of {width}x{height} = {width * height} pixels, more than the limit of "
                           f"{limits.MAX_IMAGE_PIXELS} (a decompression bomb, or far larger than training needs)")
        return _decode_opened(img, image_size)


def _decode_opened(img, image_size: int) -> np.ndarray:
    from PIL import Image

    with img:
        if img.format == "JPEG" and min(img.size) > 2 * image_size:
            img.draft("RGB", (image_size, image_size))  # decode large JPEGs at reduced scale: much faster
        rgb = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA") else img.convert("RGB")
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


