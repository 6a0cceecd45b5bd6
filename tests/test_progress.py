"""Progress output: a bar redrawn in place on a terminal, one line per step in logs."""
from __future__ import annotations

import io
import logging

from tl_tasks.progress import Progress, keras_verbose


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_logs_get_one_line_per_tenth_and_a_final_line(caplog):
    caplog.set_level(logging.INFO, logger="tl_tasks.progress")
    with Progress("decoding x", total=200, stream=io.StringIO(), log_every_s=3600) as p:
        for _ in range(200):
            p.update()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 11 and lines[0].startswith("decoding x: 20/200 images (10%)")
    assert lines[-1].startswith("decoding x: 200/200 images (100%)") and lines[-1].endswith("(done)")


def test_unknown_total_logs_by_time(caplog):
    caplog.set_level(logging.INFO, logger="tl_tasks.progress")
    with Progress("decoding stream", stream=io.StringIO(), log_every_s=0) as p:
        p.update(5)
        p.update(5)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "decoding stream: 5 images", "decoding stream: 10 images", "decoding stream: 10 images"]


def test_terminal_gets_a_bar_redrawn_in_place(caplog):
    caplog.set_level(logging.INFO, logger="tl_tasks.progress")
    term = _Terminal()
    with Progress("decoding x", total=4, stream=term) as p:
        for _ in range(4):
            p.update()
    out = term.getvalue()
    assert out.startswith("\r[") and out.endswith("\n") and "[" + "=" * 30 + "] decoding x: 4/4 images (100%)" in out
    assert out.count("\n") == 1 and not caplog.records  # nothing in the log when a person watches the bar


def test_keras_verbosity_follows_the_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert keras_verbose() == 2
    monkeypatch.setattr("sys.stdout", _Terminal())
    assert keras_verbose() == 1


def test_decoding_a_folder_reports_progress_in_the_log(tmp_path, caplog):
    from tests.data_helpers import write_image_folder
    from tl_tasks.data.sources import folders

    caplog.set_level(logging.INFO, logger="tl_tasks.progress")
    folder = write_image_folder(tmp_path / "imgs", {"train": {"cat": 6, "dog": 6}, "test": {"cat": 2, "dog": 2}})
    raw = folders.read_folder(folder, 32)
    assert len(raw.x_train) == 12
    assert caplog.records[-1].getMessage().startswith("decoding imgs: 16 images")
