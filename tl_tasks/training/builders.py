"""Model builders, one per family (cnn, resnet50), driven by the variant registry; ResNet50 weight resolution.

Models take uint8 images; casting, resizing, augmentation and ResNet50 preprocessing happen inside
the model (on the accelerator). Saved models use built-in Keras layers only, so
`keras.models.load_model("model.keras")` needs no custom objects.
"""
from __future__ import annotations

import logging
import math
import os
import socket
from pathlib import Path

import keras
from keras import layers

from tl_tasks.config import keras_home
from tl_tasks.data.roots import check_allowed
from tl_tasks.errors import BadInput, MissingInput
from tl_tasks.training import runtime  # noqa: F401  (sets TF/XLA environment variables before Keras loads)
from tl_tasks.variants import Variant, get_variant

log = logging.getLogger(__name__)

IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_NOTOP_FILE
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"  # as in keras.applications.resnet.WEIGHTS_HASHES
DOWNLOAD_TIMEOUT_S = 15.0  # per socket operation: an offline machine fails in seconds, not minutes
WEIGHT_FILE_SUFFIXES = (".h5", ".hdf5", ".keras")  # ".weights.h5" ends in ".h5"
HEAD_UNITS = 128
CNN_DROPOUT = 0.5


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were asked for but are neither cached nor downloadable."""


def resolve_weights(weights: str | None) -> str | None:
    """Turn a weights setting into what the ResNet50 builder loads; fail early with the fix if it cannot.

    Args:
        weights: "imagenet" (Keras cache, else a download; a clear error when neither works),
            "auto" (ImageNet when it can be had, else random init with a WARNING),
            "none"/None (random init), or a path to a local file: a ResNet50-notop weights file
            (`.h5` as Keras distributes it, or `.weights.h5` from `save_weights`), or a `.keras`
            model that is a ResNet50 base or contains one as a layer named `resnet50`
            (e.g. an earlier run's model.keras).

    Returns:
        "imagenet", None, or the absolute path of the weights file.
    """
    if weights is None:
        return None
    text = str(weights).strip()
    key = text.lower()
    if key == "none":
        return None
    if key == "imagenet":
        _imagenet_weights_file()
        return "imagenet"
    if key == "auto":
        try:
            _imagenet_weights_file()
            return "imagenet"
        except WeightsUnavailableError as exc:
            log.warning("weights='auto': ImageNet weights unavailable, using random initialisation instead (%s)",
                        exc.__cause__ or exc)
            return None
    path = Path(text).expanduser()
    looks_like_path = os.sep in text or text.startswith(("~", ".")) or key.endswith(WEIGHT_FILE_SUFFIXES)
    if not path.is_file():
        if looks_like_path:
            raise MissingInput(
                f"weights={weights!r}: no such file ({path.resolve()}); set --weights (the trigger form's "
                f"'ResNet50 weights' field) to an "
                f"existing .h5/.weights.h5/.keras file, or to 'imagenet', 'auto' or 'none'"
            )
        raise BadInput(
            f"weights={weights!r} is not 'imagenet', 'auto', 'none' or a path to a .h5/.weights.h5/.keras file"
        )
    if not key.endswith(WEIGHT_FILE_SUFFIXES):
        raise BadInput(
            f"weights={weights!r} has an unsupported file type; use a ResNet50-notop .h5/.weights.h5 weights "
            f"file or a .keras model"
        )
    return str(check_allowed(path, f"weights={weights!r}"))


def build_model(variant: Variant | str, num_classes: int, *, input_size: int = 32, image_size: int = 32,
                weights: str | None = "none", seed: int = 42) -> keras.Model:
    """Build and compile the model of `variant` for uint8 images of `input_size` px.

    Args:
        variant: a registry name or a Variant.
        num_classes: width of the softmax output.
        input_size: side of the uint8 images fed to the model (the prepared data's size).
        image_size: side the ResNet50 family resizes to inside the model (the CNN ignores it).
        weights: ResNet50 base weights, anything `resolve_weights` accepts (the CNN ignores it).
        seed: seeds the head's initialisers, dropout and augmentation.
    """
    v = variant if isinstance(variant, Variant) else get_variant(variant)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be >= 2")
    builder = _BUILDERS.get(v.family)
    if builder is None:
        raise ValueError(f"variant {v.name!r} has family={v.family!r}; known families: {', '.join(_BUILDERS)}")
    return builder(v, num_classes, input_size=input_size, image_size=image_size, weights=weights, seed=seed)


def build_head(variant: Variant | str, num_classes: int, feature_dim: int, *, seed: int = 42) -> keras.Model:
    """The ResNet50 family's head alone, on pooled features; its layers are named as in the full model."""
    v = variant if isinstance(variant, Variant) else get_variant(variant)
    features = keras.Input((feature_dim,), name="features")
    x = features
    for layer in _head_layers(v, num_classes, seed):
        x = layer(x)
    head = keras.Model(features, x, name=f"{v.name}_head")
    _compile(head, v.learning_rate, num_classes)
    return head


def _build_cnn(v: Variant, num_classes: int, *, input_size: int, image_size: int, weights, seed: int) -> keras.Model:
    inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)
    if v.augment:
        x = _augmentation(seed, v.augment)(x)
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    for i, filters in enumerate((32, 64), start=1):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv{i}",
                          kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i))(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(HEAD_UNITS, activation="relu", name="dense",
                     kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 3))(x)
    x = layers.Dropout(CNN_DROPOUT, seed=seed, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 4))(x)
    model = keras.Model(inputs, outputs, name=v.name)
    _compile(model, v.learning_rate, num_classes)
    return model


def _build_resnet50(v: Variant, num_classes: int, *, input_size: int, image_size: int, weights,
                    seed: int) -> keras.Model:
    inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="image")
    # Pre-processing stays float32 under mixed precision: cheap, and keeps pixel values exact.
    x = layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)
    if v.augment:  # at the data's size, before resizing: cheaper, same effect
        x = _augmentation(seed, v.augment)(x)
    if image_size != input_size:
        x = layers.Resizing(image_size, image_size, interpolation="bilinear", dtype="float32", name="resize")(x)
    x = _preprocess(image_size)(x)
    base = _resnet50_base(image_size, weights)
    _set_trainable(base, v.trainable_from)
    # Inference-mode BatchNorm, also when the base is unfrozen (see _set_trainable for why this is not enough).
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    for layer in _head_layers(v, num_classes, seed):
        x = layer(x)
    model = keras.Model(inputs, x, name=v.name)
    _compile(model, v.learning_rate, num_classes)
    return model


_BUILDERS = {"cnn": _build_cnn, "resnet50": _build_resnet50}


def _head_layers(v: Variant, num_classes: int, seed: int) -> list[layers.Layer]:
    head: list[layers.Layer] = [
        layers.Dense(HEAD_UNITS, activation="relu", name="head_dense",
                     kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1)),
    ]
    if v.head_dropout:
        head.append(layers.Dropout(v.head_dropout, seed=seed, name="head_dropout"))
    head.append(layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions",
                             kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2)))
    return head


def _augmentation(seed: int, kind: str = "full") -> keras.Sequential:
    """Random flip ("flip"), or flip, brightness and translation ("full"), on [0, 255] pixels; identity outside
    training."""
    steps = [layers.RandomFlip("horizontal", seed=seed, dtype="float32", name="flip")]
    if kind == "full":
        steps += [
            layers.RandomBrightness(0.2, value_range=(0.0, 255.0), seed=seed + 1, dtype="float32",
                                    name="brightness"),
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 2, dtype="float32",
                                     name="translation"),
        ]
    return keras.Sequential(steps, name="augment")


def _preprocess(image_size: int) -> keras.Model:
    """`keras.applications.resnet50.preprocess_input` (RGB->BGR, ImageNet mean subtraction; no /255) as a sub-model."""
    pixels = keras.Input((image_size, image_size, 3), dtype="float32", name="pixels")
    return keras.Model(pixels, keras.applications.resnet50.preprocess_input(pixels), name="preprocess")


def _resnet50_base(image_size: int, weights: str | None) -> keras.Model:
    resolved = resolve_weights(weights)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(image_size, image_size, 3),
                                       name="resnet50")
    if resolved == "imagenet":
        _load_base_weights(base, _imagenet_weights_file())
    elif resolved is not None:
        _load_base_weights(base, resolved)
    return base


def _load_base_weights(base: keras.Model, path: str) -> None:
    try:
        if path.lower().endswith(".keras"):
            saved = keras.models.load_model(path, compile=False, safe_mode=True)  # no Lambda/pickled code
            source = _find_resnet50(saved)
            if source is None:
                raise ValueError("the model has no ResNet50 base (no layer named 'resnet50' or 'conv1_conv')")
            base.set_weights(source.get_weights())
        else:
            base.load_weights(path)
    except Exception as exc:
        raise BadInput(
            f"weights={path!r} could not be loaded into ResNet50 (include_top=False): {exc}. Use the Keras ResNet50 "
            f"notop file ({IMAGENET_NOTOP_FILE}), a .weights.h5 saved from such a base, or a .keras model with a "
            f"'resnet50' layer"
        ) from exc


def _find_resnet50(model: keras.Model) -> keras.Model | None:
    names = {layer.name for layer in model.layers}
    if "conv1_conv" in names:
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name == "resnet50":
            return layer
    return None


def _set_trainable(base: keras.Model, trainable_from: str | None) -> None:
    """Freeze the base, or unfreeze it from the first layer named `trainable_from` (or `trainable_from_*`) on;
    BatchNormalization layers stay frozen either way."""
    if trainable_from is None:
        base.trainable = False
        return
    start = next((i for i, layer in enumerate(base.layers)
                  if layer.name == trainable_from or layer.name.startswith(trainable_from + "_")), None)
    if start is None:
        raise ValueError(
            f"trainable_from={trainable_from!r} names no layer of ResNet50; use a block boundary such as "
            f"'conv1_conv', 'conv4_block1' or 'conv5_block1', or None for a frozen base"
        )
    base.trainable = True
    for i, layer in enumerate(base.layers):
        # BatchNorm stays frozen, which in Keras also means inference mode: the `training=False` the base is
        # called with is overridden by fit's training=True in Keras 3 functional models (keras-team/keras#20285).
        layer.trainable = i >= start and not isinstance(layer, layers.BatchNormalization)


def compile_recipe(model: keras.Model, variant: Variant | str, num_classes: int, *, steps: int,
                   phase: str = "main") -> None:
    """Compile `model` for one training phase of `variant`'s recipe (the registry's hyperparameters).

    Targets are one-hot (see `one_hot`): Keras' categorical cross-entropy takes `label_smoothing`.

    Args:
        steps: optimizer steps the phase will take (epochs x batches per epoch); sizes the LR schedule.
        phase: "head" = the head warm-up (constant `head_warmup_lr`, Adam: only the head trains), or
            "main" = the variant's own optimizer, learning rate and schedule.
    """
    v = variant if isinstance(variant, Variant) else get_variant(variant)
    if phase == "head":
        optimizer = keras.optimizers.Adam(v.head_warmup_lr)
    elif phase == "main":
        lr = learning_rate_schedule(v, steps)
        if v.optimizer == "adamw":
            optimizer = keras.optimizers.AdamW(lr, weight_decay=v.weight_decay)
        else:
            optimizer = keras.optimizers.Adam(lr)
    else:
        raise ValueError(f"phase={phase!r}; use 'head' or 'main'")
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=v.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.TopKCategoricalAccuracy(k=min(3, num_classes), name="top3")],
    )


def learning_rate_schedule(v: Variant, steps: int):
    """The main phase's learning rate: a float (constant) or a cosine decay to 0 after a linear warm-up from 0.

    Schedules are functions of the optimizer's step counter, which checkpoints save: a resumed training
    continues at the same point of the schedule.
    """
    if v.lr_schedule == "constant":
        return v.learning_rate
    steps = max(1, int(steps))
    warmup = int(round(v.lr_warmup_fraction * steps))
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(v.learning_rate, decay_steps=steps)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, steps - warmup),
                                                  warmup_target=v.learning_rate, warmup_steps=warmup)


def one_hot(y, num_classes: int):
    """Integer labels as float32 one-hot targets, the form `compile_recipe`'s loss takes."""
    import numpy as np

    return np.eye(num_classes, dtype="float32")[np.asarray(y, dtype="int64")]


def set_base_frozen(model: keras.Model, variant: Variant | str, frozen: bool) -> None:
    """Freeze the ResNet50 base of a built model (head warm-up), or restore the variant's trainable layers.
    Recompile afterwards (`compile_recipe`): trainability is fixed when a model is compiled."""
    v = variant if isinstance(variant, Variant) else get_variant(variant)
    base = model.get_layer("resnet50")
    _set_trainable(base, None if frozen else v.trainable_from)


def _compile(model: keras.Model, learning_rate: float, num_classes: int) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=min(3, num_classes), name="top3")],
    )


def _imagenet_weights_file() -> str:
    """Path of the cached ResNet50-notop ImageNet weights, downloading them (short timeout) if absent."""
    cache = keras_home()  # get_file falls back to /tmp/.keras when it is unwritable
    cached = cache / "models" / IMAGENET_NOTOP_FILE
    if cached.is_file() and _verified.get(str(cached)) == _file_key(cached):
        return str(cached)  # hashed once per process; a build should not re-read 94 MB
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # With the file cached (and its hash right) get_file returns at once without any network access.
        path = keras.utils.get_file(IMAGENET_NOTOP_FILE, IMAGENET_NOTOP_URL, cache_subdir="models",
                                    cache_dir=str(cache), file_hash=IMAGENET_NOTOP_MD5)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"weights='imagenet' needs the ResNet50 ImageNet weights, but {cached} is not in the Keras cache and "
            f"downloading {IMAGENET_NOTOP_URL} failed ({type(exc).__name__}: {exc}). Offline? Copy that file into "
            f"{cached.parent}, or set --weights (the trigger form's 'ResNet50 weights' field) to a local "
            f".h5/.weights.h5/.keras file, to "
            f"'none' (random initialisation), or to 'auto' (ImageNet when available, else random)"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    _verified[path] = _file_key(Path(path))
    return path


_verified: dict[str, tuple] = {}


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, IMAGENET_NOTOP_URL, IMAGENET_NOTOP_MD5


def count_weights(variables) -> int:
    """How many numbers `variables` (e.g. `model.trainable_weights`) hold."""
    return int(sum(math.prod(int(d) for d in w.shape) for w in variables))
