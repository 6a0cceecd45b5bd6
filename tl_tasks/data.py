"""Data sources (cifar10, cifar10:<path>, folder:<path>, synthetic) -> validated uint8 arrays + fingerprint.

`prepare_data` writes train/val/test `.npy` files and `meta.json` as one transaction; `load_prepared` reads them.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import stat
import tarfile
import time
import uuid
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tl_tasks.errors import BadInput, MissingInput

log = logging.getLogger(__name__)

SOURCES = ("cifar10", "cifar10:<path>", "folder:<path>", "synthetic")
SPLITS = ("train", "val", "test")
ARRAY_NAMES = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
TEST_FRACTION = 1 / 6          # carved per class when a folder source has no test/ (CIFAR-10's 10k of 60k)
TEST_LIMIT_RATIO = 5           # limit_per_class=n keeps max(1, n // 5) test images per class (CIFAR-10's ratio)
SYNTHETIC_CLASSES = 10
SYNTHETIC_DEFAULT_PER_CLASS = 100
SKIPPED_IN_SUMMARY = 20        # summary() lists this many skipped paths; the count is always exact
_CACHE_VERSION = "2"
# Limits on hostile or broken sources: every read is bounded in size, count and kind (regular files only).
MAX_BATCH_FILE_BYTES = 64 * 2**20      # a CIFAR-10 python batch is 30 MiB; checked before reading
MAX_IMAGE_FILE_BYTES = 32 * 2**20      # one image file (folder, tar or zip member); larger ones are skipped
MAX_ENTRIES = 1_000_000                # files + folders in a folder source (CIFAR-10 as images: 60 000)
MAX_TOTAL_BYTES = 2 * 2**30            # uncompressed bytes of all members of an archive (bounds the time; the
                                       # CIFAR-10 JPEG tar is 93 MB; skipping a member still decompresses it)
MAX_IMAGE_PIXELS = 50_000_000          # width x height of one image, read from its header before decoding
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, MemoryError)


@dataclass(frozen=True)
class PreparedData:
    """What `prepare_data` wrote: where, from what, how many images per split and class, and its fingerprint."""

    path: Path
    source: str
    class_names: tuple[str, ...]
    counts: dict
    class_counts: dict
    fingerprint: str
    test_fingerprint: str = ""
    skipped: tuple[str, ...] = ()
    image_size: int = 32
    seed: int = 42
    val_fraction: float = 0.1
    limit_per_class: int | None = None

    def summary(self) -> dict:
        """JSON-safe dict for XCom, the metrics database and `meta.json` (at most 20 skipped paths listed)."""
        return {
            "path": str(self.path),
            "source": self.source,
            "class_names": list(self.class_names),
            "num_classes": len(self.class_names),
            "counts": dict(self.counts),
            "class_counts": {split: dict(c) for split, c in self.class_counts.items()},
            "fingerprint": self.fingerprint,
            "test_fingerprint": self.test_fingerprint,
            "skipped_count": len(self.skipped),
            "skipped": list(self.skipped[:SKIPPED_IN_SUMMARY]),
            "image_size": self.image_size,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "limit_per_class": self.limit_per_class,
        }


@dataclass(frozen=True, eq=False)
class Dataset:
    """Prepared arrays (memory-mapped, read-only): x uint8 NHWC, y int64 class indices."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class _Raw:
    """A decoded source before splitting: train pool, optional test split, and what could not be read."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    attempted: int = 0


def prepare_data(source: str, out_dir: Path, *, limit_per_class: int | None = None,
                 val_fraction: float = 0.1, seed: int = 42, image_size: int = 32,
                 max_bad_fraction: float = 0.01, cache_dir: Path | None = None) -> PreparedData:
    """Decode `source`, split it and write `out_dir/{x,y}_{train,val,test}.npy` + `meta.json` atomically.

    Args:
        source: `cifar10` (Keras download), `cifar10:<cifar-10-python.tar.gz or cifar-10-batches-py/>`,
            `folder:<dir, .tar.gz/.tgz/.tar or .zip>` holding `train/<class>/*` and optionally
            `test/<class>/*` (one enclosing top-level folder is fine), or `synthetic`.
        limit_per_class: at most this many images per class in the train pool (before val is carved
            out; a seeded random subset) and at most `max(1, limit_per_class // 5)` per class in test.
            For `synthetic` it is the number generated per class (default 100).
        val_fraction: share of each class of the train pool moved to val (seeded, stratified); test is
            never used for it. A folder source without `test/` first gets 1/6 of each class carved out
            as test (seeded, stratified).
        image_size: side of the stored square images; other sizes are resized (squashed, not cropped).
        max_bad_fraction: unreadable images up to this share are skipped, logged and listed in
            `meta.json`; above it preparation fails naming examples.
        cache_dir: where decoded file sources are kept, keyed by path and the sha256 of their content
            (default `tl_tasks.config.cache_dir()`), so a rerun does not decode again.

    Returns:
        PreparedData; train and val are shuffled (seeded), test keeps source order (class, then file).
    """
    _check_options(limit_per_class, val_fraction, seed, image_size, max_bad_fraction)
    kind, path = _parse_source(source)
    if cache_dir is None:
        from tl_tasks import config
        cache_dir = config.cache_dir()
    started = time.perf_counter()
    raw = _load_raw(kind, path, image_size=image_size, seed=seed, limit_per_class=limit_per_class,
                    cache_dir=Path(cache_dir))
    _check_bad_fraction(raw, max_bad_fraction)
    _check_raw(raw, source, image_size)
    arrays = _split(raw, limit_per_class=limit_per_class, val_fraction=val_fraction, seed=seed)
    fingerprint = _fingerprint(arrays, raw.class_names)
    names = raw.class_names
    prepared = PreparedData(
        path=Path(out_dir).expanduser().resolve(), source=source, class_names=names,
        counts={s: int(len(arrays[f"y_{s}"])) for s in SPLITS},
        class_counts={s: {n: int(c) for n, c in zip(names, np.bincount(arrays[f"y_{s}"], minlength=len(names)))}
                      for s in SPLITS},
        fingerprint=fingerprint, test_fingerprint=fingerprint_test_set(arrays["x_test"], arrays["y_test"], names),
        skipped=raw.skipped, image_size=image_size, seed=seed,
        val_fraction=val_fraction, limit_per_class=limit_per_class,
    )
    _write_transaction(prepared.path, arrays, prepared.summary())
    log.info("prepared %s -> %s: %s in %.1f s (fingerprint %s)", source, prepared.path, prepared.counts,
             time.perf_counter() - started, fingerprint[:12])
    return prepared


def load_prepared(data_dir: Path) -> Dataset:
    """Open what `prepare_data` wrote (arrays memory-mapped read-only)."""
    data_dir = Path(data_dir).expanduser()
    meta_path = data_dir / "meta.json"
    missing = [n for n in (*[f"{a}.npy" for a in ARRAY_NAMES], "meta.json") if not (data_dir / n).is_file()]
    if missing:
        raise MissingInput(f"data_dir={str(data_dir)!r} is not a prepared data folder "
                                f"(missing {', '.join(missing)}); run prepare_data(source, data_dir) first")
    meta = json.loads(meta_path.read_text())
    arrays = {name: np.load(data_dir / f"{name}.npy", mmap_mode="r") for name in ARRAY_NAMES}
    return Dataset(**arrays, class_names=tuple(meta["class_names"]), fingerprint=meta["fingerprint"], meta=meta)


# --- options and sources -------------------------------------------------------------------------

def _check_options(limit_per_class, val_fraction, seed, image_size, max_bad_fraction) -> None:
    if limit_per_class is not None and not (_is_int(limit_per_class) and limit_per_class >= 2):
        raise BadInput(f"limit_per_class={limit_per_class!r} must be a whole number >= 2 (or None for all images)")
    if not (_is_number(val_fraction) and 0 < val_fraction < 0.5):
        raise BadInput(f"val_fraction={val_fraction!r} must be a number between 0 and 0.5 (0.1 = 10% of train)")
    if not (_is_int(seed) and seed >= 0):
        raise BadInput(f"seed={seed!r} must be a whole number >= 0, e.g. seed=42")
    if not (_is_int(image_size) and 8 <= image_size <= 512):
        raise BadInput(f"image_size={image_size!r} must be a whole number of pixels between 8 and 512 "
                         "(CIFAR-10 is 32)")
    if not (_is_number(max_bad_fraction) and 0 <= max_bad_fraction < 1):
        raise BadInput(f"max_bad_fraction={max_bad_fraction!r} must be between 0 and 1 "
                         "(0.01 = skip up to 1% unreadable images)")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _parse_source(source: str) -> tuple[str, Path | None]:
    valid = ", ".join(SOURCES)
    if not isinstance(source, str) or not source.strip():
        raise BadInput(f"source={source!r} is empty or not a string; use one of {valid}")
    source = source.strip()
    if source in ("cifar10", "synthetic"):
        return source, None
    kind, sep, rest = source.partition(":")
    if not sep or kind not in ("cifar10", "folder"):
        raise BadInput(f"source={source!r} is not a known data source; use one of {valid}")
    if not rest.strip():
        raise BadInput(f"source={source!r} names no path; give one, e.g. {kind}:/data/"
                         + ("cifar-10-python.tar.gz" if kind == "cifar10" else "my-images"))
    from tl_tasks.roots import check_allowed

    path = Path(rest.strip()).expanduser()
    resolved = check_allowed(path, f"source={source!r}")   # after resolving symlinks
    if not path.exists():
        raise MissingInput(f"source={source!r}: {str(path)!r} does not exist; check the path "
                           f"(relative paths are resolved from {os.getcwd()!r})")
    mode = os.stat(resolved).st_mode
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise BadInput(f"source={source!r}: {str(resolved)!r} is {_file_kind(mode)}; give a folder or an archive file")
    if stat.S_ISREG(mode) and os.stat(resolved).st_size > MAX_TOTAL_BYTES:
        raise BadInput(f"source={source!r}: {str(resolved)!r} is larger than {MAX_TOTAL_BYTES} bytes, the limit "
                       "for one source")
    return kind, resolved


def _load_raw(kind: str, path: Path | None, *, image_size: int, seed: int, limit_per_class: int | None,
              cache_dir: Path) -> _Raw:
    if kind == "synthetic":
        return _synthetic(limit_per_class or SYNTHETIC_DEFAULT_PER_CLASS, seed=seed, image_size=image_size)
    if kind == "cifar10" and path is None:
        return _resize_raw(_keras_cifar10(), image_size)
    loader = {"cifar10": lambda: _resize_raw(_cifar10_local(path), image_size),
              "folder": lambda: _folder(path, image_size)}[kind]
    key = _cache_key(kind, path, image_size)
    entry = cache_dir / f"{kind}-{key[:24]}"
    raw = _read_cache(entry)
    if raw is not None:
        log.info("using decoded %s from cache %s", path, entry)
        return raw
    raw = loader()
    _write_cache(entry, raw, source=f"{kind}:{path}")
    return raw


def _keras_cifar10() -> _Raw:
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # no network, proxy, broken download: all end the same way for the user
        raise BadInput(
            f"source='cifar10' could not load CIFAR-10 through keras.datasets ({type(exc).__name__}: {exc}); "
            "without network access point at a local copy instead: "
            "source='cifar10:/path/to/cifar-10-python.tar.gz' (or its extracted cifar-10-batches-py/ folder) "
            "or source='folder:/path/to/images' (train/<class>/*.jpg, e.g. cifar-10-images-jpg.tar.gz)"
        ) from exc
    return _Raw(np.asarray(x_train, np.uint8), np.asarray(y_train).reshape(-1).astype(np.int64),
                np.asarray(x_test, np.uint8), np.asarray(y_test).reshape(-1).astype(np.int64),
                CIFAR10_CLASSES, attempted=len(x_train) + len(x_test))


# --- cifar10:<path> (the python pickle batches) --------------------------------------------------

_PICKLE_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"})


class _NdarrayMarker:
    """What a pickle gets for numpy.ndarray: only usable as _reconstruct's subtype, never called (ndarray(shape)
    would allocate any size from a few bytes of pickle)."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray(...) called directly is not allowed in a CIFAR-10 batch file")


_NDARRAY = _NdarrayMarker()


def _safe_encode(obj, encoding="utf-8", errors="strict"):
    """`_codecs.encode` as protocol-2 pickles of bytes use it (latin-1 only: no size-growing codecs)."""
    if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(obj).__name__}, {encoding!r}) is not allowed in a "
                                     "CIFAR-10 batch file (only latin-1 bytes)")
    return obj.encode("latin-1", errors)


def _safe_dtype(spec, *args):
    if not isinstance(spec, str) or spec.lstrip("<>|=") not in _PICKLE_DTYPES:
        raise pickle.UnpicklingError(f"dtype {spec!r} is not allowed in a CIFAR-10 batch file "
                                     f"(allowed: {sorted(_PICKLE_DTYPES)})")
    return np.dtype(spec, *args)


def _safe_reconstruct(subtype, shape, dtype_code):
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed in a CIFAR-10 batch file")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and 0 <= n <= 1 for n in shape)):
        raise pickle.UnpicklingError(f"array placeholder shape {shape!r} is not allowed (numpy pickles use (0,))")
    # the real size comes from the data in __setstate__, whose length numpy checks against the shape
    return np.ndarray.__new__(np.ndarray, shape, np.uint8)


def _safe_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "uifb":
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} is not allowed in a CIFAR-10 batch file")
    return np.frombuffer(bytes(data or b""), dtype, count=1)[0]


def _safe_frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "uifb":
        raise pickle.UnpicklingError(f"array of dtype {dtype!r} is not allowed in a CIFAR-10 batch file")
    return np.frombuffer(buf, dtype).reshape(shape, order=order)


class _CifarUnpickler(pickle.Unpickler):
    """Only what the CIFAR-10 batches hold (dicts, lists, bytes, numeric numpy arrays), nothing that runs code
    or grows memory beyond the file's size: no codecs but latin-1, no object arrays, no arrays allocated from a
    shape alone (the file size itself is capped before reading)."""

    _ALLOWED = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _safe_dtype,
                ("_codecs", "encode"): _safe_encode} | {
        (mod, name): fn for mod in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                                    "numpy._core.numeric")
        for name, fn in (("_reconstruct", _safe_reconstruct), ("scalar", _safe_scalar),
                         ("_frombuffer", _safe_frombuffer))}

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch file") from None


def _cifar10_local(path: Path) -> _Raw:
    blobs = _read_cifar_batches(path)
    meta = _unpickle(blobs["batches.meta"], "batches.meta")
    names = _get(meta, "label_names", "batches.meta")
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(class_names) < 2:
        raise BadInput(f"batches.meta in {str(path)!r} lists {len(class_names)} class(es) {list(class_names)}; "
                         "need at least 2: is this a CIFAR-10 batches file?")
    xs, ys = [], []
    for name in CIFAR10_BATCHES[:-1]:
        batch = _unpickle(blobs[name], name)
        data = np.asarray(_get(batch, "data", name))
        labels = np.asarray(_get(batch, "labels", name)).reshape(-1)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise BadInput(f"{name} in {str(path)!r}: 'data' has shape {data.shape}; expected (N, 3072) "
                             "= N images of 3x32x32 uint8, row-major channels first (the CIFAR-10 python format)")
        if data.dtype != np.uint8 and (data.min(initial=0) < 0 or data.max(initial=0) > 255):
            raise BadInput(f"{name} in {str(path)!r}: 'data' values are outside 0..255; expected uint8 pixels")
        if len(labels) != len(data):
            raise BadInput(f"{name} in {str(path)!r}: {len(labels)} labels for {len(data)} images; "
                             "each image needs exactly one label")
        bad = labels[(labels < 0) | (labels >= len(class_names))] if len(labels) else labels
        if len(bad):
            raise BadInput(f"{name} in {str(path)!r}: label {int(bad[0])} is out of range for "
                             f"{len(class_names)} classes {list(class_names)} (valid: 0..{len(class_names) - 1})")
        xs.append(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels.astype(np.int64))
    x_train, y_train = np.concatenate(xs[:-1]), np.concatenate(ys[:-1])
    return _Raw(np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(xs[-1]), ys[-1], class_names,
                attempted=len(x_train) + len(xs[-1]))


def _read_cifar_batches(path: Path) -> dict[str, bytes]:
    """The raw bytes of data_batch_1..5, test_batch and batches.meta from a folder or a tar archive."""
    blobs: dict[str, bytes] = {}
    if path.is_dir():
        folder = path if (path / "batches.meta").exists() or not (path / "cifar-10-batches-py").is_dir() \
            else path / "cifar-10-batches-py"
        for name in CIFAR10_BATCHES:
            if os.path.lexists(folder / name):
                try:
                    blobs[name] = _read_regular_file(folder / name, MAX_BATCH_FILE_BYTES)
                except _Skip as exc:
                    raise BadInput(f"source cifar10:{path}: {exc}") from None
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                total = 0
                for i, member in enumerate(tar):
                    total += max(member.size, 0)
                    _check_archive_budget(path, i + 1, total)
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in CIFAR10_BATCHES and base not in blobs:
                        if member.size > MAX_BATCH_FILE_BYTES:
                            raise BadInput(f"{base} in {str(path)!r} is {member.size} bytes, more than a CIFAR-10 "
                                           f"batch can be ({MAX_BATCH_FILE_BYTES} bytes); is this a CIFAR-10 archive?")
                        blobs[base] = _read_capped(tar.extractfile(member), MAX_BATCH_FILE_BYTES, f"{path}/{base}")
        except _Skip as exc:
            raise BadInput(f"source cifar10:{path}: {exc}") from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BadInput(f"source cifar10:{path} is not a readable tar archive ({exc}); give the "
                           "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
                           "or its extracted cifar-10-batches-py/ folder") from exc
    missing = [n for n in CIFAR10_BATCHES if n not in blobs]
    if missing:
        raise MissingInput(f"source cifar10:{path} lacks {', '.join(missing)}; expected the CIFAR-10 python "
                                f"version ({', '.join(CIFAR10_BATCHES)}), e.g. cifar-10-python.tar.gz "
                                "or its extracted cifar-10-batches-py/ folder")
    return blobs


def _unpickle(blob: bytes, name: str) -> dict:
    try:
        obj = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:
        raise BadInput(f"{name} is not a CIFAR-10 python batch (unpickling failed: {exc})") from exc
    if not isinstance(obj, dict):
        raise BadInput(f"{name} holds a {type(obj).__name__}, not the dict of a CIFAR-10 python batch")
    return obj


def _get(d: dict, key: str, name: str):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise BadInput(f"{name} has no {key!r} entry (keys: {sorted(map(str, d))}); is this a CIFAR-10 python batch?")


# --- bounded reads ------------------------------------------------------------------------------

class _Skip(OSError):
    """One member that is not read (not a regular file, too large): skipped and listed like a broken image."""


def _read_capped(f, limit: int, where: str) -> bytes:
    """At most `limit` bytes from file object `f`; _Skip when there are more (never reads more than limit+1)."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise _Skip(f"{where} holds more than {limit} bytes, the limit for one file")
    return data


def _read_regular_file(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most `limit`: a symlink, FIFO or device is refused before it is opened
    (O_NOFOLLOW | O_NONBLOCK, then fstat), and the size is checked before reading."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _Skip(f"{path} is not a regular file ({_file_kind(st.st_mode)}); only regular files are read")
    if st.st_size > limit:
        raise _Skip(f"{path} is {st.st_size} bytes, more than the limit of {limit} for one file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):   # replaced between lstat and open
            raise _Skip(f"{path} is not a regular file; only regular files are read")
        return _read_capped(f, limit, str(path))


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def _check_archive_budget(path: Path, entries: int, total_bytes: int) -> None:
    if entries > MAX_ENTRIES:
        raise BadInput(f"source {str(path)!r} has more than {MAX_ENTRIES} entries; that is not an image dataset "
                       "this workflow reads (split it, or remove what is not train/<class>/<image>)")
    if total_bytes > MAX_TOTAL_BYTES:
        raise BadInput(f"source {str(path)!r} unpacks to more than {MAX_TOTAL_BYTES} bytes, the limit for one "
                       "source (an archive bomb, or far more data than CIFAR-sized training needs)")


# --- folder:<path> (image folders as a directory, tar or zip) ------------------------------------

def _folder(path: Path, image_size: int) -> _Raw:
    """Decode train/<class>/* and test/<class>/* images; one enclosing top-level folder is allowed."""
    dirs: set[str] = set()
    decoded: dict[str, np.ndarray | None] = {}   # name relative to the source -> image, None if unreadable
    errors: dict[str, str] = {}
    from tl_tasks.progress import Progress

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
    return _Raw(x_train, y_train, x_test, y_test, class_names, skipped, attempted)


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
            decoded[name] = _decode_image(read(), image_size)
        except _DECODE_ERRORS as exc:
            decoded[name] = None
            errors[name] = f"{type(exc).__name__}: {exc}"
        progress.update()


def _walk_source(path: Path) -> Iterator[tuple[str, bool, Callable[[], bytes] | None]]:
    """(name relative to `path` with '/' separators, is_dir, read bytes) for a directory, tar or zip.

    Bounded: at most MAX_ENTRIES entries and MAX_TOTAL_BYTES in all (BadInput beyond), and `read` returns at most
    MAX_IMAGE_FILE_BYTES of a regular file; it raises _Skip (an OSError) for anything else (symlink, FIFO,
    device, a member too large), so that member is skipped and listed like an unreadable image.
    """
    entries = 0
    if path.is_dir():
        for top, dirnames, filenames in os.walk(path):   # does not follow symlinked folders
            dirnames.sort()
            entries += len(dirnames) + len(filenames)
            _check_archive_budget(path, entries, 0)
            rel = os.path.relpath(top, path).replace(os.sep, "/")
            prefix = "" if rel == "." else rel + "/"
            for d in dirnames:
                yield prefix + d, True, None
            for f in sorted(filenames):
                full = Path(top) / f
                yield prefix + f, False, (lambda full=full: _read_regular_file(full, MAX_IMAGE_FILE_BYTES))
        return
    lower = path.name.lower()
    if lower.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                _check_archive_budget(path, len(infos), 0)
                declared = 0
                for info in infos:
                    declared += info.file_size
                    _check_archive_budget(path, len(infos), declared)
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
                    _check_archive_budget(path, entries, total)
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
        raise _Skip(f"{where} is not a regular file ({_file_kind(mode)}); only regular files are read")
    if info.file_size > MAX_IMAGE_FILE_BYTES:
        raise _Skip(f"{where} unpacks to {info.file_size} bytes, more than the limit of {MAX_IMAGE_FILE_BYTES}")
    try:
        with zf.open(info) as f:
            return _read_capped(f, MAX_IMAGE_FILE_BYTES, where)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise _Skip(f"{where} could not be unpacked ({type(exc).__name__}: {exc})") from exc


def _read_tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> bytes:
    where = f"{path}/{member.name}"
    if member.size > MAX_IMAGE_FILE_BYTES:
        raise _Skip(f"{where} is {member.size} bytes, more than the limit of {MAX_IMAGE_FILE_BYTES} for one file")
    try:
        return _read_capped(tar.extractfile(member), MAX_IMAGE_FILE_BYTES, where)
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise _Skip(f"{where} could not be unpacked ({type(exc).__name__}: {exc})") from exc


def _refuse_tar_member(member: tarfile.TarInfo, path: Path) -> bytes:
    kind = ("a sparse file" if member.issparse() else "a symlink" if member.issym() else "a hard link"
            if member.islnk() else "a FIFO" if member.isfifo() else "a device" if member.isdev() else "not a file")
    raise _Skip(f"{path}/{member.name} is {kind}; only regular files are read")


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


def _decode_image(data: bytes, image_size: int) -> np.ndarray:
    """One image file's bytes -> (image_size, image_size, 3) uint8 RGB, squashed to the square size."""
    from PIL import Image

    with warnings.catch_warnings():
        # PIL only warns between MAX_IMAGE_PIXELS and twice that, then decodes fully: make it an error (a skip)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadInput(f"decompression bomb: {exc}") from exc
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            img.close()
            raise BadInput(f"image of {width}x{height} = {width * height} pixels, more than the limit of "
                           f"{MAX_IMAGE_PIXELS} (a decompression bomb, or far larger than training needs)")
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


def _resize_array(x: np.ndarray, image_size: int) -> np.ndarray:
    from PIL import Image

    if x.shape[1:3] == (image_size, image_size):
        return x
    out = np.empty((len(x), image_size, image_size, 3), np.uint8)
    for i, img in enumerate(x):
        out[i] = np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.Resampling.BILINEAR))
    return out


def _resize_raw(raw: _Raw, image_size: int) -> _Raw:
    raw.x_train = _resize_array(raw.x_train, image_size)
    if raw.x_test is not None:
        raw.x_test = _resize_array(raw.x_test, image_size)
    return raw


# --- synthetic -----------------------------------------------------------------------------------

def _synthetic(per_class: int, *, seed: int, image_size: int, num_classes: int = SYNTHETIC_CLASSES) -> _Raw:
    """Class k: stripes at angle k*180/K degrees in a colour of hue k/K, random phase, noise and brightness."""
    rng = np.random.default_rng([seed, 7])
    n_test = max(1, per_class // TEST_LIMIT_RATIO)
    coords = np.arange(image_size, dtype=np.float32)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    hues = np.arange(num_classes) / num_classes
    colours = np.stack([_hue_to_rgb(h) for h in hues]) * 200 + 40

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(num_classes, dtype=np.int64), n)
        angle = np.pi * y / num_classes + rng.normal(0, 0.05, len(y))
        phase = rng.uniform(0, 2 * np.pi, len(y))
        freq = 3.0 * 2 * np.pi / image_size
        proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
        stripes = 0.5 + 0.5 * np.sin(freq * proj + phase[:, None, None])
        brightness = rng.uniform(0.7, 1.1, len(y))[:, None, None, None]
        img = 20 + stripes[..., None] * colours[y][:, None, None, :] * brightness
        img += rng.normal(0, 12, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8), y

    x_train, y_train = make(per_class)
    x_test, y_test = make(n_test)
    names = tuple(f"class_{k}" for k in range(num_classes))
    return _Raw(x_train, y_train, x_test, y_test, names, attempted=len(y_train) + len(y_test))


def _hue_to_rgb(h: float) -> np.ndarray:
    import colorsys

    return np.asarray(colorsys.hsv_to_rgb(h, 0.9, 1.0), np.float32)


# --- checks, splits, fingerprint -----------------------------------------------------------------

def _check_bad_fraction(raw: _Raw, max_bad_fraction: float) -> None:
    n_bad, n = len(raw.skipped), max(raw.attempted, 1)
    if n_bad and n_bad / n > max_bad_fraction:
        raise BadInput(
            f"{n_bad} of {raw.attempted} images ({n_bad / n:.1%}) could not be read, more than "
            f"max_bad_fraction={max_bad_fraction} allows; first: {list(raw.skipped[:5])}. "
            "Fix or remove those files, or raise max_bad_fraction")


def _check_raw(raw: _Raw, source: str, image_size: int) -> None:
    k = len(raw.class_names)
    if k < 2:
        raise BadInput(f"source={source!r} has {k} class(es) {list(raw.class_names)}; need at least 2")
    for split, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if x is None:
            continue
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (image_size, image_size, 3):
            raise BadInput(f"source={source!r}: {split} images have shape {x.shape} dtype {x.dtype}; "
                             f"expected (N, {image_size}, {image_size}, 3) uint8")
        if y.shape != (len(x),):
            raise BadInput(f"source={source!r}: {split} has {len(y)} labels for {len(x)} images")
        if len(y) and (y.min() < 0 or y.max() >= k):
            bad = int(y[(y < 0) | (y >= k)][0])
            raise BadInput(f"source={source!r}: {split} label {bad} is out of range for {k} classes "
                             f"{list(raw.class_names)} (valid: 0..{k - 1})")
    counts = np.bincount(raw.y_train, minlength=k)
    empty = [raw.class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise BadInput(f"source={source!r}: class(es) {empty} have no readable training images; "
                         "add images or remove those classes")


def _split(raw: _Raw, *, limit_per_class: int | None, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    x, y = raw.x_train, raw.y_train
    if raw.x_test is None:
        keep, test = _stratified(y, TEST_FRACTION, np.random.default_rng([seed, 1]))
        x_test, y_test = x[test], y[test]
        x, y = x[keep], y[keep]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    if limit_per_class is not None:
        idx = _limit(y, limit_per_class, np.random.default_rng([seed, 2]))
        x, y = x[idx], y[idx]
        idx = _limit(y_test, max(1, limit_per_class // TEST_LIMIT_RATIO), np.random.default_rng([seed, 3]))
        x_test, y_test = x_test[idx], y_test[idx]
    train, val = _stratified(y, val_fraction, np.random.default_rng([seed, 4]))
    shuffle = np.random.default_rng([seed, 5])
    train, val = shuffle.permutation(train), shuffle.permutation(val)
    arrays = {"x_train": x[train], "y_train": y[train], "x_val": x[val], "y_val": y[val],
              "x_test": x_test, "y_test": y_test}
    return {k: np.ascontiguousarray(v, dtype=np.uint8 if k[0] == "x" else np.int64) for k, v in arrays.items()}


def _stratified(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, part): round(fraction * n) of each class in `part` (>= 1, and >= 1 left), both sorted."""
    rest, part = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = len(idx)
        k = min(max(int(np.floor(n * fraction + 0.5)), 1 if n >= 2 else 0), n - 1)
        chosen = rng.permutation(n)
        part.append(idx[chosen[:k]])
        rest.append(idx[chosen[k:]])
    return _sorted_concat(rest), _sorted_concat(part)


def _limit(y: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most `limit` images per class (a seeded random subset)."""
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(idx if len(idx) <= limit else rng.choice(idx, limit, replace=False))
    return _sorted_concat(keep)


def _sorted_concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def fingerprint_test_set(x_test: np.ndarray, y_test: np.ndarray, class_names) -> str:
    """The lineage key of a test set: sha256 over its images, labels and class names, in order.

    Where the data came from (source string, path, profile) does not count: the same test images compare.
    """
    h = hashlib.sha256(b"tl-test-set/v1\n")
    h.update(json.dumps([str(c) for c in class_names]).encode())
    for name, a in (("x_test", np.asarray(x_test, dtype=np.uint8)), ("y_test", np.asarray(y_test, dtype=np.int64))):
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _fingerprint(arrays: dict[str, np.ndarray], class_names: tuple[str, ...]) -> str:
    h = hashlib.sha256(json.dumps(list(class_names)).encode())
    for name in ARRAY_NAMES:
        a = arrays[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


# --- writing: the data folder and the decode cache -----------------------------------------------

def _write_transaction(out_dir: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write beside `out_dir`, then rename over it: a rerun replaces everything, a crash leaves no half dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"out_dir={str(out_dir)!r} is a file; pass a folder path for the prepared data")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "meta.json").is_file():
        raise BadInput(f"out_dir={str(out_dir)!r} is not empty and holds no meta.json, so it is not a prepared "
                         "data folder this step may replace; pass a new or empty folder")
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in list(parent.glob(f".{out_dir.name}.tmp-*")) + list(parent.glob(f".{out_dir.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)   # left by a crashed earlier attempt
    tmp = parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def _cache_key(kind: str, path: Path, image_size: int) -> str:
    """Changes when the source's content does: sha256 over the bytes of the archive, or over the relative name,
    kind and bytes of every file in a folder (a file replaced with the same size and mtime is noticed)."""
    h = hashlib.sha256(f"{_CACHE_VERSION}|{kind}|{path}|{image_size}".encode())
    if path.is_dir():
        entries = 0
        for top, dirnames, filenames in os.walk(path):
            dirnames.sort()
            entries += len(dirnames) + len(filenames)
            _check_archive_budget(path, entries, 0)
            h.update(f"D {os.path.relpath(top, path)}|{sorted(dirnames)}\n".encode())
            for f in sorted(filenames):
                full = os.path.join(top, f)
                st = os.lstat(full)
                h.update(f"F {os.path.relpath(full, path)}|{_file_kind(st.st_mode)}|{st.st_size}\n".encode())
                if stat.S_ISREG(st.st_mode) and st.st_size <= MAX_IMAGE_FILE_BYTES:
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


def _read_cache(entry: Path) -> _Raw | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        arrays = {n: np.load(entry / f"{n}.npy", mmap_mode="r") for n in meta["arrays"]}
    except (OSError, ValueError, KeyError):
        return None   # no entry, or a damaged one: decode again
    try:
        os.utime(entry / "meta.json")   # last use, for `python -m tl_tasks gc` (evicts entries unused for long)
    except OSError:
        pass
    return _Raw(arrays["x_train"], arrays["y_train"], arrays.get("x_test"), arrays.get("y_test"),
                tuple(meta["class_names"]), tuple(meta["skipped"]), int(meta["attempted"]))


def _write_cache(entry: Path, raw: _Raw, *, source: str) -> None:
    arrays = {"x_train": raw.x_train, "y_train": raw.y_train}
    if raw.x_test is not None:
        arrays.update(x_test=raw.x_test, y_test=raw.y_test)
    meta = {"source": source, "class_names": list(raw.class_names), "skipped": list(raw.skipped),
            "attempted": raw.attempted, "arrays": list(arrays)}
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.parent / f".{entry.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array)
            (tmp / "meta.json").write_text(json.dumps(meta) + "\n")
            _replace_dir(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as exc:  # a cache that cannot be written only costs time on the next run
        log.warning("could not write the data cache %s (%s); the next run decodes again", entry, exc)
