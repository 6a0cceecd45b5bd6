"""`files.publish_dir` and `files.replace_symlink` keep their promise: a reader finds the old target or the new
one, whole, at every step of a publish, when any step fails, and while another process reads all along."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tl_tasks import files

# The file-system calls a publish makes; each is a "step" after which the target is checked (or made to fail).
STEPS = (("os", "mkdir"), ("os", "replace"), ("os", "symlink"), ("os", "unlink"), ("os", "fsync"),
         ("shutil", "rmtree"))


class Steps:
    """Wraps the STEPS calls: `check()` runs after each one; the call numbered `fail_at` raises OSError instead."""

    def __init__(self, monkeypatch, check, fail_at: int | None = None):
        self.calls: list[str] = []
        self.check, self.fail_at = check, fail_at
        modules = {"os": os, "shutil": shutil}
        for module, name in STEPS:
            real = getattr(modules[module], name)
            monkeypatch.setattr(modules[module], name, self._wrap(f"{module}.{name}", real))

    def _wrap(self, label, real):
        def step(*args, **kwargs):
            self.calls.append(label)
            if self.fail_at is not None and len(self.calls) == self.fail_at:
                raise OSError(f"injected failure at step {self.fail_at} ({label})")
            out = real(*args, **kwargs)
            self.check(label)
            return out
        return step


def _content(folder: Path) -> str:
    return (folder / "value.txt").read_text() + "/" + (folder / "same.txt").read_text()


def _fill(text: str):
    def build(tmp: Path) -> None:
        (tmp / "value.txt").write_text(text)
        (tmp / "same.txt").write_text(text)
    return build


@pytest.fixture
def published(tmp_path) -> Path:
    target = tmp_path / "pub" / "entry"
    files.publish_dir(target, _fill("old"))
    return target


def _publish_steps(target: Path, monkeypatch, **kwargs) -> Steps:
    seen = []

    def check(label):
        try:
            seen.append(_content(target))
        except OSError as exc:
            raise AssertionError(f"after {label}, {target} could not be read: {exc!r}") from None
        assert seen[-1] in ("old/old", "new/new"), (label, seen[-1])

    with monkeypatch.context() as patch:
        steps = Steps(patch, check, **kwargs)
        try:
            files.publish_dir(target, _fill("new"))
        finally:
            patch.undo()
    return steps


def test_publish_dir_leaves_a_whole_target_after_every_step(published, monkeypatch):
    steps = _publish_steps(published, monkeypatch)
    assert "os.symlink" in steps.calls and "os.replace" in steps.calls   # the swap happened, and was watched
    assert _content(published) == "new/new"
    assert files.version_dirs(published) == [published.parent / os.readlink(published)]  # the old one removed


def _count_steps(tmp_path, monkeypatch) -> int:
    target = tmp_path / "count" / "entry"
    files.publish_dir(target, _fill("old"))
    return len(_publish_steps(target, monkeypatch).calls)


def test_a_failure_at_any_step_of_publish_dir_leaves_the_old_or_the_new_target(published, tmp_path, monkeypatch):
    n = _count_steps(tmp_path, monkeypatch)
    assert n >= 6
    raised = []
    for fail_at in range(1, n + 1):
        target = tmp_path / f"fail{fail_at}" / "entry"
        files.publish_dir(target, _fill("old"))
        try:   # the error surfaces, except where the code expects one (mkdir of an existing folder, cleanup)
            _publish_steps(target, monkeypatch, fail_at=fail_at)
        except OSError as exc:
            raised.append((fail_at, str(exc)))
        assert _content(target) in ("old/old", "new/new"), fail_at
        files.publish_dir(target, _fill("again"), clean_stale=True)   # the next publish cleans up after it
        assert sorted(p.name for p in target.parent.iterdir()) == sorted(["entry", os.readlink(target)])
        assert _content(target) == "again/again"
    assert all(f"injected failure at step {k} " in text for k, text in raised), raised
    assert len(raised) >= n - 3, (raised, n)


def _two_versions_linked(tmp_path: Path) -> tuple[Path, Path]:
    """Folders v1 and v2 under tmp_path/links, and the link `current` -> v1; returns (that folder, the link)."""
    folder = tmp_path / "links"
    folder.mkdir()
    for name in ("v1", "v2"):
        (folder / name).mkdir()
        _fill(name)(folder / name)
    link = folder / "current"
    files.replace_symlink(link, "v1")
    return folder, link


def test_replace_symlink_fails_whole_at_every_step(tmp_path, monkeypatch):
    tmp_path, link = _two_versions_linked(tmp_path)

    def check(label):
        assert _content(link) in ("v1/v1", "v2/v2"), label

    for fail_at in (1, 2, 3):   # os.symlink of the temporary link, os.replace over `link`, the folder's fsync
        with monkeypatch.context() as patch:
            Steps(patch, check, fail_at=fail_at)
            with pytest.raises(OSError, match="injected failure"):
                files.replace_symlink(link, "v2")
        assert os.readlink(link) == ("v2" if fail_at == 3 else "v1"), fail_at  # fsync fails after the swap
        assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1", "v2"], fail_at
        files.replace_symlink(link, "v1")


READER = """
import json, os, sys, time
target, stop = sys.argv[1], sys.argv[2]
ok = missing = torn = 0
while not os.path.exists(stop):
    try:
        with open(os.path.join(target, "value.txt")) as f:
            value = f.read()
        ok += 1
        torn += value == ""
    except OSError:
        missing += 1
print(json.dumps({"ok": ok, "missing": missing, "torn": torn}))
"""


def _read_while(target: Path, tmp_path: Path, write) -> dict:
    """Run `write()` while another process reads `target/value.txt` as fast as it can; the reader's counts."""
    stop = tmp_path / "stop"
    ready = tmp_path / "ready"
    reader = subprocess.Popen([sys.executable, "-c", f"open({str(ready)!r}, 'w').close()\n" + READER, str(target),
                               str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        while not ready.exists():
            assert reader.poll() is None, "the reader process died"
        write()
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    return json.loads(out)


def test_a_concurrent_reader_always_finds_the_published_folder(published, tmp_path):
    def write():
        for i in range(60):
            files.publish_dir(published, _fill(str(i)))

    counts = _read_while(published, tmp_path, write)
    assert counts["ok"] > 0 and counts["missing"] == 0 and counts["torn"] == 0, counts
    assert _content(published) == "59/59" and len(files.version_dirs(published)) == 1


def test_a_concurrent_reader_always_finds_the_symlink(tmp_path):
    tmp_path, link = _two_versions_linked(tmp_path)

    def write():
        for i in range(1000):
            files.replace_symlink(link, f"v{1 + i % 2}")

    counts = _read_while(link, tmp_path, write)
    assert counts["ok"] > 0 and counts["missing"] == 0 and counts["torn"] == 0, counts
