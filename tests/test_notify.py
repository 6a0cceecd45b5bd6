"""Notifications: the message built from a stored run, delivered by the DAG's notifier to a real SMTP server
(aiosmtpd) and a real HTTP server on loopback; off when not configured; a broken channel never fails the run."""
from __future__ import annotations

import email
import json
import logging
import socket
from email import policy
from types import SimpleNamespace

import pytest

from tl_tasks.layout import report_url
from tl_tasks.notify import channels as notify
from tl_tasks.store import connect

RUN = "scheduled__2026-12-01T00:00:00+00:00"
GATE = {"decision": "regressed", "accuracy": 0.71, "champion_accuracy": 0.78, "delta": -0.07, "tolerance": 0.02,
        "champion_run_id": "scheduled__2026-11-24", "accuracy_ci": [0.68, 0.74], "delta_ci": [-0.10, -0.04],
        "p_value": 0.0012}


@pytest.fixture
def store(tl_home):
    s = connect()
    yield s
    s.close()


@pytest.fixture
def regressed_run(store):
    store.upsert_run(RUN, dag_id="cifar10_retraining", state="running")
    store.record_evaluation(RUN, "cnn", {"accuracy": 0.71, "loss": 0.9})
    store.record_gate(RUN, "cnn", GATE)
    store.record_evaluation(RUN, "resnet50_v1", {"accuracy": 0.80, "loss": 0.6})
    store.record_gate(RUN, "resnet50_v1", {"decision": "promoted", "accuracy": 0.80, "champion_accuracy": 0.79})
    store.record_failure(RUN, "resnet50_v2", "train", "Traceback ...\nResourceExhaustedError: OOM when allocating")
    return RUN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content, policy=policy.default)))
            return "250 OK"

    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield controller.port, handler.messages
    controller.stop()


def _smtp_conn(monkeypatch, port: int, **extra) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TL_SMTP", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@example.com",
                  "to": "ml-team@example.com", "retry_limit": 0, "timeout": 5, **extra}}))


def _notify(run_id: str, run_failed: bool = False, reason: str | None = None) -> None:
    from tl_tasks.notify.notifier import RetrainingNotifier

    notifier = RetrainingNotifier(run_failed=run_failed, base_url="http://airflow.example:8080/")
    notifier({"dag_run": SimpleNamespace(run_id=run_id, dag_id="cifar10_retraining"), "reason": reason})


def test_message_names_regressions_with_their_statistics_and_failures(store, regressed_run):
    url = report_url("http://airflow.example:8080/", RUN)
    from tl_tasks import config

    assert url == f"http://airflow.example:8080/retraining-reports/runs/{config.run_key(RUN)}/report/index.html"
    message = notify.build_message(store.get_run(RUN), report_url=url)
    text = message["text"]
    assert message["subject"] == f"[retraining] {RUN}: 1 regressed, 1 failed"
    assert ("cnn: accuracy 71.00% (68.00% to 74.00%), champion 78.00%, change -7.00 pts "
            "(95% interval -10.00 to -4.00 pts), p = 0.0012") in text
    assert "resnet50_v2 in train: Traceback ...\nResourceExhaustedError: OOM" in text
    assert "resnet50_v1" not in text and url in text and f'href="{url}"' in message["html"]
    payload = message["payload"]
    assert [r["variant"] for r in payload["regressed"]] == ["cnn"] and payload["regressed"][0]["p_value"] == 0.0012
    assert [f["variant"] for f in payload["failed"]] == ["resnet50_v2"] and payload["report_url"] == url
    json.dumps(payload)


def test_nothing_to_say_means_no_message_and_gate_keys_are_optional(store):
    store.upsert_run("fine", state="success")
    store.record_evaluation("fine", "cnn", {"accuracy": 0.8})
    store.record_gate("fine", "cnn", {"decision": "kept", "accuracy": 0.8, "champion_accuracy": 0.81})
    assert notify.build_message(store.get_run("fine")) is None
    store.record_gate("fine", "cnn", {"decision": "regressed", "accuracy": 0.7})  # no interval, p-value, champion
    assert "cnn: accuracy 70.00%, champion —" in notify.build_message(store.get_run("fine"))["text"]
    message = notify.build_message({"run_id": "early", "results": {}}, run_failed=True, run_error="prepare_data failed")
    assert message["subject"] == "[retraining] early: run failed" and "prepare_data failed" in message["text"]


@pytest.mark.slow
def test_one_email_and_one_webhook_per_run(store, regressed_run, smtp_server, webhook_server, monkeypatch):
    port, mails = smtp_server
    url, posts = webhook_server
    _smtp_conn(monkeypatch, port)
    monkeypatch.setenv("TL_NOTIFY_WEBHOOK_URL", url)
    _notify(RUN)
    assert len(mails) == 1 and len(posts) == 1
    recipients, mail = mails[0]
    assert recipients == ["ml-team@example.com"] and mail["From"] == "airflow@example.com"
    assert mail["Subject"] == f"[retraining] {RUN}: 1 regressed, 1 failed"
    body = mail.get_body(("html",)).get_content()
    assert "p = 0.0012" in body and "OOM when allocating" in body and "/retraining-reports/runs/" in body
    path, content_type, payload = posts[0]
    assert path == "/hooks/retraining" and content_type == "application/json"
    assert payload["run_id"] == RUN and payload["regressed"][0]["delta_ci"] == [-0.10, -0.04]
    # A run that went well sends nothing.
    store.upsert_run("fine", state="success")
    store.record_evaluation("fine", "cnn", {"accuracy": 0.8})
    _notify("fine")
    assert len(mails) == 1 and len(posts) == 1


def test_webhook_from_an_airflow_connection_and_a_failed_run(store, webhook_server, monkeypatch):
    url, posts = webhook_server
    monkeypatch.setenv("AIRFLOW_CONN_TL_WEBHOOK", json.dumps({"conn_type": "http", "extra": {"url": url}}))
    _notify("never-prepared", run_failed=True, reason="task_failure")
    (_, _, payload), = posts
    assert payload["run_id"] == "never-prepared" and payload["state"] == "failed" and payload["error"] == "task_failure"


def test_not_configured_is_off(store, regressed_run, monkeypatch):
    for name in ("AIRFLOW_CONN_TL_SMTP", "AIRFLOW_CONN_TL_WEBHOOK", "TL_NOTIFY_WEBHOOK_URL", "TL_NOTIFY_EMAIL_TO"):
        monkeypatch.delenv(name, raising=False)
    message = notify.build_message(store.get_run(RUN))
    assert notify.send(message) == {"email": "off", "webhook": "off"}


def test_a_broken_channel_neither_raises_nor_stops_the_other(store, regressed_run, webhook_server, monkeypatch,
                                                               caplog):
    url, posts = webhook_server
    _smtp_conn(monkeypatch, _free_port())  # nothing listens there
    monkeypatch.setenv("TL_NOTIFY_WEBHOOK_URL", url)
    caplog.set_level(logging.INFO, logger="tl_tasks")
    outcome = notify.send(notify.build_message(store.get_run(RUN)))
    assert outcome["email"].startswith("error: ") and outcome["webhook"] == "sent" and len(posts) == 1
    assert _errors(caplog) == [f"retraining notification by email failed: {outcome['email'][len('error: '):]}"]
    caplog.clear()
    monkeypatch.setenv("TL_NOTIFY_WEBHOOK_URL", f"http://127.0.0.1:{_free_port()}/closed")
    _notify(RUN)  # both channels fail: logged, not raised
    assert [m.split(":")[0] for m in _errors(caplog)] == ["retraining notification by email failed",
                                                          "retraining notification by webhook failed"]
    (summary,) = [r.getMessage() for r in caplog.records if r.name == "tl_tasks.notify.notifier"]
    assert summary.startswith(f"retraining notification for {RUN}: {{'email': 'error: ")
    assert "'webhook': 'error: URLError: " in summary
    monkeypatch.setenv("TL_NOTIFY_WEBHOOK_URL", "ftp://nope")
    assert "not an http(s) URL" in notify.send(notify.build_message(store.get_run(RUN)))["webhook"]


def test_the_notifier_logs_what_it_swallows(store, regressed_run, monkeypatch, caplog):
    """An error outside the channels (here the metrics database) is swallowed by the notifier, and logged with
    its traceback: the log is the only trace a failed notification leaves."""
    from tl_tasks.notify import notifier

    def broken_connect():
        raise OSError("metrics database unreachable")

    monkeypatch.setattr(notifier, "connect", broken_connect)  # the name the notifier imported
    caplog.set_level(logging.INFO, logger="tl_tasks")
    _notify(RUN)
    (record,) = [r for r in caplog.records if r.name == notifier.__name__]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == "retraining notification failed: metrics database unreachable"


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tl_tasks.notify.channels" and r.levelno == logging.ERROR]


@pytest.fixture
def answering_server():
    """A loopback HTTP server whose answer the test sets: `("status", 503)` or `("hang", seconds)`."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    behaviour = {"status": 204}

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if "hang" in behaviour:
                time.sleep(behaviour["hang"])
                return
            self.send_response(behaviour["status"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", behaviour
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [404, 500, 503])
def test_a_webhook_that_answers_an_error_status_is_an_error(store, regressed_run, answering_server, monkeypatch,
                                                            caplog, status):
    url, behaviour = answering_server
    behaviour["status"] = status
    monkeypatch.setenv("TL_NOTIFY_WEBHOOK_URL", url)
    caplog.set_level(logging.ERROR, logger="tl_tasks")
    outcome = notify.send(notify.build_message(store.get_run(RUN)))
    assert outcome["webhook"].startswith(f"error: HTTPError: HTTP Error {status}"), outcome
    assert _errors(caplog) == [f"retraining notification by webhook failed: {outcome['webhook'][7:]}"]


def test_a_hanging_webhook_times_out(store, regressed_run, answering_server, monkeypatch, caplog):
    import time

    url, behaviour = answering_server
    behaviour["hang"] = 10
    monkeypatch.setenv("TL_NOTIFY_WEBHOOK_URL", url)
    monkeypatch.setattr(notify, "WEBHOOK_TIMEOUT_S", 0.5)
    caplog.set_level(logging.ERROR, logger="tl_tasks")
    start = time.monotonic()
    outcome = notify.send(notify.build_message(store.get_run(RUN)))
    assert time.monotonic() - start < 8, "the webhook's timeout did not stop the wait"
    assert outcome["webhook"] in ("error: TimeoutError: timed out", "error: URLError: <urlopen error timed out>"), \
        outcome
    assert len(_errors(caplog)) == 1


def test_smtp_without_recipients_is_an_error_naming_the_fix(store, regressed_run, smtp_server, monkeypatch, caplog):
    port, mails = smtp_server
    _smtp_conn(monkeypatch, port, to="")
    caplog.set_level(logging.ERROR, logger="tl_tasks")
    outcome = notify.send(notify.build_message(store.get_run(RUN)))
    assert outcome["email"].startswith("error: ValueError: connection 'tl_smtp' is set but has no recipients: set "
                                       "TL_NOTIFY_EMAIL_TO"), outcome
    assert mails == [] and len(_errors(caplog)) == 1
    monkeypatch.setenv("TL_NOTIFY_EMAIL_TO", "oncall@example.com")   # the variable fills the gap
    assert notify.send(notify.build_message(store.get_run(RUN)))["email"] == "sent"
    assert mails[0][0] == ["oncall@example.com"]
