"""Run the cifar10_retraining DAG once, headless, in this process (Airflow's `dag.test()`); print the report.

    python -m tl_tasks run --profile quick                          # what `make run` does (calls run_dag below)
    python -m tl_tasks.airflow_local.run_dag --conf '{"profile": "smoke", "variants": ["cnn"]}'

Uses the project's Airflow settings (tl_tasks.airflow_local.env: ./airflow_home, ./dags), migrates Airflow's
database and creates the `gpu` pool first. Tasks run one after another in this process; this process must
not fork afterwards (TensorFlow). Exit status: 0 success, 1 the run failed, 2 bad parameters.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

from tl_tasks.airflow_local import env as airflow_env
from tl_tasks.config import DAG_ID, PROFILE_NAMES, PROJECT_ROOT
from tl_tasks.layout import RunLayout
from tl_tasks.store import connect

DAGS_FOLDER = PROJECT_ROOT / "dags"
DAG_FILE = DAGS_FOLDER / f"{DAG_ID}.py"


def load_dag_module(name: str = DAG_FILE.stem) -> ModuleType:
    """The module of `dags/<name>.py`, loaded from its file as Airflow's DAG processor does (dags/ is no package).

    Loaded afresh on every call (the environment, e.g. TL_SCHEDULE, is read at parse time) and registered in
    sys.modules under `name`, as the DAG processor does.
    """
    path = DAGS_FOLDER / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no DAG file {path}: name one of {sorted(p.stem for p in DAGS_FOLDER.glob('*.py'))}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_dag():
    """The DAG object from dags/cifar10_retraining.py."""
    return load_dag_module().retraining_dag


def validate_conf(dag, conf: dict) -> dict:
    """The DAG params a run with `conf` would get; ValueError naming the bad param (as the trigger form does)."""
    from airflow.sdk.exceptions import ParamValidationError

    unknown = sorted(set(conf) - set(dag.params))
    if unknown:
        raise ValueError(f"unknown run parameter(s) {unknown}; valid: {', '.join(dag.params)}")
    params = copy.deepcopy(dag.params)
    try:
        params.update(conf)
        return params.validate()
    except ParamValidationError as exc:
        raise ValueError(str(exc).strip().splitlines()[0]) from None


def run_dag(conf: dict, *, setup: bool = True, out=print) -> int:
    """Trigger one run with `conf` (DAG params) via dag.test(); `out` the task states and the report's path.

    Returns 0 when the run succeeded, 1 when it failed, 2 when `conf` is invalid.
    """
    os.environ.update(airflow_env.airflow_env())  # before Airflow is imported
    dag = load_dag()
    try:
        validate_conf(dag, conf)
    except ValueError as exc:  # before the set-up: a bad conf costs no database migration
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if setup:
        airflow_env.setup()
    print(f"running DAG {dag.dag_id} with conf {json.dumps(conf)}", file=sys.stderr)
    started = time.monotonic()
    dr = dag.test(run_conf=conf)
    elapsed = time.monotonic() - started
    state = str(getattr(dr.state, "value", dr.state))
    out(_task_states(dr, dag.task_ids))
    out(f"DAG run {dr.run_id}: {state} in {elapsed / 60:.1f} min")
    report = _report_path(dr.run_id)
    out(f"report: {report}" if report else "report: none was built (see the build_report task above)")
    return 0 if state == "success" else 1


def _task_states(dr, task_order: list[str]) -> str:
    from airflow.utils.session import create_session

    rank = {task_id: i for i, task_id in enumerate(task_order)}
    with create_session() as session:
        tis = sorted(dr.get_task_instances(session=session), key=lambda ti: (rank.get(ti.task_id, 99), ti.map_index))
        lines = [f"  {ti.task_id}{f'[{ti.rendered_map_index or ti.map_index}]' if ti.map_index >= 0 else ''}: "
                 f"{getattr(ti.state, 'value', ti.state)}" for ti in tis]
    return "tasks:\n" + "\n".join(lines)


def _report_path(run_id: str) -> str | None:
    try:
        with connect() as store:
            run = store.get_run(run_id) or {}
        path = run.get("report_path")
    except Exception:
        path = None
    path = path or str(RunLayout(run_id).report_index)
    return path if Path(path).is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES)
    parser.add_argument("--conf", default="{}", help="more DAG params as JSON, e.g. '{\"epochs\": 1}'")
    parser.add_argument("--skip-setup", action="store_true", help="do not migrate the database or set the pool")
    args = parser.parse_args(argv)
    try:
        conf = json.loads(args.conf)
    except json.JSONDecodeError as exc:
        parser.error(f"--conf is not JSON: {exc}")
    if args.profile:
        conf["profile"] = args.profile
    return run_dag(conf, setup=not args.skip_setup)


if __name__ == "__main__":
    sys.exit(main())
