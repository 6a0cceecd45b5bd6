"""The suite's own guard (tests/conftest.py): with TL_TEST_FORBID_SKIPS=1, as CI runs it, a skipped test fails,
and so does a module skipped at collection; an expected failure (xfail) stays what it is."""
from __future__ import annotations

import pytest

from tests.conftest import PROJECT_ROOT

CONFTEST = "from tests.conftest import pytest_runtest_makereport, pytest_sessionfinish, pytest_sessionstart  # noqa\n"
TESTS = """
import pytest

def test_passes():
    assert True

def test_skips():
    pytest.skip("no GPU here")

@pytest.mark.xfail(reason="known gap", strict=True)
def test_known_gap():
    assert False
"""


@pytest.fixture
def guarded(pytester, monkeypatch):
    """A throwaway test folder whose conftest uses the suite's hooks (the project importable as `tests`)."""
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_some=TESTS)
    return pytester


def test_with_forbid_skips_a_skip_fails_the_test_and_the_run(guarded, monkeypatch):
    monkeypatch.setenv("TL_TEST_FORBID_SKIPS", "1")
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=1, failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*skipped, but TL_TEST_FORBID_SKIPS=1 forbids skips*no GPU here*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_with_forbid_skips_a_module_skipped_at_collection_fails_the_run(guarded, monkeypatch):
    monkeypatch.setenv("TL_TEST_FORBID_SKIPS", "1")
    guarded.makepyfile(test_other="import pytest\npytest.skip('no Chromium', allow_module_level=True)\n")
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider", "-k", "passes or other")
    result.stdout.fnmatch_lines(["*TL_TEST_FORBID_SKIPS=1: something was skipped*failing the run*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_without_forbid_skips_a_skip_is_a_skip(guarded, monkeypatch):
    monkeypatch.delenv("TL_TEST_FORBID_SKIPS", raising=False)
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
