"""Allowed data roots (TL_DATA_ROOTS): dataset and weights paths outside them are refused, after resolving symlinks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.data_helpers import write_image_folder
from tl_tasks import config, pipeline, schema
from tl_tasks.data import prepare_data
from tl_tasks.data.roots import ENV, check_allowed, data_roots
from tl_tasks.errors import BadInput


@pytest.fixture
def roots(tmp_path, monkeypatch) -> Path:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv(ENV, str(allowed))
    return allowed


def test_folder_outside_the_roots_is_refused_naming_path_roots_and_fix(tmp_path, roots):
    outside = write_image_folder(tmp_path / "outside", {"train": {"a": 3, "b": 3}})
    with pytest.raises(BadInput) as err:
        prepare_data(f"folder:{outside}", tmp_path / "out")
    message = str(err.value)
    assert str(outside) in message and str(roots) in message and "TL_DATA_ROOTS" in message


def test_the_whole_filesystem_is_refused(tmp_path, roots):
    with pytest.raises(BadInput, match=r"'/' is outside the allowed data roots"):
        prepare_data("folder:/", tmp_path / "out")


def test_a_symlink_inside_a_root_pointing_outside_is_refused(tmp_path, roots):
    outside = write_image_folder(tmp_path / "outside", {"train": {"a": 3, "b": 3}})
    (roots / "innocent").symlink_to(outside)
    with pytest.raises(BadInput, match="outside the allowed data roots"):
        prepare_data(f"folder:{roots / 'innocent'}", tmp_path / "out")


def test_dot_dot_escapes_are_resolved_first(tmp_path, roots):
    write_image_folder(tmp_path / "outside", {"train": {"a": 3, "b": 3}})
    with pytest.raises(BadInput, match="outside the allowed data roots"):
        prepare_data(f"folder:{roots}/../outside", tmp_path / "out")


def test_inside_a_root_is_accepted(tmp_path, roots):
    src = write_image_folder(roots / "imgs", {"train": {"a": 3, "b": 3}})
    prepared = prepare_data(f"folder:{src}", tmp_path / "out", cache_dir=tmp_path / "c")
    assert prepared.class_names == ("a", "b")


def test_weights_outside_the_roots_are_refused(tmp_path, roots):
    from tl_tasks.training.builders import resolve_weights

    weights = tmp_path / "evil.keras"
    weights.write_bytes(b"not even a model")
    with pytest.raises(BadInput, match=r"weights='.*evil.keras'.*outside the allowed data roots"):
        resolve_weights(str(weights))


def test_default_roots_are_shared_data_project_data_and_tl_home(monkeypatch, tl_home):
    monkeypatch.delenv(ENV)
    assert data_roots() == ((config.PROJECT_ROOT.parent / "shared" / "data").resolve(),  # symlinks followed
                            (config.PROJECT_ROOT / "data").resolve(), tl_home.resolve())
    # make run's dataset: folder:<checkout>/../shared/data/cifar-10-images-jpg.tar.gz
    check_allowed(config.PROJECT_ROOT.parent / "shared" / "data" / "cifar-10-images-jpg.tar.gz", "dataset")
    with pytest.raises(BadInput):
        check_allowed(Path(os.getcwd()).resolve().parent / "elsewhere", "dataset")


def test_pipeline_refusal_is_bad_input_so_it_is_not_retried(tmp_path, roots):
    settings = schema.settings_from_params({"profile": "smoke", "dataset": "folder:/etc"}).to_dict()
    with pytest.raises(BadInput) as err:
        pipeline.prepare_stage("r1", settings)
    assert isinstance(err.value, pipeline.NO_RETRY_EXCEPTIONS)
