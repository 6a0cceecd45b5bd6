"""The settings schema (tl_tasks/schema.py): the trigger form, the CLI options and the validation are generated
from one list and agree; a new entry shows up everywhere; "cifar10" resolves to a local copy (tl_tasks/local_data)."""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile

import pytest

from tl_tasks import config, schema
from tl_tasks.__main__ import build_parser
from tl_tasks.config import PROFILE_NAMES, PROFILES
from tl_tasks.data import local as local_data
from tl_tasks.errors import BadInput

SETTINGS_COMMANDS = {"prepare": [], "train": ["--variant", "cnn"], "evaluate": ["--variant", "cnn"],
                     "gate": [], "run": []}


def _cli_dests(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in sub.choices[command]._actions}


def test_form_cli_and_validation_list_the_same_parameters():
    names = [p.name for p in schema.PARAMS]
    assert len(names) == len(set(names))
    params = schema.dag_params()
    assert list(params) == names
    fields = set(config.Settings.__dataclass_fields__)
    for p in schema.PARAMS:
        assert p.section in schema.SECTIONS and p.type in schema.TYPES
        assert p.field is None or p.field in fields, p.name
        assert params[p.name].value == schema.form_default(p)
        assert params[p.name].description == schema.json_schema(p)["description"]
    assert {p.name for p in schema.PARAMS if p.field is not None} >= {"mixed_precision", "data_parallel", "seed"}
    # every command that takes settings gets every setting (train/evaluate: all but variants); gate/run its own
    settings = {p.name for p in schema.PARAMS if p.field is not None}
    for command in SETTINGS_COMMANDS:
        dests = _cli_dests(command)
        expected = settings - ({"variants"} if command in ("train", "evaluate") else set())
        assert expected <= dests, (command, expected - dests)
    assert {"tolerance", "alpha", "fail_on_regression", "force_promote"} <= _cli_dests("gate")
    assert {"tolerance", "alpha", "fail_on_regression", "force_promote", "force"} <= _cli_dests("run")


def test_the_forms_profile_shows_the_default_profile_and_the_cli_keeps_an_empty_one():
    """The trigger form's Profile starts at `quick` (not an empty `null` choice); `--profile` left out stays
    None on the command line, where it means the profile the run was prepared with."""
    profile = schema.dag_params()["profile"]
    assert profile.value == config.DEFAULT_PROFILE == "quick"
    assert profile.schema["type"] == "string" and None not in profile.schema["enum"]
    assert profile.description == "Defaults for every setting below. Default: quick."
    assert profile.resolve() == "quick"
    assert build_parser().parse_args(["train", "--run-id", "r", "--variant", "cnn"]).profile is None
    assert schema.settings_from_params({}, base=PROFILES["smoke"]).profile == "smoke"


def test_help_texts_quote_each_profiles_real_default():
    batch = schema.get("batch_size")
    text = schema.help_text(batch)
    assert all(f"{name}: {PROFILES[name].batch_size}" in text for name in PROFILE_NAMES), text
    assert "smoke: 32" in text  # the old form said "(64)" for every profile
    weights = schema.help_text(schema.get("weights"))
    assert all(f"{name}: {PROFILES[name].weights}" in weights for name in PROFILE_NAMES), weights
    assert "smoke: 40" in schema.help_text(schema.get("limit_per_class"))
    assert schema.dag_params()["batch_size"].description == text
    run_help = " ".join(_subparser("run").format_help().split())
    assert " ".join(text.split()) in run_help


def _subparser(command):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("name, good, bad", [
    ("epochs", 3, 0), ("image_size", 64, 4), ("batch_size", 8, 5000), ("limit_per_class", 2, 1),
    ("seed", 0, -1), ("tolerance", 0.0, 1.0), ("alpha", 0.05, 0.0), ("mixed_precision", "off", "fast"),
    ("profile", "smoke", "huge"), ("variants", ["cnn"], ["vgg"]), ("data_parallel", True, "yes"),
    ("robustness_images", 0, -1), ("robustness_images", 10_000, 10_001), ("eval_batch_size", 250, 0),
])
def test_form_validation_and_schema_checks_agree(name, good, bad):
    from airflow.sdk.exceptions import ParamValidationError

    param = schema.dag_params()[name]
    assert schema.check(name, good) == good and param.resolve(good) == good
    with pytest.raises(BadInput, match=f"{name}="):
        schema.check(name, bad)
    with pytest.raises(ParamValidationError):
        param.resolve(bad)


def test_cli_refuses_what_the_schema_refuses(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", "--run-id", "r", "--image-size", "4"])
    assert "image_size=4 is out of range" in capsys.readouterr().err
    args = parser.parse_args(["prepare", "--run-id", "r", "--limit-per-class", "all", "--no-data-parallel",
                              "--mixed-precision", "off"])
    assert schema.values_from_args(args) == {"limit_per_class": 0, "data_parallel": False, "mixed_precision": "off"}


def test_limit_zero_means_all_images_in_the_form_and_the_cli():
    assert schema.settings_from_params({"profile": "smoke", "limit_per_class": 0}).limit_per_class is None
    assert schema.dag_params()["limit_per_class"].resolve(0) == 0
    args = build_parser().parse_args(["run", "--profile", "smoke", "--limit-per-class", "all"])
    assert schema.settings_from_params({"profile": "smoke", "limit_per_class": args.limit_per_class}
                                       ).limit_per_class is None


def test_cross_field_rules_and_base_settings():
    with pytest.raises(BadInput, match="image_size=16 is too small for ResNet50"):
        schema.settings_from_params({"profile": "smoke", "image_size": 16, "weights": "imagenet"})
    assert schema.settings_from_params({"profile": "smoke", "image_size": 16}).image_size == 16  # weights none
    base = schema.settings_from_params({"profile": "smoke", "variants": ["cnn"], "seed": 5})
    again = schema.settings_from_params({"epochs": 2}, base=base)
    assert (again.profile, again.variants, again.seed, again.epochs["cnn"]) == ("smoke", ("cnn",), 5, 2)


def test_robustness_images_is_validated_and_zero_turns_the_suite_off():
    assert schema.settings_from_params({"profile": "quick", "robustness_images": 0}).robustness_images == 0
    with pytest.raises(BadInput, match="robustness_images=-5 is out of range"):
        schema.apply_overrides(PROFILES["quick"], {"robustness_images": -5})


def test_settings_from_an_older_settings_json_take_missing_fields_from_its_profile():
    old = PROFILES["smoke"].to_dict()
    for name in ("robustness_images", "eval_batch_size", "val_limit"):  # written before these existed
        del old[name]
    settings = config.Settings.from_dict(old)
    assert (settings.robustness_images, settings.eval_batch_size) == (30, 80)  # smoke's, not 1000 and 250
    assert settings == PROFILES["smoke"]
    assert config.Settings.from_dict({**old, "eval_batch_size": 40}).eval_batch_size == 40  # stored wins


def test_a_new_schema_entry_shows_up_in_the_form_and_the_cli(monkeypatch):
    new = schema.Param("warmup", "integer", "Warm-up", "Warm-up steps.", schema.RUN, default=7, minimum=0,
                       maximum=100, metavar="N")
    monkeypatch.setattr(schema, "PARAMS", (*schema.PARAMS, new))
    params = schema.dag_params()
    assert params["warmup"].value == 7 and params["warmup"].schema["maximum"] == 100
    assert params["warmup"].description == "Warm-up steps. Default: 7."
    parser = argparse.ArgumentParser()
    schema.add_cli_options(parser, run=True)
    assert parser.parse_args(["--warmup", "3"]).warmup == 3 and parser.parse_args([]).warmup == 7
    with pytest.raises(BadInput, match="warmup=101 is out of range"):
        schema.check("warmup", 101)
    assert schema.settings_from_params({"profile": "smoke", "warmup": 3}).profile == "smoke"  # known, not a field


def test_a_removed_environment_variable_stops_a_run_naming_the_replacement(monkeypatch):
    for env, name in schema.REMOVED_ENV.items():
        assert name in {p.name for p in schema.PARAMS}
        monkeypatch.setenv(env, "x")
        with pytest.raises(BadInput, match=f"{env} set .*{schema.get(name).flag}"):
            schema.resolve_settings("smoke")
        monkeypatch.delenv(env)
    assert schema.resolve_settings("smoke").profile == "smoke"


def test_the_schema_does_not_import_airflow_or_heavy_libraries():
    code = ("import sys; import tl_tasks.schema as s; s.PARAMS; "
            "bad = [m for m in ('airflow', 'keras', 'tensorflow', 'numpy') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=config.PROJECT_ROOT,
                         check=True).stdout.strip()
    assert out == "[]"


# ------------------------------------------------------------------------------ cifar10: a local copy

@pytest.fixture
def roots(tmp_path, monkeypatch):
    root = tmp_path / "roots"
    root.mkdir()
    monkeypatch.setenv("TL_DATA_ROOTS", str(root))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return root


def test_cifar10_resolves_to_a_copy_in_the_data_roots_else_keras(roots, tmp_path):
    assert local_data.resolve_dataset("cifar10") == "cifar10"  # nothing local: Keras's download
    jpg = roots / "cifar-10-images-jpg.tar.gz"
    with tarfile.open(jpg, "w:gz"):
        pass
    assert local_data.resolve_dataset("cifar10") == f"folder:{jpg}"
    pickles = roots / "cifar-10-python.tar.gz"
    pickles.write_bytes(b"")
    assert local_data.resolve_dataset("cifar10") == f"cifar10:{pickles}"  # the exact data before the JPEGs
    cached = local_data.keras_cifar10_cache() / "cifar-10-batches-py"
    cached.mkdir(parents=True)
    (cached / "data_batch_1").write_bytes(b"")
    assert local_data.resolve_dataset("cifar10") == "cifar10"  # Keras's cache: Keras reads it offline
    for other in ("synthetic", f"folder:{tmp_path}", "cifar10:/x.tar.gz"):
        assert local_data.resolve_dataset(other) == other


def test_prepare_records_and_uses_the_local_copy(roots, tl_home):
    from tl_tasks import pipeline
    from tl_tasks.store import connect

    folder = roots / "cifar-10-images-jpg"
    _tiny_folder(folder)
    settings = schema.settings_from_params({"profile": "smoke", "dataset": "cifar10", "variants": ["cnn"],
                                            "limit_per_class": 4})
    out = pipeline.prepare_stage("local1", settings.to_dict())
    assert out["source"] == f"folder:{folder}"
    with connect() as store:
        run = store.get_run("local1")
    assert run["data_source"] == f"folder:{folder}" and run["params"]["dataset"] == "cifar10"


def _tiny_folder(folder):
    from PIL import Image

    for split, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog"):
            d = folder / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), (i * 20, 100 if cls == "cat" else 0, 50)).save(d / f"{i}.png")
