"""The Airflow 3 plugin that serves the reports: loaded by Airflow's own api-server app, behind Airflow's
authentication (401/403 without valid credentials, 200 with a token or the UI cookie), and only for files
inside the reports folders (404 for ../ and anything else under TL_HOME).

Airflow runs in a subprocess with its own AIRFLOW_HOME, so its configuration never leaks into other tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow  # a migrated Airflow database behind the api-server app

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/retraining-reports"
RUN_ID = "scheduled__2026-02-02T02:00:00+00:00"
HEAVY = ("matplotlib", "tensorflow", "keras", "jax", "torch", "reports", "reports.builder", "reports.context",
         "reports.index", "tl_tasks.store")


@pytest.fixture(scope="module")
def probe(tmp_path_factory, airflow_home_with_db) -> dict:
    """Run `_probe` in a fresh interpreter configured like an api-server with the project's plugins folder."""
    root = tmp_path_factory.mktemp("plugin")
    password = "pw-" + os.urandom(8).hex()
    (root / "passwords.json").write_text(json.dumps({"admin": password, "outsider": password, "no_website": password}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TL_"))}
    env.update({
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow.db'}",
        # Airflow's simple auth manager, except that user "outsider" may not read the cifar10_retraining DAG and
        # user "no_website" may not view the website
        "AIRFLOW__CORE__AUTH_MANAGER": "tests.restricted_auth_manager.RestrictedDagAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,outsider:viewer,no_website:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(48).hex(),
        "TL_HOME": str(root / "tl_home"),
        "PYTHONPATH": str(PROJECT_ROOT),  # the `tests` package (auth manager, probe) is not installed
        "PROBE_PASSWORD": password,
        "PROBE_OUT": str(root / "probe.json"),
    })
    # The api-server checks tokens against Airflow's metadata database (revoked tokens): a copy of the migrated one.
    airflow_home_with_db(root)
    done = subprocess.run([sys.executable, "-c", "from tests.test_plugin import _probe; _probe()"], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"probe failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads((root / "probe.json").read_text())


def test_plugin_is_registered_without_heavy_imports(probe):
    assert probe["heavy_at_startup"] == [], "the plugin must not import ML/plot/report code when Airflow starts"
    view = probe["external_view"]
    assert view and view["name"] == "Retraining reports" and view["href"] == "retraining-reports/"
    assert view["url_route"] == "retraining-reports" and view["destination"] == "nav"
    assert probe["fastapi_app"] == {"url_prefix": PREFIX, "name": "Retraining reports"}


def test_every_task_of_the_run_links_to_its_report(probe):
    assert any("RunReportLink" in str(name) for name in probe["global_links"]), probe["global_links"]
    assert probe["run_report_link"] == f"{PREFIX}/runs/{probe['run_key']}/report/index.html"
    assert probe["other_dag_link"] == ""
    assert probe["status"]["bearer_report"] == 200  # the linked page is served


def test_reports_need_an_authenticated_airflow_user(probe):
    s = probe["status"]
    assert s["no_credentials"] == 401
    assert s["no_credentials_report"] == 401
    assert s["no_credentials_traversal"] == 401, "authentication comes before any path handling"
    assert s["invalid_token"] in (401, 403)
    assert s["invalid_cookie"] in (401, 403)


def test_reports_are_served_with_a_token_or_the_ui_cookie(probe):
    s = probe["status"]
    assert s["bearer_index"] == 200 and s["cookie_index"] == 200
    assert s["bearer_report"] == 200 and s["followed_index_link"] == 200
    assert s["root"] == 307 and probe["root_location"] == "reports/index.html"
    assert probe["index_links"] == [f"../runs/{probe['run_key']}/report/index.html"]
    assert "Retraining report" in probe["report_title"] and "&lt;script&gt;" in probe["report_title"]
    assert "default-src 'none'" in probe["csp"] and probe["content_type"].startswith("text/html")
    assert probe["empty_index_status"] == 200 and "No report has been built yet" in probe["empty_index_text"]


def test_a_user_without_read_access_to_the_dag_gets_no_report_page(probe):
    outsider = probe["outsider"]
    assert outsider["other_dag_readable"] is True, "the outsider is a real, logged-in user with other DAG access"
    assert outsider["index"] == 403 and outsider["report"] == 403 and outsider["root"] == 403
    assert outsider["cookie_report"] == 403 and "read access to the DAG 'cifar10_retraining'" in outsider["detail"]


def test_a_user_who_may_not_view_the_website_gets_no_report_page(probe):
    """The view check comes first: a logged-in user denied the website view (the auth manager's
    is_authorized_view) is refused every page with a plain 403, before any DAG permission is asked."""
    blocked = probe["no_website"]
    assert blocked["dag_readable"] is True, "the user may read the DAG: only the website view is denied"
    assert blocked["index"] == blocked["report"] == blocked["root"] == blocked["cookie_report"] == 403
    assert blocked["detail"] == '{"detail":"Forbidden"}'


def test_reports_are_not_cached(probe):
    assert probe["cache_control"] == "private, no-store"


def test_paths_outside_the_reports_folders_are_refused(probe):
    traversal = probe["traversal"]
    assert len(traversal) >= 10
    assert all(status == 404 for status in traversal.values()), traversal
    assert probe["status"]["raw_ok"] == 200, "the raw requests reach the plugin (so their 404s mean refusal)"


def _probe() -> None:
    """Runs in the subprocess: build the api-server app, seed a report, make requests, write JSON."""
    import asyncio
    import re
    from urllib.parse import urljoin

    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    out: dict = {"status": {}, "traversal": {}}
    app = create_app()
    out["heavy_at_startup"] = [m for m in HEAVY if m in sys.modules]

    from tl_tasks import config
    from tl_tasks import demo as rf
    from tl_tasks.store import connect

    with TestClient(app) as client:
        s = out["status"]
        # Before any report exists, the index route answers with a placeholder page.
        token = client.post("/auth/token", json={"username": "admin", "password": os.environ["PROBE_PASSWORD"]})
        token.raise_for_status()
        auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
        empty = client.get(f"{PREFIX}/reports/index.html", headers=auth)
        out["empty_index_status"], out["empty_index_text"] = empty.status_code, empty.text

        store = connect()
        run_id = f"{RUN_ID}<script>alert(1)</script>"
        rf.seed_run(store, run_id, rf.run_date(0), variants=("cnn", "resnet50_v1"))
        from reports import build_report

        build_report(run_id, store)
        store.close()
        key = config.run_key(run_id)
        out["run_key"] = key
        home = config.tl_home()
        (home / "reports" / "escape.db").symlink_to(home / "metrics.db")
        (home / "runs" / key / "report" / "data").symlink_to(home / "runs" / key / "data")
        report_url = f"{PREFIX}/runs/{key}/report/index.html"

        plugins = client.get("/api/v2/plugins", headers=auth).json()["plugins"]
        mine = next((p for p in plugins if p["name"] == "retraining_reports"), {})
        out["global_links"] = mine.get("global_operator_extra_links")
        from airflow.models.taskinstancekey import TaskInstanceKey
        from airflow.plugins_manager import get_global_operator_extra_links

        link = next(link for link in get_global_operator_extra_links() if link.name == "Run report")
        out["run_report_link"] = link.get_link(None, ti_key=TaskInstanceKey("cifar10_retraining", "gate", run_id, 1))
        out["other_dag_link"] = link.get_link(None, ti_key=TaskInstanceKey("other", "t", run_id, 1))
        out["external_view"] = next(iter(mine.get("external_views") or []), None)
        apps = mine.get("fastapi_apps") or [{}]
        out["fastapi_app"] = {"url_prefix": apps[0].get("url_prefix"), "name": apps[0].get("name")}

        s["no_credentials"] = client.get(f"{PREFIX}/reports/index.html").status_code
        s["no_credentials_report"] = client.get(report_url).status_code
        s["no_credentials_traversal"] = client.get(f"{PREFIX}/..%2fmetrics.db").status_code
        s["invalid_token"] = client.get(f"{PREFIX}/reports/index.html",
                                        headers={"Authorization": "Bearer not-a-jwt"}).status_code
        s["invalid_cookie"] = client.get(f"{PREFIX}/reports/index.html", cookies={"_token": "not-a-jwt"}).status_code

        index = client.get(f"{PREFIX}/reports/index.html", headers=auth)
        s["bearer_index"] = index.status_code
        out["csp"] = index.headers.get("content-security-policy", "")
        out["content_type"] = index.headers.get("content-type", "")
        out["index_links"] = re.findall(r'<a href="([^"#]+)"', index.text)
        followed = urljoin(str(index.url), out["index_links"][0]) if out["index_links"] else report_url
        s["followed_index_link"] = client.get(followed, headers=auth).status_code
        report = client.get(report_url, headers=auth)
        s["bearer_report"] = report.status_code
        out["report_title"] = (re.findall(r"<title>(.*?)</title>", report.text) or [""])[0]
        root = client.get(f"{PREFIX}/", headers=auth, follow_redirects=False)
        s["root"], out["root_location"] = root.status_code, root.headers.get("location")
        s["cookie_index"] = client.get(f"{PREFIX}/reports/index.html",
                                       cookies={"_token": token.json()["access_token"]}).status_code
        out["cache_control"] = report.headers.get("cache-control", "")

        other = client.post("/auth/token", json={"username": "outsider", "password": os.environ["PROBE_PASSWORD"]})
        other.raise_for_status()
        other_auth = {"Authorization": f"Bearer {other.json()['access_token']}"}
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
        denied = client.get(report_url, headers=other_auth)
        out["outsider"] = {
            "index": client.get(f"{PREFIX}/reports/index.html", headers=other_auth).status_code,
            "report": denied.status_code, "detail": denied.text,
            "root": client.get(f"{PREFIX}/", headers=other_auth, follow_redirects=False).status_code,
            "cookie_report": client.get(report_url, cookies={"_token": other.json()["access_token"]}).status_code,
            "other_dag_readable": get_auth_manager().is_authorized_dag(
                method="GET", details=DagDetails(id="some_other_dag"),
                user=type("U", (), {"username": "outsider", "role": "VIEWER", "teams": []})()),
        }

        blocked = client.post("/auth/token", json={"username": "no_website",
                                                   "password": os.environ["PROBE_PASSWORD"]})
        blocked.raise_for_status()
        blocked_auth = {"Authorization": f"Bearer {blocked.json()['access_token']}"}
        refused = client.get(report_url, headers=blocked_auth)
        out["no_website"] = {
            "index": client.get(f"{PREFIX}/reports/index.html", headers=blocked_auth).status_code,
            "report": refused.status_code, "detail": refused.text,
            "root": client.get(f"{PREFIX}/", headers=blocked_auth, follow_redirects=False).status_code,
            "cookie_report": client.get(report_url, cookies={"_token": blocked.json()["access_token"]}).status_code,
            "dag_readable": get_auth_manager().is_authorized_dag(
                method="GET", details=DagDetails(id="cifar10_retraining"),
                user=type("U", (), {"username": "no_website", "role": "VIEWER", "teams": []})()),
        }

        for path in (f"{PREFIX}/..%2fmetrics.db", f"{PREFIX}/%2e%2e/%2e%2e/etc/passwd",
                     f"{PREFIX}/reports/..%2F..%2Fmetrics.db", f"{PREFIX}/runs/{key}/report/..%2f..%2f..%2fmetrics.db",
                     f"{PREFIX}/reports/%2e%2e/metrics.db", f"{PREFIX}/metrics.db", f"{PREFIX}/runs/{key}/data/x_test.npy",
                     f"{PREFIX}/reports/escape.db", f"{PREFIX}/runs/{key}/report/data/x_test.npy",
                     f"{PREFIX}/%2fetc%2fpasswd", f"{PREFIX}/runs/{key}/report/", f"{PREFIX}/reports/nope.html"):
            out["traversal"][path] = client.get(path, headers=auth).status_code

        # Literal "../" segments never survive an HTTP client's normalisation: hand them to the app as is.
        def raw_get(path: str) -> int:
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                     "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                     "headers": [(b"host", b"testserver"), (b"authorization", auth["Authorization"].encode())],
                     "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {}}
            sent: list[dict] = []

            async def call():
                requested, finished = False, asyncio.Event()

                async def receive():
                    nonlocal requested
                    if not requested:
                        requested = True
                        return {"type": "http.request", "body": b"", "more_body": False}
                    await finished.wait()  # as a server does: disconnect only once the response is out
                    return {"type": "http.disconnect"}

                async def send(message):
                    sent.append(message)
                    if message["type"] == "http.response.body" and not message.get("more_body"):
                        finished.set()

                await app(scope, receive, send)

            asyncio.run(call())
            return next(m["status"] for m in sent if m["type"] == "http.response.start")

        for path in (f"{PREFIX}/../metrics.db", f"{PREFIX}/reports/../../metrics.db",
                     f"{PREFIX}/runs/{key}/report/../../../metrics.db", f"{PREFIX}//etc/passwd"):
            out["traversal"]["raw " + path] = raw_get(path)
        s["raw_ok"] = raw_get(f"{PREFIX}/reports/index.html")

    Path(os.environ["PROBE_OUT"]).write_text(json.dumps(out))
