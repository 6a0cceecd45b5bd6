"""tl_tasks.data: every source, the splits, the cache, the transaction, and every bad input's error."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data_helpers import CIFAR_NAMES, class_colour, make_tar, make_zip, write_cifar_batches, write_image_folder
from tl_tasks import data, files
from tl_tasks.data import load_prepared, prepare_data, storage
from tl_tasks.data.sources import cifar, folders

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def real(tmp_path_factory, shared_cifar_jpg):
    """The real 60,000-image archive, prepared once for this module (about 10 s on 2 cores)."""
    root = tmp_path_factory.mktemp("real")
    prepared = prepare_data(f"folder:{shared_cifar_jpg}", root / "data", cache_dir=root / "cache")
    return prepared, root


@pytest.fixture
def decode_calls(monkeypatch):
    """Counts calls of the image decoder."""
    calls = []
    original = folders.decode_image

    def counting(blob, image_size):
        calls.append(1)
        return original(blob, image_size)

    monkeypatch.setattr(folders, "decode_image", counting)
    return calls


def _pool(x: np.ndarray, y: np.ndarray) -> list:
    """Order-free view of (image, label) pairs."""
    return sorted((img.tobytes(), int(label)) for img, label in zip(x, y, strict=True))


# --- real data -----------------------------------------------------------------------------------

@pytest.mark.full_data
def test_real_cifar_jpg_counts_and_classes(real):
    prepared, _ = real
    assert prepared.class_names == tuple(CIFAR_CLASSES)
    assert prepared.counts == {"train": 45_000, "val": 5_000, "test": 10_000}
    assert prepared.class_counts["train"] == dict.fromkeys(CIFAR_CLASSES, 4500)
    assert prepared.class_counts["val"] == dict.fromkeys(CIFAR_CLASSES, 500)
    assert prepared.class_counts["test"] == dict.fromkeys(CIFAR_CLASSES, 1000)
    assert prepared.skipped == ()
    meta = json.loads((prepared.path / "meta.json").read_text())
    assert meta == prepared.summary()
    assert meta["counts"]["test"] == 10_000 and meta["skipped_count"] == 0 and len(meta["fingerprint"]) == 64


@pytest.mark.full_data
def test_real_cifar_jpg_pixels_are_plausible(real):
    prepared, _ = real
    ds = load_prepared(prepared.path)
    for x, y, n in ((ds.x_train, ds.y_train, 45_000), (ds.x_val, ds.y_val, 5_000), (ds.x_test, ds.y_test, 10_000)):
        assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
    sample = np.asarray(ds.x_train[:500], dtype=np.float64)
    assert 80 < sample.mean() < 180                       # natural images, not blank or saturated
    assert sample.std() > 30
    assert (sample.reshape(500, -1).std(axis=1) > 1).all()  # no flat (failed) images
    # test keeps source order: class by class; train is shuffled
    assert list(ds.y_test[:1000]) == [0] * 1000 and list(ds.y_test[-1000:]) == [9] * 1000
    assert len(np.unique(ds.y_train[:100])) > 5


@pytest.mark.full_data
def test_real_cifar_jpg_limit_reuses_the_cache(real, decode_calls, tmp_path):
    prepared, root = real
    small = prepare_data(f"folder:{prepared.source.split(':', 1)[1]}", tmp_path / "small", limit_per_class=50,
                         cache_dir=root / "cache")
    assert decode_calls == []                              # nothing decoded: the module fixture filled the cache
    assert small.counts == {"train": 450, "val": 50, "test": 100}
    assert set(small.class_counts["val"].values()) == {5} and set(small.class_counts["test"].values()) == {10}


# --- cifar10:<path> (pickle batches) -------------------------------------------------------------

@pytest.mark.parametrize("layout", ["batches_dir", "parent_dir", "tar_gz"])
def test_cifar10_local_batches(tmp_path, layout):
    expected = write_cifar_batches(tmp_path / "src" / "cifar-10-batches-py", per_batch=20)
    src = {"batches_dir": tmp_path / "src" / "cifar-10-batches-py", "parent_dir": tmp_path / "src",
           "tar_gz": make_tar(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz",
                              arcname="cifar-10-batches-py")}[layout]
    prepared = prepare_data(f"cifar10:{src}", tmp_path / "out", val_fraction=0.2)
    ds = load_prepared(tmp_path / "out")
    assert ds.class_names == tuple(CIFAR_NAMES)
    assert prepared.counts["train"] + prepared.counts["val"] == 100 and prepared.counts["test"] == 20
    np.testing.assert_array_equal(ds.x_test, expected["x_test"])   # HWC from row-major CHW, source order
    np.testing.assert_array_equal(ds.y_test, expected["y_test"])
    assert _pool(np.concatenate([ds.x_train, ds.x_val]), np.concatenate([ds.y_train, ds.y_val])) == \
        _pool(expected["x_train"], expected["y_train"])
    # pixel (row 0, col 1) of image 0 is byte 1 (red), 1025 (green), 2049 (blue) of its row
    raw = expected["x_test"][0].transpose(2, 0, 1).reshape(-1)
    assert tuple(ds.x_test[0, 0, 1]) == (raw[1], raw[1025], raw[2049])


def test_cifar10_local_is_cached(tmp_path, monkeypatch):
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    first = prepare_data(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", tmp_path / "out")

    def boom(path):
        raise AssertionError("read the batches again despite the cache")

    monkeypatch.setattr(cifar, "read_batches", boom)
    second = prepare_data(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", tmp_path / "out")
    assert second.fingerprint == first.fingerprint


def test_cifar10_local_resized(tmp_path):
    write_cifar_batches(tmp_path / "b", per_batch=10)
    prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out", image_size=48)
    assert load_prepared(tmp_path / "out").x_val.shape[1:] == (48, 48, 3)


def test_cifar10_local_wrong_shape(tmp_path):
    write_cifar_batches(tmp_path / "b", data_shape=(20, 100))
    with pytest.raises(ValueError, match=r"data_batch_1.*shape \(20, 100\).*expected \(N, 3072\)"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_cifar10_local_label_out_of_range(tmp_path):
    write_cifar_batches(tmp_path / "b", per_batch=3, labels=[0, 1, 12])
    with pytest.raises(ValueError, match=r"label 12 is out of range for 10 classes.*0\.\.9"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_cifar10_local_label_count_mismatch(tmp_path):
    write_cifar_batches(tmp_path / "b", per_batch=4, labels=[0, 1, 2])
    with pytest.raises(ValueError, match=r"3 labels for 4 images"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_cifar10_local_too_few_classes(tmp_path):
    write_cifar_batches(tmp_path / "b", per_batch=3, label_names=["only"])
    with pytest.raises(ValueError, match=r"1 class\(es\) \['only'\]; need at least 2"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_cifar10_local_missing_batch(tmp_path):
    write_cifar_batches(tmp_path / "b")
    (tmp_path / "b" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks data_batch_3.*cifar-10-python.tar.gz"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_cifar10_local_refuses_code_in_pickles(tmp_path):
    write_cifar_batches(tmp_path / "b")
    (tmp_path / "b" / "data_batch_1").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(ValueError, match=r"data_batch_1 is not a CIFAR-10 python batch.*os.system is not allowed"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_cifar10_local_not_a_tar(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"not a tar archive at all")
    with pytest.raises(ValueError, match=r"not a readable tar archive"):
        prepare_data(f"cifar10:{bad}", tmp_path / "out")


# --- cifar10 through keras.datasets (faked: no network here) -------------------------------------

def _fake_keras(monkeypatch, load_data):
    fake = types.SimpleNamespace(datasets=types.SimpleNamespace(cifar10=types.SimpleNamespace(load_data=load_data)))
    monkeypatch.setitem(sys.modules, "keras", fake)


def test_cifar10_download_failure_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    def offline():
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")

    _fake_keras(monkeypatch, offline)
    with pytest.raises(ValueError) as err:
        prepare_data("cifar10", tmp_path / "out")
    msg = str(err.value)
    assert "URL fetch failure" in msg
    assert "cifar10:/path/to/cifar-10-python.tar.gz" in msg and "folder:/path/to/images" in msg
    assert not (tmp_path / "out").exists()


def test_cifar10_download_success(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    x_train, x_test = rng.integers(0, 256, (60, 32, 32, 3), np.uint8), rng.integers(0, 256, (20, 32, 32, 3), np.uint8)
    y_train, y_test = (np.arange(60) % 10).reshape(-1, 1), (np.arange(20) % 10).reshape(-1, 1)
    _fake_keras(monkeypatch, lambda: ((x_train, y_train), (x_test, y_test)))
    prepared = prepare_data("cifar10", tmp_path / "out")
    ds = load_prepared(tmp_path / "out")
    assert prepared.class_names == tuple(CIFAR_CLASSES)
    assert prepared.counts == {"train": 50, "val": 10, "test": 20}
    np.testing.assert_array_equal(ds.y_test, y_test.ravel())


# --- folder:<path> -------------------------------------------------------------------------------

COUNTS = {"train": {"cat": 10, "dog": 10, "emu": 10}, "test": {"cat": 2, "dog": 3, "emu": 4}}


@pytest.mark.parametrize("form", ["dir", "tar_gz", "zip", "tar_gz_top_folder", "zip_top_folder"])
def test_folder_source_forms(tmp_path, form):
    src = write_image_folder(tmp_path / "imgs", COUNTS)
    path = {"dir": src,
            "tar_gz": make_tar(src, tmp_path / "imgs.tar.gz"),
            "zip": make_zip(src, tmp_path / "imgs.zip"),
            "tar_gz_top_folder": make_tar(src, tmp_path / "imgs.tgz", arcname="my-images"),
            "zip_top_folder": make_zip(src, tmp_path / "top.zip", arcname="my-images")}[form]
    prepared = prepare_data(f"folder:{path}", tmp_path / "out", val_fraction=0.2)
    assert prepared.class_names == ("cat", "dog", "emu")
    assert prepared.class_counts == {"train": {"cat": 8, "dog": 8, "emu": 8}, "val": {"cat": 2, "dog": 2, "emu": 2},
                                     "test": {"cat": 2, "dog": 3, "emu": 4}}
    ds = load_prepared(tmp_path / "out")
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        for img, label in zip(x, y, strict=True):   # each image's colour says which class folder it came from
            assert tuple(img[5, 5]) == class_colour(int(label))


def test_folder_without_test_gets_a_stratified_test_split(tmp_path):
    src = write_image_folder(tmp_path / "imgs", {"train": {"a": 12, "b": 36, "c": 60}})
    prepared = prepare_data(f"folder:{src}", tmp_path / "out", val_fraction=0.1)
    assert prepared.class_counts["test"] == {"a": 2, "b": 6, "c": 10}          # 1/6 of each class
    assert prepared.class_counts["val"] == {"a": 1, "b": 3, "c": 5}            # 10% of the rest
    assert prepared.class_counts["train"] == {"a": 9, "b": 27, "c": 45}
    ds = load_prepared(tmp_path / "out")
    for x, y in ((ds.x_test, ds.y_test), (ds.x_train, ds.y_train)):
        assert all(tuple(img[0, 0]) == class_colour(int(label)) for img, label in zip(x, y, strict=True))
    again = prepare_data(f"folder:{src}", tmp_path / "again", val_fraction=0.1)
    assert again.fingerprint == prepared.fingerprint                           # seeded
    other = prepare_data(f"folder:{src}", tmp_path / "other", val_fraction=0.1, seed=7)
    assert other.fingerprint != prepared.fingerprint


def test_folder_images_of_other_sizes_and_modes_are_resized(tmp_path):
    src = write_image_folder(tmp_path / "imgs", {"train": {"big": 4}}, size=(120, 80), ext=".jpg")
    write_image_folder(tmp_path / "imgs", {"train": {"small": 4}}, size=(10, 10))
    Image.new("L", (64, 64), 128).save(src / "train" / "small" / "grey.png")
    prepared = prepare_data(f"folder:{src}", tmp_path / "out")
    ds = load_prepared(tmp_path / "out")
    assert ds.x_train.shape[1:] == (32, 32, 3) and prepared.counts["train"] + prepared.counts["val"] + \
        prepared.counts["test"] == 9
    prepare_data(f"folder:{src}", tmp_path / "out16", image_size=16)
    assert load_prepared(tmp_path / "out16").x_test.shape[1:] == (16, 16, 3)


def test_folder_ignores_hidden_and_non_image_files(tmp_path):
    src = write_image_folder(tmp_path / "imgs", {"train": {"a": 6, "b": 6}})
    (src / "train" / "a" / ".DS_Store").write_bytes(b"\0junk")
    (src / "train" / "a" / "notes.txt").write_text("not an image")
    (src / "train" / "b" / "._0000.png").write_bytes(b"apple double")
    prepared = prepare_data(f"folder:{src}", tmp_path / "out")
    assert sum(prepared.counts.values()) == 12 and prepared.skipped == ()


def test_folder_empty_class_folder(tmp_path):
    src = write_image_folder(tmp_path / "imgs", {"train": {"cat": 3, "dog": 3}})
    (src / "train" / "emu").mkdir()
    with pytest.raises(ValueError, match=r"0 images in class 'emu' \(.*imgs/train/emu\)"):
        prepare_data(f"folder:{src}", tmp_path / "out")


def test_folder_empty_class_folder_in_zip(tmp_path):
    src = write_image_folder(tmp_path / "imgs", {"train": {"cat": 3, "dog": 3}})
    (src / "train" / "emu").mkdir()
    archive = make_zip(src, tmp_path / "imgs.zip", arcname="top")
    with pytest.raises(ValueError, match=r"0 images in class 'emu' \(.*imgs.zip/top/train/emu\)"):
        prepare_data(f"folder:{archive}", tmp_path / "out")


def test_folder_fewer_than_two_classes(tmp_path):
    src = write_image_folder(tmp_path / "imgs", {"train": {"cat": 3}})
    with pytest.raises(ValueError, match=r"1 class folder\(s\) \['cat'\].*at least 2"):
        prepare_data(f"folder:{src}", tmp_path / "out")


def test_folder_without_train(tmp_path):
    src = write_image_folder(tmp_path / "imgs", {"training": {"cat": 3, "dog": 3}})
    with pytest.raises(ValueError, match=r"no train/ folder.*train/<class>/<image>"):
        prepare_data(f"folder:{src}", tmp_path / "out")


def test_folder_test_class_unknown_to_train(tmp_path):
    src = write_image_folder(tmp_path / "imgs", {"train": {"cat": 3, "dog": 3}, "test": {"cat": 1, "cow": 1}})
    with pytest.raises(ValueError, match=r"test/ has class folder\(s\) \['cow'\] that train/ lacks"):
        prepare_data(f"folder:{src}", tmp_path / "out")


def test_folder_unsupported_file(tmp_path):
    bad = tmp_path / "images.rar"
    bad.write_bytes(b"Rar!")
    with pytest.raises(ValueError, match=r"images.rar is neither a folder nor a .tar.gz/.tgz/.tar/.zip"):
        prepare_data(f"folder:{bad}", tmp_path / "out")


# --- unreadable images ---------------------------------------------------------------------------

def test_unreadable_images_below_threshold_are_skipped_and_listed(tmp_path, caplog):
    src = write_image_folder(tmp_path / "imgs", {"train": {"a": 60, "b": 60}, "test": {"a": 10, "b": 10}})
    (src / "train" / "b" / "0007.png").write_bytes(b"\x89PNG broken")
    with caplog.at_level(logging.WARNING, logger="tl_tasks.data"):
        prepared = prepare_data(f"folder:{src}", tmp_path / "out", max_bad_fraction=0.01)
    bad = str(src / "train" / "b" / "0007.png")
    assert prepared.skipped == (bad,)
    assert prepared.counts["train"] + prepared.counts["val"] == 119 and prepared.counts["test"] == 20
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["skipped_count"] == 1 and meta["skipped"] == [bad]
    assert "skipped 1 unreadable image(s) of 140" in caplog.text and bad in caplog.text


def test_unreadable_images_above_threshold_fail_naming_examples(tmp_path):
    src = write_image_folder(tmp_path / "imgs", {"train": {"a": 20, "b": 20}})
    for name in ("0001.png", "0002.png"):
        (src / "train" / "a" / name).write_bytes(b"garbage")
    with pytest.raises(ValueError) as err:
        prepare_data(f"folder:{src}", tmp_path / "out", max_bad_fraction=0.01)
    msg = str(err.value)
    assert "2 of 40 images (5.0%) could not be read" in msg and "max_bad_fraction=0.01" in msg
    assert str(src / "train" / "a" / "0001.png") in msg
    assert not (tmp_path / "out").exists()
    # a larger allowance lets the same data through, from the cache
    prepared = prepare_data(f"folder:{src}", tmp_path / "out", max_bad_fraction=0.1)
    assert len(prepared.skipped) == 2


# --- synthetic -----------------------------------------------------------------------------------

def test_synthetic_is_deterministic_balanced_and_shaped(tmp_path):
    a = prepare_data("synthetic", tmp_path / "a", limit_per_class=40)
    b = prepare_data("synthetic", tmp_path / "b", limit_per_class=40)
    c = prepare_data("synthetic", tmp_path / "c", limit_per_class=40, seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.class_names == tuple(f"class_{k}" for k in range(10))
    assert a.class_counts["train"] == {f"class_{k}": 36 for k in range(10)}
    assert a.class_counts["val"] == {f"class_{k}": 4 for k in range(10)}
    assert a.class_counts["test"] == {f"class_{k}": 8 for k in range(10)}
    ds = load_prepared(tmp_path / "a")
    assert ds.x_train.shape == (360, 32, 32, 3) and ds.x_train.dtype == np.uint8
    np.testing.assert_array_equal(ds.x_train, load_prepared(tmp_path / "b").x_train)
    default = prepare_data("synthetic", tmp_path / "d")
    assert default.counts == {"train": 900, "val": 100, "test": 200}


def test_synthetic_is_learnable(tmp_path):
    """A nearest-centroid classifier on 8x8 thumbnails is far above chance (10%): a CNN learns it in an epoch."""
    prepare_data("synthetic", tmp_path / "s", limit_per_class=30)
    ds = load_prepared(tmp_path / "s")

    def features(x):
        return np.asarray(x, np.float32).reshape(len(x), 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(len(x), -1)

    f_train, f_test = features(ds.x_train), features(ds.x_test)
    centroids = np.stack([f_train[ds.y_train == k].mean(axis=0) for k in range(10)])
    predicted = np.argmin(((f_test[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == ds.y_test).mean() > 0.6


# --- bad options and sources ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, pattern", [
    ({"limit_per_class": 1}, r"limit_per_class=1 is out of range; give a value >= 2 \(or 0 for all\)"),
    ({"limit_per_class": 1.5}, r"limit_per_class=1.5 is not a whole number; give a value >= 2"),
    ({"val_fraction": 0}, r"val_fraction=0 must be a number between 0 and 0.5"),
    ({"val_fraction": 0.7}, r"val_fraction=0.7 must be a number between 0 and 0.5"),
    ({"val_fraction": "0.1"}, r"val_fraction='0.1' must be a number"),
    ({"image_size": 4}, r"image_size=4 must be a whole number of pixels between 8 and 512"),
    ({"max_bad_fraction": 1.5}, r"max_bad_fraction=1.5 must be between 0 and 1"),
    ({"seed": -1}, r"seed=-1 is out of range; give a value >= 0 and <= 4,294,967,295"),
])
def test_bad_options(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        prepare_data("synthetic", tmp_path / "out", **kwargs)


@pytest.mark.parametrize("source", ["imagenet", "folders:/x", "cifar100:/x", "", "http://example.com/data.zip"])
def test_unknown_source_lists_valid_ones(tmp_path, source):
    with pytest.raises(ValueError, match=r"cifar10, cifar10:<path>, folder:<path>, synthetic"):
        prepare_data(source, tmp_path / "out")


@pytest.mark.parametrize("prefix", ["folder", "cifar10"])
def test_missing_path(tmp_path, prefix):
    missing = tmp_path / "nowhere" / "data.tar.gz"
    with pytest.raises(FileNotFoundError, match=rf"{prefix}:.*nowhere/data.tar.gz' does not exist"):
        prepare_data(f"{prefix}:{missing}", tmp_path / "out")


def test_source_without_path(tmp_path):
    with pytest.raises(ValueError, match=r"source='folder:' names no path; give one, e.g. folder:/data/my-images"):
        prepare_data("folder:", tmp_path / "out")


def test_out_dir_that_is_not_a_data_folder_is_not_replaced(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match=r"home' is not empty and holds no meta.json"):
        prepare_data("synthetic", precious, limit_per_class=4)
    assert (precious / "thesis.tex").read_text() == "years of work"


# --- cache, transaction, round trip --------------------------------------------------------------

def test_rerun_hits_the_cache_and_a_changed_source_does_not(tmp_path, decode_calls):
    src = write_image_folder(tmp_path / "imgs", {"train": {"a": 6, "b": 6}})
    archive = make_tar(src, tmp_path / "imgs.tar.gz")
    first = prepare_data(f"folder:{archive}", tmp_path / "out")
    assert len(decode_calls) == 12
    data_cache = Path(os.environ["TL_HOME"]) / "cache"
    assert list(data_cache.iterdir())   # the default cache_dir
    second = prepare_data(f"folder:{archive}", tmp_path / "out")
    assert len(decode_calls) == 12 and second.fingerprint == first.fingerprint
    os.utime(archive, ns=(1, 1))                              # touched, same content: still a hit
    prepare_data(f"folder:{archive}", tmp_path / "out")
    assert len(decode_calls) == 12
    (entry,) = [p for p in data_cache.iterdir() if not p.name.startswith(".")]   # one entry, one version of it
    assert sorted(data_cache.iterdir()) == sorted([entry, *files.version_dirs(entry)]) and entry.is_symlink()


def test_cache_notices_a_file_replaced_with_the_same_size_and_mtime(tmp_path, decode_calls):
    src = write_image_folder(tmp_path / "imgs", {"train": {"a": 6, "b": 6}}, ext=".bmp")
    first = prepare_data(f"folder:{src}", tmp_path / "out", cache_dir=tmp_path / "cache")
    victim = src / "train" / "a" / "0000.bmp"
    st = victim.stat()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(victim)          # BMP: same dimensions, same byte size
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    second = prepare_data(f"folder:{src}", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert len(decode_calls) == 24 and second.fingerprint != first.fingerprint   # decoded again, not stale


def test_folder_dir_cache_notices_new_files(tmp_path, decode_calls):
    src = write_image_folder(tmp_path / "imgs", {"train": {"a": 6, "b": 6}})
    prepare_data(f"folder:{src}", tmp_path / "out", cache_dir=tmp_path / "cache")
    prepare_data(f"folder:{src}", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert len(decode_calls) == 12
    write_image_folder(src, {"train": {"c": 6}})
    prepared = prepare_data(f"folder:{src}", tmp_path / "out", cache_dir=tmp_path / "cache")
    assert prepared.class_names == ("a", "b", "c") and len(decode_calls) == 30


def test_rerun_replaces_files_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "run" / "data"
    first = prepare_data("synthetic", out, limit_per_class=10)
    (out / "stale.npy").write_bytes(b"from an older layout")
    second = prepare_data("synthetic", out, limit_per_class=20)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.npy" for n in data.ARRAY_NAMES] + ["meta.json"])
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["data", os.readlink(out)])  # its one version
    assert json.loads((out / "meta.json").read_text())["fingerprint"] == second.fingerprint != first.fingerprint


def test_a_crash_while_writing_keeps_the_previous_data(tmp_path, monkeypatch):
    out = tmp_path / "data"
    first = prepare_data("synthetic", out, limit_per_class=10)
    real_save = np.save
    saved = []

    def crash_after_two(path, array, *args, **kwargs):
        if len(saved) == 2:
            raise OSError("disk full")
        saved.append(path)
        real_save(path, array, *args, **kwargs)

    monkeypatch.setattr(storage.np, "save", crash_after_two)
    with pytest.raises(OSError, match="disk full"):
        prepare_data("synthetic", out, limit_per_class=20)
    monkeypatch.setattr(storage.np, "save", real_save)
    assert load_prepared(out).fingerprint == first.fingerprint
    assert load_prepared(out).y_train.shape == (first.counts["train"],)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "tl_home") == sorted(["data", os.readlink(out)])


def test_load_prepared_round_trip(tmp_path):
    prepared = prepare_data("synthetic", tmp_path / "out", limit_per_class=10)
    ds = load_prepared(tmp_path / "out")
    assert ds.class_names == prepared.class_names and ds.fingerprint == prepared.fingerprint
    assert ds.meta == prepared.summary() and ds.num_classes == 10
    assert isinstance(ds.x_train, np.memmap) and not ds.x_train.flags.writeable
    arrays = {n: np.asarray(getattr(ds, n)) for n in data.ARRAY_NAMES}
    assert storage.fingerprint_arrays(arrays, ds.class_names) == prepared.fingerprint
    assert json.loads(json.dumps(prepared.summary())) == prepared.summary()


def test_load_prepared_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a prepared data folder \(missing x_train.npy.*run prepare_data"):
        load_prepared(tmp_path / "nothing")


def test_load_prepared_reads_a_run_layout_and_checks_the_contract(tmp_path):
    from tl_tasks.data import load_array
    from tl_tasks.errors import BadInput, MissingInput
    from tl_tasks.layout import RunLayout

    layout = RunLayout("reader-run")
    prepared = prepare_data("synthetic", layout.data_dir, limit_per_class=10)
    assert load_prepared(layout).fingerprint == prepared.fingerprint
    np.testing.assert_array_equal(load_array(layout, "y_test"), load_prepared(layout.data_dir).y_test)
    y_val = np.array(load_array(layout, "y_val"))
    np.save(layout.data_file("y_val"), np.full(len(y_val), 10, dtype=np.int64))   # class 10 of 10
    with pytest.raises(BadInput, match=r"y_val.npy has labels 10..10 .*expected whole numbers 0..9"):
        load_prepared(layout)
    np.save(layout.data_file("y_val"), y_val)
    np.save(layout.data_file("x_test"), np.zeros((3, 8, 8, 3), np.float32))
    with pytest.raises(BadInput, match=r"x_test.npy holds float32 \(3, 8, 8, 3\); expected uint8 images"):
        load_prepared(layout)
    layout.data_file("y_test").unlink()
    with pytest.raises(MissingInput, match=r"y_test.npy is missing.*rerun prepare_data"):
        load_array(layout, "y_test")
    with pytest.raises(ValueError, match=r"name='z_test' is not a prepared array"):
        load_array(layout, "z_test")


def test_importing_data_does_not_import_keras_or_tensorflow():
    code = ("import sys, tl_tasks.data; "
            "bad = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr


def test_limit_per_class_zero_means_all_images_as_in_the_schema(tmp_path):
    every = prepare_data("synthetic", tmp_path / "none", limit_per_class=None)
    zero = prepare_data("synthetic", tmp_path / "zero", limit_per_class=0)
    assert zero.summary()["counts"] == every.summary()["counts"]
    assert zero.summary()["fingerprint"] == every.summary()["fingerprint"]
