"""Keras 3 on two backends: resume and the v1 feature cache on JAX, models saved under one backend load under the
other, and mixed precision (float32 output) on both. The whole pipeline on JAX without TensorFlow: test_gpu_bench.py."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.backend_helpers import backend_env, run_backend
from tests.ml_helpers import small_settings, write_prepared
from tl_tasks import layout
from tl_tasks.schema import resolve_settings
from tl_tasks.training.builders import build_model
from tl_tasks.training.loop import train_variant

_TRAIN = """
import json, sys
from pathlib import Path
from tl_tasks.config import Settings
from tl_tasks.training.loop import train_variant
summary = train_variant(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Settings.from_dict(json.loads(sys.argv[4])),
                        verbose=0).summary()
print(json.dumps(summary))
"""

_KILL_AFTER_FIRST_EPOCH = """
import os, signal
from tl_tasks.training.checkpoints import Checkpoints
_save = Checkpoints.save
def _save_then_die(self, model, completed, *args, **kwargs):
    _save(self, model, completed, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
Checkpoints.save = _save_then_die
"""


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["resnet50_v1"])  # plain fit resumes are covered on TF (test_train.py)
def test_a_killed_training_resumes_on_jax(tmp_path, variant):
    """SIGKILL after epoch 1, rerun: the JAX checkpoint resumes from v1's cached-feature head."""
    data = write_prepared(tmp_path / "data", n_train=64, n_val=20, n_test=10)
    out = tmp_path / variant
    settings = json.dumps(small_settings(epochs={"cnn": 2, "resnet50": 2}, batch_size=32).to_dict())
    killed = run_backend("jax", _KILL_AFTER_FIRST_EPOCH + _TRAIN, variant, data, out, settings, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["completed_epochs"] == 1 and state["signature"]["backend"] == "jax"
    summary = json.loads(run_backend("jax", _TRAIN, variant, data, out, settings).stdout.strip().splitlines()[-1])
    assert summary["backend"] == "jax" and summary["resumed_from_epoch"] == 1 and summary["epochs_run"] == 2
    assert summary["history"][:1] == state["history"]
    assert summary["feature_cache"] is (variant == "resnet50_v1")


# Under JAX, in one process: predict with the model TensorFlow saved, then save a model of its own and predict
# with it as loaded back (what TensorFlow then loads and compares).
_CROSS_LOAD = """
import sys, keras, numpy as np
import tl_tasks.training.augment  # registers the augmentation layer v3/v4/cnn models hold
from tl_tasks.training.builders import build_model
tf_keras, x, tf_on_jax, jax_keras, jax_on_jax, variant = sys.argv[1:]
x = np.load(x)
np.save(tf_on_jax, keras.ops.convert_to_numpy(keras.models.load_model(tf_keras).predict(x, verbose=0)))
build_model(variant, 10, weights="none", seed=7).save(jax_keras)
np.save(jax_on_jax, keras.ops.convert_to_numpy(keras.models.load_model(jax_keras).predict(x, verbose=0)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cnn", "resnet50_v4"])
def test_models_saved_under_one_backend_load_under_the_other(tmp_path, variant):
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    tf_model = build_model(variant, 10, weights="none", seed=3)
    tf_model.save(tmp_path / "tf.keras")
    expected_tf = keras.ops.convert_to_numpy(tf_model.predict(x, verbose=0))

    run_backend("jax", _CROSS_LOAD, tmp_path / "tf.keras", tmp_path / "x.npy", tmp_path / "tf_on_jax.npy",
                tmp_path / "jax.keras", tmp_path / "jax_on_jax.npy", variant)
    np.testing.assert_allclose(np.load(tmp_path / "tf_on_jax.npy"), expected_tf, rtol=1e-4, atol=1e-5)

    jax_model = keras.models.load_model(tmp_path / "jax.keras")  # saved under JAX, loaded here under TensorFlow
    np.testing.assert_allclose(keras.ops.convert_to_numpy(jax_model.predict(x, verbose=0)),
                               np.load(tmp_path / "jax_on_jax.npy"), rtol=1e-4, atol=1e-5)
    assert [w.shape for w in jax_model.weights] == [w.shape for w in tf_model.weights]


_MIXED = """
import json, sys
from pathlib import Path
import keras
from tl_tasks.config import Settings
from tl_tasks.training.loop import train_variant
out = {}
for variant in sys.argv[4].split(","):
    summary = train_variant(variant, Path(sys.argv[1]), Path(sys.argv[2]) / variant,
                            Settings.from_dict(json.loads(sys.argv[3])), verbose=0).summary()
    model = keras.models.load_model(Path(sys.argv[2]) / variant / "model.keras")
    dense = [l for l in model.layers if l.name in ("dense", "head_dense")][0]
    out[variant] = {"mixed": summary["mixed_precision"], "loss": summary["history"][-1]["loss"],
                    "hidden": dense.dtype_policy.name, "hidden_compute": dense.compute_dtype,
                    "out": model.get_layer("predictions").compute_dtype, "output": str(model.output.dtype)}
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_mixed_precision_trains_on_both_backends_with_a_float32_output(tmp_path, backend):
    data = write_prepared(tmp_path / "data", n_train=64, n_val=20, n_test=10)
    settings = json.dumps(small_settings(epochs={"cnn": 1, "resnet50": 1}, batch_size=32,
                                         mixed_precision="on").to_dict())
    # v1: the ResNet50 base computes in float16, its head is trained; both variants in one process
    trained = json.loads(run_backend(backend, _MIXED, data, tmp_path / backend, settings,
                                     "cnn,resnet50_v1").stdout.strip().splitlines()[-1])
    assert sorted(trained) == ["cnn", "resnet50_v1"]
    for out in trained.values():
        assert out["mixed"] is True and np.isfinite(out["loss"]), out
        assert out["hidden"] == "mixed_float16" and out["hidden_compute"] == "float16", out
        assert out["out"] == "float32" and "float32" in out["output"], out


@pytest.mark.slow
def test_mixed_precision_off_and_auto_follow_the_setting(tmp_path):
    data = write_prepared(tmp_path / "data", n_train=40, n_val=20, n_test=10)
    summary = train_variant("cnn", data, tmp_path / "off", small_settings(mixed_precision="off"), verbose=0).summary()
    assert summary["mixed_precision"] is False
    auto = train_variant("cnn", data, tmp_path / "auto", small_settings(), verbose=0).summary()
    assert auto["mixed_precision"] is False  # "auto" on a machine without a GPU
    with pytest.raises(ValueError, match="mixed_precision='fast' is not one of auto, on, off"):
        resolve_settings("smoke", mixed_precision="fast")


# Trains the CNN for one epoch on Keras/JAX and prints the compiled programs it found on disk (cache hits) and
# the ones it compiled, as JAX's own monitoring events count them.
TRAIN_AND_COUNT_COMPILES = """
import json, sys
from pathlib import Path
import jax
from tests.ml_helpers import small_settings, write_prepared
from tl_tasks.training.loop import train_variant

events = {}
jax.monitoring.register_event_listener(lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
data = write_prepared(Path(sys.argv[1]) / "data", n_train=64, n_val=32, n_test=20)
train_variant("cnn", data, Path(sys.argv[2]), small_settings(epochs={"cnn": 1, "resnet50": 1}), verbose=0)
print(json.dumps({"hits": events.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": events.get("/jax/compilation_cache/cache_misses", 0)}))
"""


@pytest.mark.slow  # three trainings in subprocesses
def test_a_second_process_on_jax_loads_its_compiled_programs_from_tl_home(tmp_path):
    def train(out: str, **env) -> dict:
        proc = run_backend("jax", TRAIN_AND_COUNT_COMPILES, tmp_path, tmp_path / out,
                           env=backend_env("jax", TL_HOME=str(tmp_path / "home"), **env))
        return json.loads(proc.stdout.strip().splitlines()[-1])

    cache = tmp_path / "home" / "compiled" / "jax"
    first = train("a", TL_JAX_COMPILATION_CACHE="")  # the default: under TL_HOME
    stored = [p.name for p in layout.jax_compiled_programs(cache)]
    # every program, the milliseconds-long ones included (the CNN's initialisers, its train and test steps: ~28)
    assert len(stored) == first["misses"] >= 10, (first, len(stored))
    second = train("b", TL_JAX_COMPILATION_CACHE="")
    assert second["misses"] == 0 and second["hits"] == first["misses"], (first, second)
    assert [p.name for p in layout.jax_compiled_programs(cache)] == stored  # nothing compiled again
    off = train("c", TL_JAX_COMPILATION_CACHE="off")
    assert off["hits"] == 0 and [p.name for p in layout.jax_compiled_programs(cache)] == stored
    assert cache.stat().st_mode & 0o777 == 0o700  # JAX runs what it finds there: this user's only


def test_the_jax_cache_folder_must_be_absolute_and_this_users_only(tmp_path):
    from tl_tasks.training import runtime

    assert "relative" in runtime._unsafe_cache_dir(Path("compiled/jax"))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert runtime._unsafe_cache_dir(shared) == "others can write to it"
    new = tmp_path / "home" / "compiled" / "jax"
    assert runtime._unsafe_cache_dir(new) is None and new.stat().st_mode & 0o777 == 0o700
