"""Data sources (cifar10, cifar10:<path>, folder:<path>, synthetic) -> validated uint8 arrays + fingerprint.

`prepare_data` writes train/val/test `.npy` files and `meta.json` as one transaction. `load_prepared` (all of
them, checked) and `load_array` (one array) are their only readers: train, evaluate, the gate and reports use
them. File names come from `tl_tasks.layout`. Modules:

    sources/   cifar (pickle batches + Keras download), folders (folder/tar/zip), synthetic
    limits     bounds on hostile sources (sizes, counts, pixels) and bounded reads
    splitting  checks of a decoded source, stratified splits and limits
    storage    PreparedData, Dataset, load_prepared, load_array, the transactional writer, fingerprints
    caching    the decode cache
    prepare    prepare_data (and its option checks)
"""
from tl_tasks.data.prepare import prepare_data
from tl_tasks.data.sources import SOURCES
from tl_tasks.data.sources.cifar import CIFAR10_CLASSES
from tl_tasks.data.storage import (
    ARRAY_NAMES,
    SPLITS,
    Dataset,
    PreparedData,
    fingerprint_test_set,
    load_array,
    load_prepared,
)

__all__ = [
    "ARRAY_NAMES", "CIFAR10_CLASSES", "SOURCES", "SPLITS", "Dataset", "PreparedData", "fingerprint_test_set",
    "load_array", "load_prepared", "prepare_data",
]
