"""Hostile and broken inputs: pickle bombs, archive bombs, symlinks, FIFOs, huge images, paths outside the roots.

Each case must end with a clear message in bounded time and memory; none may hang, run code or fill memory.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data_helpers import write_cifar_batches, write_image_folder
from tl_tasks.data import limits, prepare_data
from tl_tasks.errors import BadInput

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"train": {"a": 30, "b": 30}}


# --- CIFAR pickle batches ------------------------------------------------------------------------

def _write_batches_then_replace(folder: Path, name: str, blob: bytes) -> None:
    write_cifar_batches(folder, per_batch=4)
    (folder / name).write_bytes(blob)


def test_pickle_codec_bomb_is_refused(tmp_path):
    # _codecs.encode(_codecs.encode(... 'AAAA' ..., 'hex_codec'), 'hex_codec'): 22 steps reach 4 MB, 40 a terabyte
    blob = (b"\x80\x02c_codecs\nencode\nq\x00" + b"h\x00" * 39 + b"X\x04\x00\x00\x00AAAAX\t\x00\x00\x00hex_codec\x86R"
            + b"X\t\x00\x00\x00hex_codec\x86R" * 39 + b".")
    _write_batches_then_replace(tmp_path / "b", "data_batch_1", blob)
    with pytest.raises(BadInput, match=r"data_batch_1 .*_codecs.encode\(str, 'hex_codec'\) is not allowed"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_pickle_ndarray_from_a_shape_is_refused(tmp_path):
    # numpy.ndarray((2**40,)) would allocate a terabyte from a 60-byte pickle
    blob = b"\x80\x02cnumpy\nndarray\nq\x00\x8a\x06\x00\x00\x00\x00\x00\x01\x85\x85R."
    _write_batches_then_replace(tmp_path / "b", "data_batch_2", blob)
    with pytest.raises(BadInput, match=r"data_batch_2 .*numpy.ndarray\(...\) called directly is not allowed"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_pickle_reconstruct_with_a_huge_shape_is_refused(tmp_path):
    blob = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01"
            b"\x8a\x05\x00\x00\x00\x00\x01\x85C\x01b\x87R.")
    _write_batches_then_replace(tmp_path / "b", "test_batch", blob)
    with pytest.raises(BadInput, match=r"test_batch .*placeholder shape \(4294967296,\) is not allowed"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_pickle_object_arrays_are_refused(tmp_path):
    blob = pickle.dumps({b"data": np.array([1, "x"], dtype=object), b"labels": [0, 1]}, protocol=2)
    _write_batches_then_replace(tmp_path / "b", "data_batch_3", blob)
    with pytest.raises(BadInput, match=r"data_batch_3 .*dtype 'O8' is not allowed"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_pickle_file_too_large_is_refused_before_reading(tmp_path, monkeypatch):
    write_cifar_batches(tmp_path / "b", per_batch=4)
    with open(tmp_path / "b" / "data_batch_4", "r+b") as f:   # sparse: 1 GiB on paper, nothing on disk
        f.truncate(2**30)
    read = []
    original = limits.read_capped
    monkeypatch.setattr(limits, "read_capped", lambda f, limit, where: read.append(where) or original(f, limit, where))
    with pytest.raises(BadInput, match=r"data_batch_4 is 1073741824 bytes, more than the limit of 67108864"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")
    assert read and not any(w.endswith("data_batch_4") for w in read)   # the others were read, not this one


def test_pickle_batch_symlink_is_refused(tmp_path):
    write_cifar_batches(tmp_path / "b", per_batch=4)
    (tmp_path / "b" / "data_batch_5").unlink()
    (tmp_path / "b" / "data_batch_5").symlink_to("/dev/zero")
    with pytest.raises(BadInput, match=r"data_batch_5 is not a regular file \(a symlink\)"):
        prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out")


def test_real_format_batches_still_load(tmp_path):
    expected = write_cifar_batches(tmp_path / "b", per_batch=6)
    prepared = prepare_data(f"cifar10:{tmp_path / 'b'}", tmp_path / "out", val_fraction=0.2)
    assert prepared.counts["test"] == 6 and sum(prepared.counts.values()) == len(expected["y_train"]) + 6


# --- image folders and archives ------------------------------------------------------------------

def _skipped(prepared) -> str:
    return json.dumps(prepared.summary()["skipped"])


def test_symlink_to_dev_zero_is_skipped(tmp_path):
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    (src / "train" / "a" / "zero.png").symlink_to("/dev/zero")
    prepared = prepare_data(f"folder:{src}", tmp_path / "out", max_bad_fraction=0.1, cache_dir=tmp_path / "c")
    assert prepared.summary()["skipped_count"] == 1 and "zero.png" in _skipped(prepared)


def test_symlink_message_says_why(tmp_path, caplog):
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    (src / "train" / "a" / "zero.png").symlink_to("/dev/zero")
    prepare_data(f"folder:{src}", tmp_path / "out", max_bad_fraction=0.1, cache_dir=tmp_path / "c")
    assert "is not a regular file (a symlink)" in caplog.text


@pytest.mark.timeout(60)
def test_fifo_is_skipped_not_read(tmp_path, caplog):
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    os.mkfifo(src / "train" / "b" / "pipe.jpg")                  # reading it would block forever
    prepared = prepare_data(f"folder:{src}", tmp_path / "out", max_bad_fraction=0.1, cache_dir=tmp_path / "c")
    assert prepared.summary()["skipped_count"] == 1 and "pipe.jpg" in _skipped(prepared)
    assert "is not a regular file (a FIFO)" in caplog.text


@pytest.mark.timeout(60)
def test_fifo_as_the_source_itself_is_refused(tmp_path):
    os.mkfifo(tmp_path / "data.tar")
    with pytest.raises(BadInput, match=r"data.tar' is a FIFO; give a folder or an archive file"):
        prepare_data(f"folder:{tmp_path / 'data.tar'}", tmp_path / "out")


def _zeros(n: int):
    """A file object of n zero bytes, streamed (never n bytes in memory)."""
    class Zeros(io.RawIOBase):
        left = n

        def readable(self):
            return True

        def readinto(self, b):
            k = min(len(b), self.left)
            b[:k] = bytes(k)
            self.left -= k
            return k
    return io.BufferedReader(Zeros(), 1 << 20)


def _tar_with(src: Path, dest: Path, extra: dict[str, int], mode: str = "w:gz") -> Path:
    with tarfile.open(dest, mode, compresslevel=1) if mode.endswith("gz") else tarfile.open(dest, mode) as tar:
        tar.add(src, arcname=".")
        for name, size in extra.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, _zeros(size))
    return dest


def test_tar_member_too_large_is_skipped_unread(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(limits, "MAX_IMAGE_FILE_BYTES", 2**20)
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    archive = _tar_with(src, tmp_path / "imgs.tar.gz", {"train/a/huge.png": 3 * 2**20})
    prepared = prepare_data(f"folder:{archive}", tmp_path / "out", max_bad_fraction=0.1, cache_dir=tmp_path / "c")
    assert "huge.png" in _skipped(prepared)
    assert "is 3145728 bytes, more than the limit of 1048576" in caplog.text


def test_tar_whose_members_unpack_beyond_the_total_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_TOTAL_BYTES", 4 * 2**20)
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    archive = _tar_with(src, tmp_path / "imgs.tar.gz", {f"junk/{i}.bin": 2**20 for i in range(6)})
    with pytest.raises(BadInput, match=r"unpacks to more than 4194304 bytes"):
        prepare_data(f"folder:{archive}", tmp_path / "out", cache_dir=tmp_path / "c")


def test_sparse_and_special_tar_members_are_skipped(tmp_path, caplog):
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    sparse = src / "train" / "a" / "sparse.png"
    with open(sparse, "wb") as f:
        f.truncate(64 * 2**20)                                   # a hole: 64 MiB that GNU tar stores as sparse
    (src / "train" / "b" / "link.png").symlink_to("/dev/zero")
    archive = tmp_path / "imgs.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(archive), "-C", str(src), "."], check=True)
    prepared = prepare_data(f"folder:{archive}", tmp_path / "out", max_bad_fraction=0.1, cache_dir=tmp_path / "c")
    skipped = _skipped(prepared)
    assert "sparse.png" in skipped and "link.png" in skipped
    assert "is a sparse file; only regular files are read" in caplog.text
    assert "is a symlink; only regular files are read" in caplog.text


def test_zip_bomb_member_is_skipped_unread(tmp_path, caplog):
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted(src.rglob("*.png")):
            zf.write(path, path.relative_to(src).as_posix())
        with zf.open("train/a/bomb.png", "w", force_zip64=True) as f:
            chunk = bytes(2**20)
            for _ in range(100):
                f.write(chunk)                                   # 100 MiB of zeros in about 100 kB
    assert archive.stat().st_size < 2 * 2**20
    prepared = prepare_data(f"folder:{archive}", tmp_path / "out", max_bad_fraction=0.1, cache_dir=tmp_path / "c")
    assert "bomb.png" in _skipped(prepared)
    assert "unpacks to 104857600 bytes, more than the limit of" in caplog.text


def test_zip_with_a_forged_small_size_is_read_no_further(tmp_path, caplog):
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*.png")):
            zf.write(path, path.relative_to(src).as_posix())
        zf.writestr("train/a/liar.png", bytes(8 * 2**20))
    blob = bytearray(archive.read_bytes())
    # forge the declared size (local header and central directory) down to 100 bytes
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (i := blob.find(sig, start)) >= 0:
            name_len = struct.unpack_from("<H", blob, i + (26 if sig == b"PK\x03\x04" else 28))[0]
            name_at = i + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(blob[name_at:name_at + name_len]) == b"train/a/liar.png":
                struct.pack_into("<I", blob, i + offset, 100)
            start = i + 4
    archive.write_bytes(bytes(blob))
    prepared = prepare_data(f"folder:{archive}", tmp_path / "out", max_bad_fraction=0.1, cache_dir=tmp_path / "c")
    assert "liar.png" in _skipped(prepared)


def test_zip_symlink_entry_is_skipped(tmp_path, caplog):
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*.png")):
            zf.write(path, path.relative_to(src).as_posix())
        link = zipfile.ZipInfo("train/b/zero.png")
        link.create_system = 3
        link.external_attr = (0o120777) << 16                    # S_IFLNK: a symlink to /dev/zero
        zf.writestr(link, "/dev/zero")
    prepared = prepare_data(f"folder:{archive}", tmp_path / "out", max_bad_fraction=0.1, cache_dir=tmp_path / "c")
    assert "zero.png" in _skipped(prepared) and "is not a regular file (a symlink)" in caplog.text


def test_too_many_entries_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_ENTRIES", 50)
    src = write_image_folder(tmp_path / "imgs", CLASSES)          # 60 images + 4 folders
    with pytest.raises(BadInput, match=r"has more than 50 entries"):
        prepare_data(f"folder:{src}", tmp_path / "out", cache_dir=tmp_path / "c")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels: enough for PIL to open it (and, unguarded, to try)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("megapixels", [60, 100, 150])   # PIL itself only warns in 89..179 MP and decodes fully
def test_huge_images_are_skipped_from_their_header(tmp_path, caplog, megapixels):
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    side = int((megapixels * 1e6) ** 0.5)
    (src / "train" / "a" / "huge.png").write_bytes(_png_header_only(side, side))
    prepared = prepare_data(f"folder:{src}", tmp_path / "out", max_bad_fraction=0.1, cache_dir=tmp_path / "c")
    assert "huge.png" in _skipped(prepared)
    assert f"{side * side} pixels" in caplog.text and "decompression bomb" in caplog.text


def test_pil_decompression_bomb_warning_and_error_are_skips(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 10**12)           # only PIL's own guard left
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)            # warns above 1100 px, errors above 2200
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    Image.new("RGB", (40, 40)).save(src / "train" / "a" / "warns.png")     # 1600 px
    Image.new("RGB", (50, 50)).save(src / "train" / "b" / "errors.png")    # 2500 px
    prepared = prepare_data(f"folder:{src}", tmp_path / "out", max_bad_fraction=0.1, cache_dir=tmp_path / "c")
    skipped = _skipped(prepared)
    assert "warns.png" in skipped and "errors.png" in skipped
    assert caplog.text.count("decompression bomb") >= 1


# --- bounded memory and time, measured in a child process -----------------------------------------

BOMBS_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from tl_tasks.data import prepare_data
    results = {}
    for source in sys.argv[1:]:
        started = time.perf_counter()
        try:
            prepared = prepare_data(source, Path(source.split(":", 1)[1] + ".out"), max_bad_fraction=0.2,
                                    cache_dir=Path(source.split(":", 1)[1] + ".cache"))
            outcome = "skipped %d" % prepared.summary()["skipped_count"]
        except ValueError as exc:
            outcome = "refused: " + str(exc)[:200]
        results[source] = {"seconds": time.perf_counter() - started, "outcome": outcome}
    # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, carried over fork + exec)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    results["max_rss_mib"] = int(hwm.split()[1]) / 1024
    print(json.dumps(results))
""")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_bomb_at_once_stays_within_bounded_memory_and_time(tmp_path):
    """Real default limits, a fresh process: 1 GiB of zeros behind a tar.gz member and a zip member, a symlink
    to /dev/zero, a FIFO and a 150-megapixel PNG. Unguarded, the first two alone need > 1 GiB of memory and
    the FIFO hangs; guarded, the child stays far below that."""
    src = write_image_folder(tmp_path / "imgs", CLASSES)
    sources = []
    tar_path = _tar_with(src, tmp_path / "tarbomb.tar.gz", {"train/a/zeros.png": 2**30})
    sources.append(f"folder:{tar_path}")
    zip_path = tmp_path / "zipbomb.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted(src.rglob("*.png")):
            zf.write(path, path.relative_to(src).as_posix())
        with zf.open("train/b/zeros.png", "w", force_zip64=True) as f:
            chunk = bytes(4 * 2**20)
            for _ in range(256):
                f.write(chunk)
    sources.append(f"folder:{zip_path}")
    special = write_image_folder(tmp_path / "special", CLASSES)
    (special / "train" / "a" / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(special / "train" / "b" / "pipe.png")
    side = int(150e6 ** 0.5)
    (special / "train" / "b" / "huge.png").write_bytes(_png_header_only(side, side))
    sources.append(f"folder:{special}")
    out = subprocess.run([sys.executable, "-c", BOMBS_SCRIPT, *sources], capture_output=True, text=True,
                         timeout=240, cwd=tmp_path)  # tl_tasks imports as the installed package
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=1))
    assert results[sources[0]]["outcome"] == "skipped 1"
    assert results[sources[1]]["outcome"] == "skipped 1"
    assert results[sources[2]]["outcome"] == "skipped 3"
    assert results["max_rss_mib"] < 400, results       # numpy + PIL + 60 small images; a bomb would be > 1024
    assert all(r["seconds"] < 20 for k, r in results.items() if k != "max_rss_mib"), results   # ~1 s here
