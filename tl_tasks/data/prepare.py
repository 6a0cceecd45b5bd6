"""`prepare_data`: decode a source, check it, split it and write the prepared arrays as one transaction."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from tl_tasks import schema
from tl_tasks.data.sources import decode_source, parse_source
from tl_tasks.data.splitting import check_bad_fraction, check_raw, split
from tl_tasks.data.storage import SPLITS, PreparedData, fingerprint_arrays, fingerprint_test_set, write_prepared
from tl_tasks.errors import BadInput
from tl_tasks.layout import cache_root

log = logging.getLogger(__name__)

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
            (default `tl_tasks.layout.cache_root()`), so a rerun does not decode again.

    Returns:
        PreparedData; train and val are shuffled (seeded), test keeps source order (class, then file).
    """
    limit_per_class = _check_options(limit_per_class, val_fraction, seed, image_size, max_bad_fraction)
    kind, path = parse_source(source)
    if cache_dir is None:
        cache_dir = cache_root()
    started = time.perf_counter()
    raw = decode_source(kind, path, image_size=image_size, seed=seed, limit_per_class=limit_per_class,
                        cache_dir=Path(cache_dir))
    check_bad_fraction(raw, max_bad_fraction)
    check_raw(raw, source, image_size)
    arrays = split(raw, limit_per_class=limit_per_class, val_fraction=val_fraction, seed=seed)
    fingerprint = fingerprint_arrays(arrays, raw.class_names)
    names = raw.class_names
    prepared = PreparedData(
        path=Path(out_dir).expanduser().resolve(), source=source, class_names=names,
        counts={s: len(arrays[f"y_{s}"]) for s in SPLITS},
        class_counts={s: {n: int(c) for n, c in zip(names, np.bincount(arrays[f"y_{s}"], minlength=len(names)), strict=True)}
                      for s in SPLITS},
        fingerprint=fingerprint, test_fingerprint=fingerprint_test_set(arrays["x_test"], arrays["y_test"], names),
        skipped=raw.skipped, image_size=image_size, seed=seed,
        val_fraction=val_fraction, limit_per_class=limit_per_class,
    )
    write_prepared(prepared.path, arrays, prepared.summary())
    log.info("prepared %s -> %s: %s in %.1f s (fingerprint %s)", source, prepared.path, prepared.counts,
             time.perf_counter() - started, fingerprint[:12])
    return prepared


# --- options ---------------------------------------------------------------------------------------

def _check_options(limit_per_class, val_fraction, seed, image_size, max_bad_fraction) -> int | None:
    """The settings through their one schema (tl_tasks.schema); the stored data size and the bad-image share are
    data-only options, checked here. Returns limit_per_class with the schema's "all images" value as None."""
    limit_per_class, seed, val_fraction = (_plain(v) for v in (limit_per_class, seed, val_fraction))
    limit_per_class = schema.check("limit_per_class", limit_per_class)
    if limit_per_class == schema.get("limit_per_class").all_value:
        limit_per_class = None
    schema.check("seed", seed)
    schema.check_val_fraction(val_fraction)
    if not (_is_int(image_size) and 8 <= image_size <= 512):
        raise BadInput(f"image_size={image_size!r} must be a whole number of pixels between 8 and 512 "
                         "(CIFAR-10 is 32)")
    if not (_is_number(max_bad_fraction) and 0 <= max_bad_fraction < 1):
        raise BadInput(f"max_bad_fraction={max_bad_fraction!r} must be between 0 and 1 "
                         "(0.01 = skip up to 1% unreadable images)")
    return limit_per_class


def _plain(value):
    """A NumPy scalar as the Python number it holds (the schema checks Python types)."""
    return value.item() if isinstance(value, (np.integer, np.floating)) else value


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


