"""Small data sources written by tests: image folders (dir, tar.gz, zip) and CIFAR-10 python batches."""
from __future__ import annotations

import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from tl_tasks.data import CIFAR10_CLASSES


def class_colour(index: int) -> tuple[int, int, int]:
    """A distinct flat colour per class, so a test can tell from the pixels which label an image got."""
    return (20 + 23 * index, 200 - 17 * index, (90 + 61 * index) % 256)


def write_image_folder(root: Path, counts: dict[str, dict[str, int]], *, size: tuple[int, int] = (32, 32),
                       ext: str = ".png") -> Path:
    """root/<split>/<class>/NNNN<ext>; `counts` is {split: {class: n}}; class i (sorted) gets class_colour(i)."""
    classes = sorted({c for per_split in counts.values() for c in per_split})
    for split, per_class in counts.items():
        for cls, n in per_class.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", size, class_colour(classes.index(cls))).save(folder / f"{i:04d}{ext}")
    return root


def make_tar(src: Path, dest: Path, arcname: str | None = None) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=arcname if arcname is not None else ".")
    return dest


def make_zip(src: Path, dest: Path, arcname: str | None = None) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            name = f"{arcname}/{rel}" if arcname else rel
            if path.is_dir():
                zf.writestr(name + "/", b"")
            else:
                zf.write(path, name)
    return dest


CIFAR_NAMES = list(CIFAR10_CLASSES)


def write_cifar_batches(folder: Path, per_batch: int = 20, *, seed: int = 0, label_names=None,
                        data_shape=None, labels=None) -> dict:
    """cifar-10-batches-py/ in the real pickle format; returns the expected HWC x_train, y_train, x_test, y_test."""
    rng = np.random.default_rng(seed)
    names = CIFAR_NAMES if label_names is None else label_names
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, len(names), per_batch)] if labels is None else list(labels)
        if data_shape is not None:
            data = rng.integers(0, 256, data_shape, dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": y, b"data": data,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(len(y))]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        if data.ndim == 2 and data.shape[1] == 3072:
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(y, np.int64))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in names], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    if len(xs) < 6:
        return {}
    return {"x_train": np.concatenate(xs[:5]), "y_train": np.concatenate(ys[:5]), "x_test": xs[5], "y_test": ys[5]}
