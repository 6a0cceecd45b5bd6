"""Data sources -> `Raw` arrays: `cifar10` (Keras download), `cifar10:<path>` (the python pickle batches),
`folder:<path>` (a folder, .tar.gz or .zip of train/<class>/<image>) and `synthetic`.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from tl_tasks.data import caching, limits
from tl_tasks.data.raw import Raw
from tl_tasks.data.roots import check_allowed
from tl_tasks.data.sources.cifar import download_cifar10, read_cifar10
from tl_tasks.data.sources.folders import read_folder
from tl_tasks.data.sources.synthetic import SYNTHETIC_DEFAULT_PER_CLASS, generate
from tl_tasks.errors import BadInput, MissingInput

SOURCES = ("cifar10", "cifar10:<path>", "folder:<path>", "synthetic")


def parse_source(source: str) -> tuple[str, Path | None]:
    """(kind, resolved path or None) of a source string; checks that the path exists under the data roots."""
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
    path = Path(rest.strip()).expanduser()
    resolved = check_allowed(path, f"source={source!r}")   # after resolving symlinks
    if not path.exists():
        raise MissingInput(f"source={source!r}: {str(path)!r} does not exist; check the path "
                           f"(relative paths are resolved from {os.getcwd()!r})")
    mode = os.stat(resolved).st_mode
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise BadInput(f"source={source!r}: {str(resolved)!r} is {limits.file_kind(mode)}; give a folder or an "
                       "archive file")
    if stat.S_ISREG(mode) and os.stat(resolved).st_size > limits.MAX_TOTAL_BYTES:
        raise BadInput(f"source={source!r}: {str(resolved)!r} is larger than {limits.MAX_TOTAL_BYTES} bytes, the limit "
                       "for one source")
    return kind, resolved


def decode_source(kind: str, path: Path | None, *, image_size: int, seed: int, limit_per_class: int | None,
                  cache_dir: Path) -> Raw:
    """Decode a parsed source at `image_size`; file sources go through the decode cache in `cache_dir`."""
    if kind == "synthetic":
        return generate(limit_per_class or SYNTHETIC_DEFAULT_PER_CLASS, seed=seed, image_size=image_size)
    if kind == "cifar10" and path is None:
        return resize_raw(download_cifar10(), image_size)
    loader = {"cifar10": lambda: resize_raw(read_cifar10(path), image_size),
              "folder": lambda: read_folder(path, image_size)}[kind]
    return caching.load_cached(cache_dir, kind, path, image_size, loader)


def _resize_array(x: np.ndarray, image_size: int) -> np.ndarray:
    from PIL import Image

    if x.shape[1:3] == (image_size, image_size):
        return x
    out = np.empty((len(x), image_size, image_size, 3), np.uint8)
    for i, img in enumerate(x):
        out[i] = np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.Resampling.BILINEAR))
    return out


def resize_raw(raw: Raw, image_size: int) -> Raw:
    raw.x_train = _resize_array(raw.x_train, image_size)
    if raw.x_test is not None:
        raw.x_test = _resize_array(raw.x_test, image_size)
    return raw


