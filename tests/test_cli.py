"""The command line (`python -m tl_tasks`): help, argument checks, one-line errors with exit 2, stage commands,
`runs`, `db upgrade` and a whole local run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tl_tasks import config, pipeline
from tl_tasks.__main__ import build_parser, main
from tl_tasks.layout import RunLayout
from tl_tasks.store import connect

PROJECT_ROOT = config.PROJECT_ROOT
COMMANDS = ("prepare", "train", "evaluate", "gate", "report", "runs", "db", "export", "run")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tl_tasks", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def test_help_documents_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert command in text
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert capsys.readouterr().out.strip()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--run-id", "--variant", "--profile", "--dataset", "--epochs", "--image-size", "--batch-size",
                   "--limit-per-class", "--weights", "--seed"):
        assert option in text


@pytest.mark.parametrize("argv", [
    [],
    ["prepare"],                                          # --run-id is required
    ["train", "--run-id", "r"],                           # --variant is required
    ["train", "--run-id", "r", "--variant", "vgg"],
    ["prepare", "--run-id", "r", "--profile", "huge"],
    ["prepare", "--run-id", "r", "--epochs", "0"],
    ["prepare", "--run-id", "r", "--limit-per-class", "1"],
    ["prepare", "--run-id", "r", "--variants", "cnn,vgg"],
    ["gate", "--run-id", "r", "--tolerance", "1.5"],
    ["runs", "--limit", "0"],
    ["runs", "--since", "last tuesday"],
    ["runs", "--variant", "vgg"],
    ["runs", "--json", "--csv"],
    ["db"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_errors_are_one_line_with_exit_2_not_tracebacks():
    proc = _cli("train", "--run-id", "never-prepared", "--variant", "cnn")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "never prepared" in lines[0] and "python -m tl_tasks prepare" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, match", [
    (["evaluate", "--run-id", "nope", "--variant", "cnn"], "never prepared"),
    (["report", "--run-id", "nope"], "not in the metrics database"),
    (["gate", "--run-id", "nope"], "not in the metrics database"),
    (["prepare", "--run-id", "p", "--profile", "smoke", "--dataset", "folder:/no/such/place"], "no/such/place"),
    (["prepare", "--run-id", "p", "--profile", "smoke", "--image-size", "16", "--weights", "imagenet"], "image_size=16"),
    (["run", "--run-id", "x"], "--engine local"),
    (["run", "--engine", "local", "--profile", "smoke", "--epochs", "2", "--weights", "imagenet", "--image-size",
      "16"], "image_size=16"),
])
def test_errors_name_the_problem(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1


def test_runs_and_db_upgrade(capsys):
    assert main(["db", "upgrade"]) == 0
    assert "metrics database" in capsys.readouterr().out
    assert main(["runs"]) == 0
    assert "no runs" in capsys.readouterr().out
    assert main(["runs", "--json", "--limit", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == []


def test_runs_filters_and_csv(capsys):
    import csv
    import io

    from tl_tasks.store import connect

    with connect() as store:
        for day, (cnn, v1) in enumerate([(0.60, 0.70), (0.65, None), (0.62, 0.75)], start=1):
            run_id = f"r{day}"
            store.upsert_run(run_id, logical_date=f"2026-11-0{day}T00:00:00+00:00", state="success", profile="quick",
                             lineage="ab" * 32)  # deltas compare runs of one lineage
            store.record_evaluation(run_id, "cnn", {"accuracy": cnn})
            if v1 is not None:
                store.record_evaluation(run_id, "resnet50_v1", {"accuracy": v1})
    assert main(["runs", "--json", "--variant", "resnet50_v1"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["run_id"] for r in runs] == ["r3", "r1"] and all(list(r["results"]) == ["resnet50_v1"] for r in runs)
    assert runs[0]["results"]["resnet50_v1"]["delta"] == pytest.approx(0.05)  # change from r1 (r2 had none)
    assert main(["runs", "--json", "--since", "2026-11-02"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["r3", "r2"]
    assert main(["runs", "--json", "--since", "2026-11-02T01:00+02:00", "--limit", "1"]) == 0  # = 2026-11-01T23:00Z
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["r3"]
    assert main(["runs", "--csv", "--since", "2026-11-02", "--variant", "cnn"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["run_id"], r["variant"], r["accuracy"], r["delta"][:6]) for r in rows] == [
        ("r3", "cnn", "0.62", "-0.030"), ("r2", "cnn", "0.65", "0.0500")]
    assert main(["runs", "--since", "2030-01-01"]) == 0
    assert "no runs recorded since 2030-01-01" in capsys.readouterr().out


@pytest.mark.slow
def test_stage_commands(capsys, monkeypatch):
    assert main(["-q", "prepare", "--run-id", "c1", "--profile", "smoke", "--variants", "cnn,resnet50_v2",
                 "--limit-per-class", "20", "--seed", "3"]) == 0
    prepared = json.loads(capsys.readouterr().out)
    assert prepared["data_dir"] == str(RunLayout("c1").data_dir) and prepared["seed"] == 3
    saved = pipeline.load_settings("c1")
    assert saved.variants == ("cnn", "resnet50_v2") and saved.limit_per_class == 20

    # later stages reuse the prepared settings, with options on top
    assert main(["-q", "train", "--run-id", "c1", "--variant", "cnn", "--epochs", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs_run"] == 1
    assert main(["-q", "evaluate", "--run-id", "c1", "--variant", "cnn"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1

    missing = str(config.tl_home() / "missing-weights.h5")  # a real fault: the weights file does not exist
    assert main(["-q", "train", "--run-id", "c1", "--variant", "resnet50_v2", "--weights", missing]) == 2
    assert "missing-weights.h5" in capsys.readouterr().err

    assert main(["-q", "gate", "--run-id", "c1", "--tolerance", "0.05"]) == 0
    gate = json.loads(capsys.readouterr().out)
    assert gate["summary"] == {"bootstrap": ["cnn"], "failed": ["resnet50_v2"]} and gate["tolerance"] == 0.05

    assert main(["-q", "report", "--run-id", "c1"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(RunLayout("c1").report_dir / "index.html") and os.path.isfile(path)

    assert main(["-q", "runs"]) == 0
    table = capsys.readouterr().out
    assert "c1" in table and "failed" in table


@pytest.mark.slow
def test_run_local_prints_report_and_exit_status(capsys, monkeypatch):
    assert main(["-q", "run", "--engine", "local", "--profile", "smoke", "--variants", "cnn", "--run-id", "L1"]) == 0
    out = capsys.readouterr().out
    assert "cnn" in out and "bootstrap" in out and "run L1: success" in out
    report = out.strip().splitlines()[-1]
    assert report.startswith("report: ") and os.path.isfile(report.removeprefix("report: "))

    # the same data, settings and code again: skipped, as the DAG skips it (nothing trained, exit 0)
    assert main(["-q", "run", "--engine", "local", "--profile", "smoke", "--variants", "cnn", "--run-id", "L2"]) == 0
    assert "run L2: skipped" in capsys.readouterr().out
    with connect() as store:
        assert store.get_run("L2")["params"]["skipped"]["same_as"] == "L1" and store.get_run("L2")["results"] == {}

    blocker = RunLayout("cli__broken").model_dir("cnn")  # a real fault: a file where the model's folder must go
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    assert main(["-q", "run", "--engine", "local", "--profile", "smoke", "--variants", "cnn", "--force",
                 "--run-id", "cli__broken"]) == 1  # --force: it trains (and fails) although nothing changed
    out = capsys.readouterr().out
    assert "failed" in out and out.strip().splitlines()[-1].startswith("report: ")
    with connect() as store:
        runs = store.recent_runs(5)
    assert runs[0]["run_id"].startswith("cli__") and runs[0]["state"] == "failed"


def test_parser_defaults():
    args = build_parser().parse_args(["run"])
    assert args.engine == "airflow" and args.tolerance == 0.005 and args.alpha == 0.05 and not args.fail_on_regression
    args = build_parser().parse_args(["prepare", "--run-id", "r", "--limit-per-class", "all"])
    assert args.limit_per_class == 0  # = every image


def test_run_with_airflow_refuses_invalid_params_before_running(tmp_path):
    proc = _cli("run", "--profile", "smoke", "--dataset", "", env={"TL_AIRFLOW_HOME": str(tmp_path / "airflow")})
    assert proc.returncode == 2, proc.stderr[-3000:]
    # the options are the form's own checks (one schema): refused while parsing, before Airflow starts
    assert "error: argument --dataset: dataset='' is empty" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and not (tmp_path / "airflow").exists()
