"""The run layout (every path under TL_HOME) and the atomic writes of tl_tasks.files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tl_tasks import config, files, layout
from tl_tasks.errors import BadInput
from tl_tasks.layout import DataFiles, ModelFiles, RunLayout

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def work(tmp_path) -> Path:
    """An empty folder (tmp_path also holds the test's TL_HOME)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def test_run_layout_spells_out_the_run_folder(tl_home):
    run = RunLayout("manual__2026-01-01T00:00:00+00:00")
    assert run.folder == tl_home / "runs" / config.run_key(run.run_id) and run.key == config.run_key(run.run_id)
    assert run.settings_file == run.folder / "settings.json"
    assert run.data_dir == run.folder / "data" and run.data.meta == run.data_dir / "meta.json"
    assert run.data_file("x_test") == run.data_dir / "x_test.npy" and run.data_file("meta") == run.data.meta
    assert run.model_dir("resnet50_v2") == run.folder / "models" / "resnet50_v2"
    model = run.model("cnn")
    assert (model.model, model.train_summary, model.finished, model.evaluation, model.predictions) == tuple(
        run.model_dir("cnn") / n for n in ("model.keras", "train_summary.json", "finished.json", "evaluation.json",
                                            "predictions.npy"))
    assert model.checkpoint_state == run.model_dir("cnn") / "checkpoints" / "state.json"
    assert run.evaluation_file("cnn") == model.evaluation and run.model_file("cnn") == model.model
    assert run.report_index == run.folder / "report" / "index.html"
    assert (tl_home / run.report_url_path) == run.report_index
    assert (layout.cache_root(), layout.champions_root(), layout.reports_root()) == (
        tl_home / "cache", tl_home / "champions", tl_home / "reports")


def test_run_layout_refuses_bad_ids_and_unknown_variants():
    with pytest.raises(BadInput, match="run_id is empty"):
        RunLayout(" ")
    with pytest.raises(ValueError, match="resnet50_v9"):
        RunLayout("r").model_dir("resnet50_v9")


def test_run_layout_follows_tl_home(tmp_path, monkeypatch):
    run = RunLayout("r1")
    monkeypatch.setenv("TL_HOME", str(tmp_path / "elsewhere"))
    assert run.folder == (tmp_path / "elsewhere").resolve() / "runs" / config.run_key("r1")
    assert RunLayout("r1", folder=tmp_path / "old").data_dir == tmp_path / "old" / "data"


def test_links_between_served_pages():
    run, other = RunLayout("a"), RunLayout("b")
    assert layout.href(run.report_url_path, layout.REPORTS_INDEX_URL_PATH) == "../../../reports/index.html"
    assert layout.href(run.report_url_path, other.report_url_path) == f"../../{other.key}/report/index.html"
    assert layout.href(layout.REPORTS_INDEX_URL_PATH, other.report_url_path) == f"../runs/{other.key}/report/index.html"


def test_layout_and_files_are_light():
    code = ("import sys, tl_tasks.layout, tl_tasks.files; "
            "bad = [m for m in ('numpy', 'keras', 'tensorflow', 'sqlalchemy') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr


def test_write_atomic_leaves_the_old_file_on_error(work):
    target = work / "a" / "state.json"
    files.write_json_atomic(target, {"epoch": 1})

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text('{"epoch": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(target, half_then_fail)
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]   # no temporary file left


def test_save_npy_atomic_keeps_the_exact_name(work):
    files.save_npy_atomic(work / "predictions.npy", np.arange(5, dtype=np.uint8))
    files.save_npy_atomic(work / "odd.bin", np.arange(3))
    assert sorted(p.name for p in work.iterdir()) == ["odd.bin", "predictions.npy"]
    np.testing.assert_array_equal(np.load(work / "odd.bin"), np.arange(3))


def test_copy_and_bytes(work):
    files.write_bytes_atomic(work / "a.bin", b"\x00\x01")
    files.copy_file_atomic(work / "a.bin", work / "b.bin")
    assert (work / "b.bin").read_bytes() == b"\x00\x01"
    files.write_text_atomic(work / "page.html", "<p>é</p>")
    assert (work / "page.html").read_text(encoding="utf-8") == "<p>é</p>"


def test_publish_dir_replaces_a_folder_whole(work):
    target = work / "entry"

    def build(text):
        def fill(tmp: Path) -> None:
            DataFiles(tmp).meta.write_text(text)
        return fill

    files.publish_dir(target, build("one"))
    files.publish_dir(target, build("two"))
    assert DataFiles(target).meta.read_text() == "two"

    def crash(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        files.publish_dir(target, crash)
    versions = files.version_dirs(target)
    assert sorted(p.name for p in work.iterdir()) == sorted([".entry.v-" + os.readlink(target)[9:], "entry"])
    assert versions == [work / os.readlink(target)] and DataFiles(target).meta.read_text() == "two"
    (work / ".entry.tmp-stale").mkdir()             # left by a process that died mid-build (older versions)
    (work / ".entry.v-0123456789ab").mkdir()        # left by a process that died mid-build
    files.publish_dir(target, build("three"), clean_stale=True)
    assert sorted(p.name for p in work.iterdir()) == sorted([os.readlink(target), "entry"])


def test_publish_dir_turns_a_plain_folder_from_before_versions_into_a_version(work):
    target = work / "entry"
    target.mkdir()
    DataFiles(target).meta.write_text("plain")
    files.publish_dir(target, lambda tmp: DataFiles(tmp).meta.write_text("versioned"))
    assert target.is_symlink() and DataFiles(target).meta.read_text() == "versioned"
    assert [p.name for p in work.iterdir() if p.name != "entry"] == [os.readlink(target)]


def test_replace_symlink_swaps_in_one_rename(work):
    (work / "v1").mkdir()
    (work / "v2").mkdir()
    files.replace_symlink(work / "current", "v1")
    files.replace_symlink(work / "current", "v2")
    assert os.readlink(work / "current") == "v2"
    assert sorted(p.name for p in work.iterdir()) == ["current", "v1", "v2"]


def test_model_files_list_what_a_new_training_replaces(work):
    model = ModelFiles(work)
    assert {p.name for p in model.training_outputs()} == {"model.keras", "train_summary.json", "finished.json",
                                                          "evaluation.json"}
    assert model.predictions not in model.training_outputs()   # history: kept (gc keeps it too)
