"""Airflow 3 plugin: a "Retraining reports" entry in the UI that serves the HTML reports from $TL_HOME.

Only logged-in Airflow users who may read the `cifar10_retraining` DAG get the pages (Airflow's own `get_user`:
the UI's `_token` cookie or a Bearer token; then the auth manager's `is_authorized_dag`, GET), and only files under `$TL_HOME/reports/` and `$TL_HOME/runs/<key>/report/` are served. Nothing
heavy is imported here: the pages are static files written by `reports` (builder and index).
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from tl_tasks.config import DAG_ID, tl_home  # reports show DAG_ID's runs: reading them needs read access to it
from tl_tasks.layout import (  # light: paths only
    REPORT_DIR,
    REPORTS_DIR,
    REPORTS_INDEX_URL_PATH,
    REPORTS_URL_PREFIX,
    RUNS_DIR,
    report_url,
)

INDEX = REPORTS_INDEX_URL_PATH

URL_PREFIX = REPORTS_URL_PREFIX
# Reports are self-contained pages: no scripts, inline styles, images as data: URIs. The policy makes a
# page inert even if a string slipped past escaping; framing is allowed for the Airflow UI (same origin).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                               "frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",   # per-user authorised pages: no shared or on-disk caches
    "Referrer-Policy": "same-origin",
}
_EMPTY_INDEX = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Retraining reports</title></head>
<body style="font-family:system-ui,sans-serif;margin:2rem"><h1>Retraining reports</h1>
<p>No report has been built yet. Trigger the <code>{DAG_ID}</code> DAG; every run adds its report here.</p>
</body></html>"""


async def require_user(request: Request):
    """Airflow's authentication for the api-server's own routes: a Bearer token or the UI's JWT cookie.

    Raises 401 without credentials, 403 for an invalid token, a user who may not view the website, or one
    without DAG-level read permission on the retraining DAG (the reports show its runs, errors and paths).
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView, DagDetails
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    user = await get_user(request, None, await bearer_scheme(request))
    manager = get_auth_manager()
    if not manager.is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
    if not manager.is_authorized_dag(method="GET", details=DagDetails(id=DAG_ID), user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"Forbidden: reading the reports needs read access to "
                                                       f"the DAG {DAG_ID!r}")
    return user


def resolve_report_file(relative: str) -> Path | None:
    """The file a URL path names, or None unless it is a file inside `reports/` or `runs/<key>/report/`."""
    if not relative or "\x00" in relative or "\\" in relative:
        return None
    parts = Path(relative).parts
    if any(p in ("..", ".") for p in parts) or Path(relative).is_absolute():
        return None
    home = tl_home()
    target = (home / relative).resolve()  # follows symlinks: a link pointing outside is refused below
    allowed = [home / REPORTS_DIR]
    if len(parts) >= 3 and parts[0] == RUNS_DIR and parts[2] == REPORT_DIR:
        allowed.append(home / RUNS_DIR / parts[1] / REPORT_DIR)
    if not any(target.is_relative_to(root.resolve()) for root in allowed):
        return None
    return target if target.is_file() else None


app = FastAPI(title="Retraining reports", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(require_user)])


@app.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    # A relative redirect keeps the page's own relative links (../runs/...) working under any base URL.
    return RedirectResponse(INDEX, status_code=status.HTTP_307_TEMPORARY_REDIRECT)


@app.get("/{relative:path}", include_in_schema=False)
def report_file(relative: str):
    path = resolve_report_file(relative)
    if path is None:
        if relative == INDEX:
            return HTMLResponse(_EMPTY_INDEX, headers=SECURITY_HEADERS)
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such report")
    return FileResponse(path, headers=SECURITY_HEADERS)


REPORTED_DAG_IDS = (DAG_ID,)


class RunReportLink(BaseOperatorLink):
    """"Run report" on every task of the retraining DAG in the UI: that run's report, served by this plugin.

    Computed from the task instance's run id alone (nothing is stored); the report appears once build_report ran.
    """

    name = "Run report"

    def get_link(self, operator, *, ti_key) -> str:
        if ti_key.dag_id not in REPORTED_DAG_IDS:
            return ""  # the UI shows no link for other DAGs' tasks
        from airflow.configuration import conf

        return report_url(conf.get("api", "base_url", fallback="") or "", ti_key.run_id)


class RetrainingReportsPlugin(AirflowPlugin):
    name = "retraining_reports"
    fastapi_apps: ClassVar[list] = [{"app": app, "url_prefix": URL_PREFIX, "name": "Retraining reports"}]
    global_operator_extra_links: ClassVar[list] = [RunReportLink()]
    external_views: ClassVar[list] = [{
        "name": "Retraining reports",
        "href": URL_PREFIX.lstrip("/") + "/",   # relative to the UI's <base href>: works under a base_url path
        "url_route": "retraining-reports",
        "destination": "nav",
        "category": "browse",
    }]
