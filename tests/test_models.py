"""Model builders over the registry (weights=None, small inputs) and ResNet50 weight resolution/loading."""
from __future__ import annotations

import hashlib
import logging
import time

import keras
import numpy as np
import pytest

from tl_tasks.training import builders as models
from tl_tasks.training.builders import WeightsUnavailableError, build_head, build_model, resolve_weights
from tl_tasks.variants import VARIANT_NAMES, get_variant

NUM_CLASSES = 10
HEAD_LAYERS = ("head_pool", "head_dense", "predictions")


def _images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_every_variant_builds_with_the_expected_layers(name):
    v = get_variant(name)
    model = build_model(name, NUM_CLASSES, input_size=32, image_size=32, weights="none")
    names = [layer.name for layer in model.layers]

    assert model.output_shape == (None, NUM_CLASSES)
    assert model.input.dtype == "uint8" and model.input_shape == (None, 32, 32, 3)
    out = keras.ops.convert_to_numpy(model(_images(2), training=False))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)  # softmax probabilities
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    assert ("augment" in names) == bool(v.augment)
    assert "resize" not in names  # image_size == input_size
    if v.family == "cnn":
        assert "resnet50" not in names and _count(model.trainable_weights) == model.count_params()
        return
    for layer in HEAD_LAYERS:
        assert layer in names
    assert ("head_dropout" in names) == bool(v.head_dropout)
    base = model.get_layer("resnet50")
    head_params = _count(model.get_layer("head_dense").weights) + _count(model.get_layer("predictions").weights)
    if v.frozen_base:
        assert base.trainable_weights == [] and _count(model.trainable_weights) == head_params
    else:
        start = [layer.name for layer in base.layers].index(v.trainable_from)
        assert all(not layer.trainable for layer in base.layers[:start])
        is_bn = [isinstance(layer, keras.layers.BatchNormalization) for layer in base.layers[start:]]
        assert all(layer.trainable != bn for layer, bn in zip(base.layers[start:], is_bn, strict=True)) and any(is_bn)
        assert _count(model.trainable_weights) > head_params + 20_000_000


def test_augmentation_only_in_training_and_resize_when_sizes_differ():
    model = build_model("resnet50_v3", NUM_CLASSES, input_size=32, image_size=48, weights="none")
    names = [layer.name for layer in model.layers]
    assert names.index("augment") < names.index("resize") < names.index("preprocess") < names.index("resnet50")
    assert model.get_layer("resnet50").input_shape == (None, 48, 48, 3)
    x = keras.ops.convert_to_tensor(_images(4).astype("float32"))
    augment = model.get_layer("augment")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augment(x, training=False)), keras.ops.convert_to_numpy(x))
    assert not np.allclose(keras.ops.convert_to_numpy(augment(x, training=True)), keras.ops.convert_to_numpy(x))


def test_preprocessing_is_resnet50_preprocess_input_not_rescaling():
    model = build_model("resnet50_v1", NUM_CLASSES, weights="none")
    pixels = _images(2).astype("float32")
    got = keras.ops.convert_to_numpy(model.get_layer("preprocess")(pixels))
    expected = keras.ops.convert_to_numpy(keras.applications.resnet50.preprocess_input(pixels.copy()))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # caffe mode: BGR channel order, ImageNet means subtracted, range not [0, 1]
    np.testing.assert_allclose(got[..., 0], pixels[..., 2] - 103.939, rtol=1e-5)
    assert got.min() < -50 and not np.allclose(got, pixels / 255.0)


@pytest.mark.slow
def test_unfrozen_base_keeps_batchnorm_in_inference_mode():
    model = build_model("resnet50_v2", NUM_CLASSES, weights="none")
    base = model.get_layer("resnet50")
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    stats_before = [keras.ops.convert_to_numpy(w).copy() for bn in bns for w in (bn.moving_mean, bn.moving_variance)]
    kernel_before = keras.ops.convert_to_numpy(base.get_layer("conv2_block1_1_conv").kernel).copy()
    x = _images(4, seed=1)

    # In training mode a BatchNorm in training mode would normalise by batch statistics: outputs would differ.
    out_train = keras.ops.convert_to_numpy(model(x, training=True))
    out_infer = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(out_train, out_infer, rtol=1e-5, atol=1e-6)

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", run_eagerly=True)
    model.train_on_batch(x, np.arange(4))
    stats_after = [keras.ops.convert_to_numpy(w) for bn in bns for w in (bn.moving_mean, bn.moving_variance)]
    for before, after in zip(stats_before, stats_after, strict=True):
        np.testing.assert_array_equal(before, after)
    kernel_after = keras.ops.convert_to_numpy(base.get_layer("conv2_block1_1_conv").kernel)
    assert not np.allclose(kernel_before, kernel_after)  # the base is unfrozen: its convolutions do learn


def test_head_model_has_the_full_models_head_layers():
    v = get_variant("resnet50_v4")
    head = build_head(v, NUM_CLASSES, 2048)
    assert [layer.name for layer in head.layers][1:] == ["head_dense", "head_dropout", "predictions"]
    assert head.output_shape == (None, NUM_CLASSES)


def test_unknown_trainable_from_is_a_clear_error():
    import dataclasses

    bad = dataclasses.replace(get_variant("resnet50_v2"), trainable_from="conv9_block1")
    with pytest.raises(ValueError, match=r"trainable_from='conv9_block1'.*block boundary"):
        build_model(bad, NUM_CLASSES, weights="none")


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory):
    """A random-init ResNet50 notop base and its weights saved in each supported file format."""
    directory = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(7)
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    files = {
        "weights.h5": directory / "base.weights.h5",   # Keras 3 save_weights
        "legacy.h5": directory / "base.h5",            # legacy HDF5, like Keras's downloaded ImageNet file
        "keras": directory / "model.keras",            # a whole model with a 'resnet50' layer (earlier run)
    }
    base.save_weights(files["weights.h5"])
    base.save(files["legacy.h5"])
    wrapper_in = keras.Input((32, 32, 3))
    keras.Model(wrapper_in, base(wrapper_in)).save(files["keras"])
    return [w.copy() for w in base.get_weights()], files


def _assert_base_weights(model, expected):
    got = model.get_layer("resnet50").get_weights()
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["weights.h5", "legacy.h5", "keras"])
def test_weights_load_from_a_local_file(saved_base, kind):
    expected, files = saved_base
    path = files[kind]
    assert resolve_weights(str(path)) == str(path.resolve())
    model = build_model("resnet50_v1", NUM_CLASSES, input_size=32, image_size=32, weights=str(path))
    _assert_base_weights(model, expected)


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, while failing to load the wrong file
def test_weight_errors_name_the_value_and_the_fix(tmp_path):
    missing = tmp_path / "nope" / "resnet.h5"
    with pytest.raises(FileNotFoundError, match=r"no such file.*--weights"):
        resolve_weights(str(missing))
    with pytest.raises(ValueError, match=r"weights='imagenett' is not 'imagenet', 'auto', 'none'"):
        resolve_weights("imagenett")
    wrong_type = tmp_path / "weights.txt"
    wrong_type.write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        resolve_weights(str(wrong_type))
    not_resnet = tmp_path / "other.weights.h5"
    tiny = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    tiny.save_weights(not_resnet)
    with pytest.raises(ValueError, match="could not be loaded into ResNet50"):
        build_model("resnet50_v1", NUM_CLASSES, weights=str(not_resnet))
    assert resolve_weights("none") is None and resolve_weights(None) is None


@pytest.fixture
def offline_keras_cache(tmp_path, monkeypatch):
    """An empty Keras cache and an ImageNet URL that refuses connections at once (no network in tests)."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(models, "IMAGENET_NOTOP_URL", "http://127.0.0.1:9/" + models.IMAGENET_NOTOP_FILE)
    return home


def test_imagenet_unavailable_is_a_clear_error_and_fails_fast(offline_keras_cache):
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights("imagenet")
    assert time.perf_counter() - t0 < 10
    message = str(info.value)
    assert models.IMAGENET_NOTOP_FILE in message and str(offline_keras_cache) in message
    assert "ResNet50 weights" in message and "--weights" in message and "'none'" in message
    with pytest.raises(WeightsUnavailableError):
        build_model("resnet50_v1", NUM_CLASSES, weights="imagenet")


def test_auto_falls_back_to_random_init_with_a_warning(offline_keras_cache, caplog):
    with caplog.at_level(logging.WARNING, logger="tl_tasks.training.builders"):
        assert resolve_weights("auto") is None
    assert any("random initialisation" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.slow
def test_imagenet_comes_from_the_keras_cache_without_network(offline_keras_cache, saved_base, monkeypatch):
    expected, files = saved_base
    cached = offline_keras_cache / "models" / models.IMAGENET_NOTOP_FILE
    cached.parent.mkdir()
    cached.write_bytes(files["legacy.h5"].read_bytes())  # stands in for the real ImageNet file
    monkeypatch.setattr(models, "IMAGENET_NOTOP_MD5", hashlib.md5(cached.read_bytes()).hexdigest())
    assert resolve_weights("imagenet") == "imagenet"
    assert resolve_weights("auto") == "imagenet"
    model = build_model("resnet50_v1", NUM_CLASSES, weights="imagenet")
    _assert_base_weights(model, expected)
