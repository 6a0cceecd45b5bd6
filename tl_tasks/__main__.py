"""Command line: `python -m tl_tasks {prepare,train,evaluate,gate,report,runs,champion,db,gc,export,run} ...` (see --help).

Stage commands print their result as JSON on stdout and log to stderr. Exit status: 0 ok, 1 the run (or the
gate) failed, 2 bad input or an error (one line on stderr; --traceback shows the whole story).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from tl_tasks import pipeline, schema
from tl_tasks.airflow_local import run_dag
from tl_tasks.cli import champion_command, db_upgrade_command, runs_command
from tl_tasks.gating.decision import DECISIONS, RegressionError
from tl_tasks.gc import collect_garbage, default_airflow_logs
from tl_tasks.integrations import mlflow
from tl_tasks.layout import RunLayout
from tl_tasks.pipeline import RunFailed
from tl_tasks.stages.gate import GateOptions
from tl_tasks.variants import VARIANT_NAMES

log = logging.getLogger("tl_tasks")
EXIT_FAILED, EXIT_ERROR = 1, 2
EPILOG = """\
examples:
  python -m tl_tasks run --profile quick                 # the Airflow DAG once, headless (what `make run` does)
  python -m tl_tasks run --engine local --profile smoke  # the same stages in this process, without Airflow
  python -m tl_tasks prepare --run-id r1 --profile smoke
  python -m tl_tasks train --run-id r1 --variant cnn
  python -m tl_tasks evaluate --run-id r1 --variant cnn
  python -m tl_tasks gate --run-id r1 --tolerance 0.005 --alpha 0.05
  python -m tl_tasks report --run-id r1
  python -m tl_tasks runs --limit 5
  python -m tl_tasks champion show --variant cnn

Settings resolve as: profile < options (tl_tasks/schema.py lists them; the environment sets none).
Stage commands after `prepare` reuse the settings the run was prepared with unless --profile is given;
options still override them.
Everything a run writes lives under $TL_HOME/runs/<run id>/; results go to $TL_METRICS_DB_URL.
"""


class CLIError(Exception):
    """A usage problem found after parsing (exit 2)."""


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be {minimum} or more")
    return value


def _iso_date(text: str):
    from datetime import datetime

    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date such as 2026-11-01 or 2026-11-01T06:00") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tl_tasks", description="CIFAR-10 transfer-learning retraining: pipeline stages, runs, "
        "metrics database.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help)

    p = command("prepare", "prepare a run's data under $TL_HOME/runs/<run>/data and record the run")
    p.add_argument("--run-id", required=True, help="name of the run (any text; made file-name safe)")
    schema.add_cli_options(p)

    for name, what in (("train", "train one variant of a prepared run and record its history"),
                       ("evaluate", "evaluate one trained variant on the test split and record the metrics")):
        p = command(name, what)
        p.add_argument("--run-id", required=True, help="the run, as given to prepare")
        p.add_argument("--variant", required=True, choices=VARIANT_NAMES, help="the variant")
        schema.add_cli_options(p, variants=False)

    p = command("gate", "compare each variant of a run with its champion and record the gate's decision",
                "Compare each variant with its champion (its latest promotion on the same test set) image by "
                f"image (McNemar test, paired interval) and record the decision: {', '.join(DECISIONS)}. "
                "Promoted models are published under $TL_HOME/champions/.")
    p.add_argument("--run-id", required=True, help="the run, as given to prepare")
    schema.add_cli_options(p, gate=True)

    p = command("report", "write a run's HTML report; prints its path")
    p.add_argument("--run-id", required=True, help="a run recorded in the metrics database")

    p = command("runs", "list recent runs with each variant's accuracy and change")
    p.add_argument("--limit", type=_positive_int, default=20, metavar="N", help="how many runs (default 20)")
    p.add_argument("--variant", choices=VARIANT_NAMES, help="only runs with a result for this variant, and only it")
    p.add_argument("--since", type=_iso_date, metavar="DATE",
                   help="only runs at or after this ISO date or date-time (UTC unless it says otherwise), "
                        "e.g. 2026-11-01 or 2026-11-01T06:00+01:00")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fmt.add_argument("--csv", action="store_true", help="print CSV (one row per run and variant) instead of a table")

    p = command("champion", "list published champions (show: the current one per lineage; history: every promotion)",
                "Champions per variant and lineage (test set), with the model's sha256 and where it is published; "
                "each is checked against the metrics database (missing or altered files are reported, exit 1).")
    p.add_argument("action", choices=("show", "history"), help="show: current champions; history: all promotions")
    p.add_argument("--variant", choices=VARIANT_NAMES, help="one variant only")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command("db", "metrics database maintenance")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    dbsub.add_parser("upgrade", help="migrate the metrics database ($TL_METRICS_DB_URL) to the current schema",
                     description="migrate the metrics database ($TL_METRICS_DB_URL) to the current schema")

    p = command("gc", "free disk: keep the newest N runs whole, thin older ones; champions are never touched",
                "Keep the newest N runs whole; of older runs remove data arrays, models (unless the run is or was "
                "a champion) and checkpoints; remove failed variants' checkpoints, decode-cache entries and JAX's "
                "compiled programs unused for --cache-days and the thinned runs' Airflow task logs. predictions.npy, summaries, reports, "
                "database rows and $TL_HOME/champions/ are always kept. Prints what it freed.")
    p.add_argument("--keep", type=_positive_int, required=True, metavar="N", help="newest runs to keep whole")
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    p.add_argument("--cache-days", type=float, default=30, metavar="D",
                   help="evict decode-cache entries and compiled programs unused for D days (default 30)")
    p.add_argument("--airflow-logs", metavar="DIR", help="Airflow's task-log folder (default "
                   "$AIRFLOW__LOGGING__BASE_LOG_FOLDER or $AIRFLOW_HOME/logs when it exists)")

    p = command("export", "copy stored runs to a team's platform: `export mlflow` logs runs MLflow lacks "
                "($TL_MLFLOW_TRACKING_URI), registers promotions and moves the `champion` alias; rerunning adds nothing")
    p.add_argument("target", choices=("mlflow",), help="where to: mlflow")
    p.add_argument("--since", type=_iso_date, metavar="DATE", help="only runs at or after this ISO date or date-time")

    p = command("run", "one whole retraining: every stage for every variant; prints the report's path",
                "One whole retraining: prepare, train and evaluate every variant, gate, report. "
                "--engine airflow (default) runs the Airflow DAG once, headless, in this process (dag.test, "
                "with a project-local AIRFLOW_HOME); --engine local runs the same stages without Airflow. "
                "Exit status 1 when the run failed (a variant failed, or a regression with --fail-on-regression).")
    p.add_argument("--engine", choices=("airflow", "local"), default="airflow",
                   help="airflow: the DAG via dag.test() (default); local: the stages in order, no Airflow")
    p.add_argument("--run-id", help="local engine only: the run's name (default cli__<UTC timestamp>)")
    schema.add_cli_options(p, gate=True, run=True)
    return parser


# ------------------------------------------------------------------------------------------ commands

def _stage_settings(args):
    """Settings for a stage after prepare: the run's saved ones (unless --profile), with options on top."""
    saved_path = RunLayout(args.run_id).settings_file
    base = pipeline.load_settings(args.run_id) if args.profile is None and saved_path.is_file() else None
    return schema.settings_from_params(_settings_values(args), base=base)


def _settings_values(args) -> dict:
    """The options given that set Settings fields (gate and run options are the commands' own)."""
    fields = {p.name for p in schema.PARAMS if p.field is not None}
    return {k: v for k, v in schema.values_from_args(args).items() if k in fields}


_OUTPUT: list[str] = []


def _out(text: str) -> None:
    """Print `text` on stdout once the command is done (while it runs, stdout is sent to stderr: Keras's
    per-epoch lines and Airflow's logs must not mix with a command's result)."""
    _OUTPUT.append(f"{text}\n")


def _print_json(data) -> None:
    _out(json.dumps(data, indent=2, default=str))


def cmd_prepare(args) -> int:
    settings = schema.settings_from_params(_settings_values(args))
    _print_json(pipeline.prepare_stage(args.run_id, settings.to_dict(), dag_id=None))
    return 0


def cmd_train(args) -> int:
    _print_json(pipeline.train_stage(args.run_id, args.variant, _stage_settings(args).to_dict()))
    return 0


def cmd_evaluate(args) -> int:
    _print_json(pipeline.evaluate_stage(args.run_id, args.variant, _stage_settings(args).to_dict()))
    return 0


def cmd_gate(args) -> int:
    result = pipeline.gate_stage(args.run_id, _stage_settings(args).to_dict(),
                                 options=GateOptions.from_params(schema.values_from_args(args)))
    _print_json(result)
    return 0


def cmd_report(args) -> int:
    _out(pipeline.report_stage(args.run_id))
    return 0


def cmd_runs(args) -> int:
    _out(runs_command(limit=args.limit, as_json=args.json, variant=args.variant, since=args.since, as_csv=args.csv))
    return 0


def cmd_champion(args) -> int:
    text, ok = champion_command(args.action, variant=args.variant, as_json=args.json)
    _out(text)
    return 0 if ok else EXIT_FAILED


def cmd_db(args) -> int:
    _out(db_upgrade_command())
    return 0


def cmd_gc(args) -> int:

    logs = Path(args.airflow_logs) if args.airflow_logs else default_airflow_logs()
    _out(collect_garbage(args.keep, dry_run=args.dry_run, cache_days=args.cache_days, airflow_logs=logs).text())
    return 0


def cmd_export(args) -> int:
    _print_json(mlflow.export(since=args.since))
    return 0


def cmd_run(args) -> int:
    if args.engine == "airflow":
        if args.run_id:
            raise CLIError("--run-id works with --engine local only; Airflow names its runs (manual__<date>)")
        return _run_dag(args)
    run_id = args.run_id or "cli__" + datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    params = schema.values_from_args(args)
    settings = schema.settings_from_params(params)  # refused here, before anything runs or is recorded
    log.info("run %s: profile %s, variants %s", run_id, settings.profile, ", ".join(settings.variants))
    result = pipeline.run_local(run_id, params)
    for variant, d in result["decisions"].items():
        acc = "-" if d["accuracy"] is None else f"{d['accuracy']:.4f}"
        _out(f"{variant:<12} {d['decision']:<10} test accuracy {acc}")
    _out(f"run {run_id}: {result['state']}" + (f" ({result['error']})" if result["error"] else ""))
    _out(f"report: {result['report_path']}")
    return 0 if result["state"] in ("success", "skipped") else EXIT_FAILED


def _run_dag(args) -> int:
    """Hand over to tl_tasks.airflow_local.run_dag, which sets Airflow's environment before importing Airflow."""
    if not run_dag.DAG_FILE.is_file():
        raise CLIError(f"{run_dag.DAG_FILE} is missing: --engine airflow needs the project checkout; "
                       "use --engine local")
    return run_dag.run_dag(schema.values_from_args(args), out=_out)


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "evaluate": cmd_evaluate, "gate": cmd_gate,
            "report": cmd_report, "runs": cmd_runs, "champion": cmd_champion, "db": cmd_db, "gc": cmd_gc,
            "export": cmd_export, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl." on every connect
    _OUTPUT.clear()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return COMMANDS[args.command](args)
    except (RegressionError, RunFailed) as exc:
        if args.traceback:
            raise
        print(f"failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line instead of a traceback; --traceback for the details
        if args.traceback:
            raise
        print(f"error: {_message(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        sys.stdout.write("".join(_OUTPUT))
        sys.stdout.flush()
        _OUTPUT.clear()


def _message(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    known = isinstance(exc, (ValueError, FileNotFoundError, CLIError)) or type(exc).__module__.startswith("tl_tasks")
    return text if known else f"{type(exc).__name__}: {text} (rerun with --traceback for details)"


if __name__ == "__main__":
    sys.exit(main())
