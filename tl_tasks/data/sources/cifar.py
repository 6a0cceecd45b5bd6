"""CIFAR-10: the python pickle batches (`cifar10:<tar.gz or cifar-10-batches-py/>`), read with an unpickler
that allows only what those files hold, and the Keras download (`cifar10`)."""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from tl_tasks.data import limits
from tl_tasks.data.raw import Raw
from tl_tasks.errors import BadInput, MissingInput

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


def download_cifar10() -> Raw:
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
    return Raw(np.asarray(x_train, np.uint8), np.asarray(y_train).reshape(-1).astype(np.int64),
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


class _CifarUnpickler(pickle.Unpickler):  # noqa: S301 (an allow-list unpickler: find_class refuses the rest)
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


def read_cifar10(path: Path) -> Raw:
    blobs = read_batches(path)
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
    return Raw(np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(xs[-1]), ys[-1], class_names,
               attempted=len(x_train) + len(xs[-1]))


def read_batches(path: Path) -> dict[str, bytes]:
    """The raw bytes of data_batch_1..5, test_batch and batches.meta from a folder or a tar archive."""
    blobs: dict[str, bytes] = {}
    if path.is_dir():
        folder = path if (path / "batches.meta").exists() or not (path / "cifar-10-batches-py").is_dir() \
            else path / "cifar-10-batches-py"
        for name in CIFAR10_BATCHES:
            if os.path.lexists(folder / name):
                try:
                    blobs[name] = limits.read_regular_file(folder / name, limits.MAX_BATCH_FILE_BYTES)
                except limits.Skip as exc:
                    raise BadInput(f"source cifar10:{path}: {exc}") from None
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                total = 0
                for i, member in enumerate(tar):
                    total += max(member.size, 0)
                    limits.check_archive_budget(path, i + 1, total)
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in CIFAR10_BATCHES and base not in blobs:
                        if member.size > limits.MAX_BATCH_FILE_BYTES:
                            raise BadInput(f"{base} in {str(path)!r} is {member.size} bytes, more than a CIFAR-10 "
                                           f"batch can be ({limits.MAX_BATCH_FILE_BYTES} bytes); is this a CIFAR-10 "
                                           "archive?")
                        blobs[base] = limits.read_capped(tar.extractfile(member), limits.MAX_BATCH_FILE_BYTES,
                                                         f"{path}/{base}")
        except limits.Skip as exc:
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


