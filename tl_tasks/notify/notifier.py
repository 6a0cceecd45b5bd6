"""The DAG's notifier: Airflow's own mechanism (a `BaseNotifier` as DAG-level success/failure callback) around
`tl_tasks.notify.channels`. One message per run, only when a variant regressed or failed, the per-class check
blocked a promotion, or the run failed; never raises."""
from __future__ import annotations

import logging

from airflow.sdk import BaseNotifier

from tl_tasks.layout import report_url
from tl_tasks.notify import channels as notify
from tl_tasks.store import connect

log = logging.getLogger(__name__)


class RetrainingNotifier(BaseNotifier):
    """`on_failure_callback=RetrainingNotifier(run_failed=True)`, `on_success_callback=RetrainingNotifier()`."""

    def __init__(self, run_failed: bool = False, base_url: str | None = None):
        super().__init__()
        self.run_failed = run_failed
        self.base_url = base_url

    def render_template_fields(self, context, jinja_env=None) -> None:
        # Nothing to template; and under dag.test() the context's dag is a SerializedDAG without
        # get_template_env, which BaseNotifier's rendering would trip over.
        return None

    def notify(self, context) -> None:
        try:
            self._notify(context)
        except Exception as exc:  # a notifier that fails must not fail (or re-fail) the run
            log.exception("retraining notification failed: %s", exc)

    def _notify(self, context) -> None:
        dag_run = context.get("dag_run")
        run_id = getattr(dag_run, "run_id", None) or context.get("run_id")
        if not run_id:
            log.warning("retraining notification: no run id in the callback's context; nothing sent")
            return
        with connect() as store:
            run = store.get_run(run_id) or {"run_id": run_id, "results": {}}
        run.setdefault("dag_id", getattr(dag_run, "dag_id", None))
        message = notify.build_message(run, run_failed=self.run_failed, run_error=context.get("reason"),
                                       report_url=report_url(self.base_url or _base_url(), run_id))
        if message is None:
            return
        log.info("retraining notification for %s: %s", run_id, notify.send(message))


def _base_url() -> str:
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback=None) or "http://localhost:8080"
