"""Skip what did not change: same data fingerprint, training settings and code version as the last successful
run -> recorded as `skipped: unchanged` with a link to that run, nothing trained; `force` trains anyway."""
from __future__ import annotations

from pathlib import Path

import pytest

from tl_tasks import config, pipeline
from tl_tasks.stages import prepare, skip
from tl_tasks.store import connect

PARAMS = {"profile": "smoke", "variants": ["cnn"], "limit_per_class": 8}


def _jobs(run_id: str, day: int, **extra) -> list[dict]:
    return pipeline.prepare_jobs(run_id, {**PARAMS, **extra}, dag_id="cifar10_retraining",
                                 logical_date=f"2026-11-{day:02d}T00:00:00+00:00")


def test_code_version_is_package_version_plus_commit():
    from tl_tasks import __version__

    version = skip.code_version()
    assert version.startswith(__version__ + "+") and len(version.split("+")[1].split(".")[0]) == 12
    assert prepare.versions()["code"] == version
    # a run's task processes each compute it afresh (Airflow workers, dag.test runs): the same tree, the same value
    import subprocess
    import sys

    other = subprocess.run([sys.executable, "-c", "from tl_tasks.stages import skip; print(skip.code_version())"],
                           capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert other == version


def test_unchanged_run_is_skipped_with_a_link_and_force_retrains(tl_home, monkeypatch):
    from reports import build_report

    assert len(_jobs("r1", 1)) == 1  # nothing before it: trains
    with connect() as store:
        store.upsert_run("r1", state="failed")
    assert len(_jobs("r2", 2)) == 1, "the last run failed: no successful run to compare with, so it trains"
    with connect() as store:
        store.upsert_run("r2", state="success")
    build_report("r2")

    assert _jobs("r3", 3) == []  # same data, settings and code as r2
    with connect() as store:
        run = store.get_run("r3")
    assert run["state"] == "skipped" and run["params"]["skipped"] == {"reason": "unchanged", "same_as": "r2"}
    assert pipeline.gate_stage("r3", None)["skipped"]["same_as"] == "r2"
    report = pipeline.report_stage("r3")
    html = Path(report).read_text(encoding="utf-8")
    assert "Skipped: unchanged" in html and f'href="../../{config.run_key("r2")}/report/index.html"' in html
    assert pipeline.finish_stage("r3")["state"] == "skipped"  # the run succeeds, with nothing trained
    with connect() as store:
        assert store.get_run("r3")["results"] == {} and store.get_run("r3")["state"] == "skipped"

    assert len(_jobs("r4", 4, force=True)) == 1  # forced
    assert len(_jobs("r5", 5, epochs=2)) == 1    # other settings
    with connect() as store:
        for run_id in ("r4", "r5"):
            store.upsert_run(run_id, state="running")
    with monkeypatch.context() as patch:   # not monkeypatch.undo(): that would undo tl_home's TL_HOME too
        patch.setattr(skip, "code_version", lambda: "9.9.9+0123456789ab")
        assert len(_jobs("r6", 6)) == 1          # other code
    with connect() as store:
        store.upsert_run("r6", state="running")
        store.upsert_run("r2", data_fingerprint="0" * 64)
    assert len(_jobs("r7", 7)) == 1              # other data
    assert (tl_home / "runs" / config.run_key("r7") / "settings.json").is_file()  # in this test's TL_HOME


@pytest.mark.parametrize("run, previous, expected", [
    ({"data_fingerprint": "a", "params": {"e": 1, "gate": {"t": 1}}, "versions": {"code": "1+x"}},
     {"data_fingerprint": "a", "params": {"e": 1, "gate": {"t": 2}}, "versions": {"code": "1+x"}}, "unchanged"),
    # evaluation-only settings: a changed evaluation batch or corruption subset does not retrain
    ({"data_fingerprint": "a", "params": {"e": 1, "eval_batch_size": 250, "robustness_images": 120},
      "versions": {"code": "1+x"}},
     {"data_fingerprint": "a", "params": {"e": 1, "eval_batch_size": 64, "robustness_images": 0},
      "versions": {"code": "1+x"}}, "unchanged"),
    ({"data_fingerprint": "a", "params": {"e": 1}, "versions": {"code": "1+x"}},
     {"data_fingerprint": "a", "params": {"e": 2}, "versions": {"code": "1+x"}}, None),  # a training setting
    ({"data_fingerprint": "a", "params": {}, "versions": {}}, {"data_fingerprint": "a", "params": {}, "versions": {}},
     None),  # no code version recorded: cannot tell, so train
    ({"data_fingerprint": None, "params": {}, "versions": {"code": "1"}}, None, None),
])
def test_unchanged_reason(run, previous, expected):
    assert skip.unchanged_reason(run, previous) == expected
