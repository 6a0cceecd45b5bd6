"""Data sources (cifar10, cifar10:<path>, folder:<path>, synthetic) -> validated uint8 arrays + fingerprint.

`prepare_data` writes train/val/test `.npy` files and `meta.json` as one transaction; `load_prepared` is the one
reader of them (train, evaluate and reports use it). Modules:

    sources/   cifar (pickle batches + Keras download), folders (folder/tar/zip), synthetic
    limits     bounds on hostile sources (sizes, counts, pixels) and bounded reads
    splitting  checks of a decoded source, stratified splits and limits
    storage    PreparedData, Dataset, load_prepared, the transactional writer, fingerprints
    caching    the decode cache
    prepare    prepare_data (and its option checks)
"""
from tl_tasks.data.prepare import prepare_data
from tl_tasks.data.sources import SOURCES
from tl_tasks.data.sources.cifar import CIFAR10_CLASSES
from tl_tasks.data.storage import ARRAY_NAMES, SPLITS, Dataset, PreparedData, fingerprint_test_set, load_prepared

__all__ = [
    "ARRAY_NAMES", "CIFAR10_CLASSES", "SOURCES", "SPLITS", "Dataset", "PreparedData", "fingerprint_test_set",
    "load_prepared", "prepare_data",
]
