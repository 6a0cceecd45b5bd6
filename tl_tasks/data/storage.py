"""Prepared data on disk: `PreparedData` (what was written), `Dataset` (what is read back), the one reader
`load_prepared`, the transactional writer and the fingerprints (the data's and the test set's lineage key).

File names come from `tl_tasks.layout.DataFiles`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tl_tasks.errors import BadInput, MissingInput
from tl_tasks.files import publish_dir
from tl_tasks.layout import DataFiles

SPLITS = ("train", "val", "test")
ARRAY_NAMES = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
SKIPPED_IN_SUMMARY = 20        # summary() lists this many skipped paths; the count is always exact


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



def load_prepared(where) -> Dataset:
    """The one reader of prepared data: open what `prepare_data` wrote (arrays memory-mapped read-only),
    checked against the data contract (x uint8 NHWC squares, y labels in range, as many labels as images).

    Args:
        where: a `RunLayout` (its data folder) or the path of a prepared data folder.

    Raises:
        MissingInput: the folder or one of its files is missing (naming them and the fix).
        BadInput: a file does not hold what prepare_data writes.
    """
    folder = Path(getattr(where, "data_dir", where)).expanduser()
    files = DataFiles(folder)
    missing = [p.name for p in (*(files.array(a) for a in ARRAY_NAMES), files.meta) if not p.is_file()]
    if missing:
        raise MissingInput(f"data_dir={str(folder)!r} is not a prepared data folder "
                           f"(missing {', '.join(missing)}); run prepare_data(source, data_dir) first")
    try:
        meta = json.loads(files.meta.read_text())
    except ValueError as exc:  # bad content; an OSError (EIO, a stale NFS handle) propagates and is retried
        raise BadInput(f"{files.meta} is not readable JSON ({exc}); rerun prepare_data") from exc
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) < 2:
        raise BadInput(f"{files.meta} has class_names={names!r}; expected a list of at least 2 names; "
                       "rerun prepare_data")
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        arrays[f"x_{split}"], arrays[f"y_{split}"] = _load_split(files, split, len(names))
    return Dataset(**arrays, class_names=tuple(str(n) for n in names), fingerprint=meta.get("fingerprint") or "",
                   meta=meta)


def load_array(where, name: str) -> np.ndarray:
    """One prepared array (`y_test`, ...), memory-mapped read-only, without the other files: what the gate and
    the report need. `where`: a `RunLayout` or a prepared data folder."""
    if name not in ARRAY_NAMES:
        raise ValueError(f"name={name!r} is not a prepared array; use one of {', '.join(ARRAY_NAMES)}")
    path = DataFiles(Path(getattr(where, "data_dir", where)).expanduser()).array(name)
    if not path.is_file():
        raise MissingInput(f"{path} is missing: the run's prepared data is gone or incomplete; rerun prepare_data")
    return np.load(path, mmap_mode="r")


def _load_split(files: DataFiles, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """x (uint8 NHWC, memory-mapped) and y (int64) of one split, checked against the data contract."""
    x_path, y_path = files.array(f"x_{split}"), files.array(f"y_{split}")
    try:
        x, y = np.load(x_path, mmap_mode="r"), np.load(y_path, mmap_mode="r")
    except ValueError as exc:  # not an .npy array (truncated, overwritten); an OSError propagates and is retried
        raise BadInput(f"{x_path.name}/{y_path.name} in {files.folder} cannot be read ({exc}); "
                       "rerun prepare_data") from exc
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != x.shape[2]:
        raise BadInput(f"{x_path} holds {x.dtype} {x.shape}; expected uint8 images (n, size, size, 3)")
    if y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise BadInput(f"{split} split of {files.folder} has {len(x)} images and {len(y)} labels; expected the "
                       f"same number, at least 1")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= num_classes:
        raise BadInput(f"{y_path} has labels {y.min()}..{y.max()} ({y.dtype}); expected whole numbers "
                       f"0..{num_classes - 1} (meta.json lists {num_classes} classes)")
    return x, y.astype(np.int64, copy=False)


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


def fingerprint_arrays(arrays: dict[str, np.ndarray], class_names: tuple[str, ...]) -> str:
    """sha256 over the class names and every prepared array (name, dtype, shape, bytes): the data fingerprint."""
    h = hashlib.sha256(json.dumps(list(class_names)).encode())
    for name in ARRAY_NAMES:
        a = arrays[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def write_prepared(out_dir: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write beside `out_dir`, then rename over it: a rerun replaces everything, a crash leaves no half dataset."""
    files = DataFiles(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"out_dir={str(out_dir)!r} is a file; pass a folder path for the prepared data")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not files.meta.is_file():
        raise BadInput(f"out_dir={str(out_dir)!r} is not empty and holds no {files.meta.name}, so it is not a "
                       "prepared data folder this step may replace; pass a new or empty folder")
    publish_dir(out_dir, lambda tmp: write_arrays(DataFiles(tmp), arrays, meta, indent=2), clean_stale=True)


def write_arrays(files: DataFiles, arrays: dict[str, np.ndarray], meta: dict, *, indent: int | None = None) -> None:
    """Each array as `<name>.npy` plus `meta.json` into a folder (the prepared data's and the cache's format)."""
    for name, array in arrays.items():
        np.save(files.array(name), array)
    files.meta.write_text(json.dumps(meta, indent=indent) + "\n")
