"""Where `dataset="cifar10"` comes from: a local copy when one exists, else Keras's download.

Resolved once, when a run's data is prepared (`resolve_dataset`), in this order:

1. Keras's cache (`$KERAS_HOME` or `~/.keras`, `datasets/cifar-10-batches-py-target/`): what a download left;
   the source stays `cifar10` and Keras reads it without network access;
2. a CIFAR-10 copy in the allowed data roots (`tl_tasks.data.roots`, `TL_DATA_ROOTS`; by default
   `<checkout>/../shared/data` among them): `cifar-10-python.tar.gz` or `cifar-10-batches-py/` (the python
   batches, `cifar10:<path>`), else `cifar-10-images-jpg.tar.gz` or `cifar-10-images-jpg/` (the JPEG images
   in folder format, `folder:<path>`);
3. otherwise `cifar10`: Keras downloads it (the real download path; it fails with the fix when offline).

Every other source is returned unchanged. The concrete source is what the run records (`data_source` in the
metrics database, `source` in the data summary) and logs. Light: no heavy imports.
"""
from __future__ import annotations

import logging
from pathlib import Path

from tl_tasks.config import keras_home
from tl_tasks.data.roots import data_roots

log = logging.getLogger(__name__)

KERAS_DIRNAME = "cifar-10-batches-py-target"      # keras.datasets.cifar10.load_data()'s cache folder
PYTHON_COPIES = ("cifar-10-python.tar.gz", "cifar-10-batches-py")
FOLDER_COPIES = ("cifar-10-images-jpg.tar.gz", "cifar-10-images-jpg")


def keras_cifar10_cache() -> Path:
    """The folder keras.datasets.cifar10 extracts its download into (same rule as Keras: $KERAS_HOME, ~/.keras)."""
    return keras_home() / "datasets" / KERAS_DIRNAME


def resolve_dataset(dataset: str) -> str:
    """The concrete source for `dataset`: `cifar10` becomes a local copy when there is one (see the module)."""
    if not isinstance(dataset, str) or dataset.strip() != "cifar10":
        return dataset
    cached = keras_cifar10_cache()
    if (cached / "cifar-10-batches-py" / "data_batch_1").is_file():
        log.info("dataset cifar10: Keras's cache %s (no download)", cached)
        return "cifar10"
    found = local_copy()
    if found is not None:
        log.info("dataset cifar10: the local copy %s", found)
        return found
    log.info("dataset cifar10: no local copy in Keras's cache or the data roots; Keras downloads it")
    return "cifar10"


def local_copy() -> str | None:
    """`cifar10:<path>` or `folder:<path>` of the first CIFAR-10 copy in the data roots, or None."""
    for root in data_roots():
        for kind, names in (("cifar10", PYTHON_COPIES), ("folder", FOLDER_COPIES)):
            for name in names:
                path = root / name
                if path.is_file() or path.is_dir():
                    return f"{kind}:{path}"
    return None
