"""Tell people when a run needs attention: one message per run when a variant regressed or failed, or the run
failed. `build_message` is pure (a stored run -> subject, text, HTML, JSON payload); `send` delivers it by email
(an Airflow SMTP connection) and/or a webhook (JSON POST) and never raises: a notifier must not fail the run.

Configuration (nothing configured = no message):
- email: the Airflow connection `TL_NOTIFY_SMTP_CONN_ID` (default `tl_smtp`, SMTP provider's connection type);
  recipients from `TL_NOTIFY_EMAIL_TO` (comma-separated) or the connection's extra `"to"`.
- webhook: `TL_NOTIFY_WEBHOOK_URL`, or the Airflow connection `TL_NOTIFY_WEBHOOK_CONN_ID` (default `tl_webhook`)
  whose extra `"url"` (or host, a full http(s) URL) names the endpoint.
"""
from __future__ import annotations

import html
import json
import logging
import os
import urllib.request

from tl_tasks.gating.decision import Decision

log = logging.getLogger(__name__)

SMTP_CONN_ID = "tl_smtp"
WEBHOOK_CONN_ID = "tl_webhook"
WEBHOOK_TIMEOUT_S = 10


def build_message(run: dict, *, run_failed: bool = False, run_error: str | None = None,
                  report_url: str | None = None) -> dict | None:
    """The message for a stored run (`MetricsStore.get_run` shape), or None when nothing needs attention.

    Returns:
        {subject, text, html, payload}: payload is the webhook's JSON body (run_id, state, regressed, failed,
        report_url), text and html the email's bodies.
    """
    results = run.get("results") or {}
    if isinstance(results, list):
        results = {r["variant"]: r for r in results}
    regressed, failed = [], []
    for variant, r in results.items():
        gate = r.get("gate") or {}
        if (r.get("state") or "").lower() == "failed":
            failed.append({"variant": variant, "stage": r.get("stage"), "error": _tail(r.get("error"))})
        elif gate.get("decision") == Decision.REGRESSED:
            regressed.append({"variant": variant, **{k: gate.get(k) for k in (
                "accuracy", "champion_accuracy", "delta", "accuracy_ci", "delta_ci", "p_value", "champion_run_id")}})
            if regressed[-1]["accuracy"] is None:
                regressed[-1]["accuracy"] = r.get("accuracy")
    error = run_error or run.get("error")
    if not (regressed or failed or run_failed):
        return None
    run_id = run["run_id"]
    what = [f"{len(regressed)} regressed" if regressed else "", f"{len(failed)} failed" if failed else "",
            "run failed" if run_failed else ""]
    subject = f"[retraining] {run_id}: " + ", ".join(w for w in what if w)
    lines = [f"Run {run_id} ({run.get('dag_id') or 'cifar10_retraining'}) needs attention."]
    if run_failed:
        lines.append(f"The run failed{': ' + _tail(error, 2000) if error else '.'}")
    if regressed:
        lines.append("Regressed against the champion:")
        lines += [f"  - {_regressed_text(r)}" for r in regressed]
    if failed:
        lines.append("Failed variants:")
        lines += [f"  - {f['variant']}{' in ' + f['stage'] if f['stage'] else ''}: {f['error'] or 'no error recorded'}"
                  for f in failed]
    if report_url:
        lines.append(f"Report: {report_url}")
    text = "\n".join(lines) + "\n"
    body = "".join(f"<p>{html.escape(line)}</p>" if not line.startswith("  - ") else
                   f"<li>{html.escape(line[4:])}</li>" for line in lines)
    if report_url:
        body = body.replace(html.escape(f"Report: {report_url}"),
                            f'Report: <a href="{html.escape(report_url)}">{html.escape(report_url)}</a>')
    payload = {"run_id": run_id, "dag_id": run.get("dag_id"), "state": "failed" if run_failed else run.get("state"),
               "error": _tail(error, 2000) if run_failed and error else None,
               "regressed": regressed, "failed": failed, "report_url": report_url, "summary": subject}
    return {"subject": subject, "text": text, "html": f"<html><body>{body}</body></html>", "payload": payload}


def send(message: dict, *, get_connection=None) -> dict:
    """Deliver `message` on every configured channel. Never raises.

    Args:
        get_connection: conn_id -> Airflow Connection (default `BaseHook.get_connection`); a missing one = off.

    Returns:
        {channel: "sent" | "off" | "error: ..."} for "email" and "webhook".
    """
    get_connection = get_connection or _airflow_connection
    outcome = {}
    for channel, fn in (("email", _send_email), ("webhook", _send_webhook)):
        try:
            outcome[channel] = fn(message, get_connection)
        except Exception as exc:  # a broken notifier must not fail the run
            log.error("retraining notification by %s failed: %s: %s", channel, type(exc).__name__, exc)
            outcome[channel] = f"error: {type(exc).__name__}: {exc}"
    return outcome


def _send_email(message: dict, get_connection) -> str:
    conn_id = os.environ.get("TL_NOTIFY_SMTP_CONN_ID") or SMTP_CONN_ID
    conn = get_connection(conn_id)
    if conn is None:
        return "off"
    to = os.environ.get("TL_NOTIFY_EMAIL_TO") or (conn.extra_dejson or {}).get("to")
    if not to:
        raise ValueError(f"connection {conn_id!r} is set but has no recipients: set TL_NOTIFY_EMAIL_TO or the "
                         "connection's extra {\"to\": \"a@example.com, b@example.com\"}")
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(to=to, subject=message["subject"], html_content=message["html"],
                             mime_subtype="alternative")
    return "sent"


def _send_webhook(message: dict, get_connection) -> str:
    url = os.environ.get("TL_NOTIFY_WEBHOOK_URL")
    if not url:
        conn = get_connection(os.environ.get("TL_NOTIFY_WEBHOOK_CONN_ID") or WEBHOOK_CONN_ID)
        if conn is None:
            return "off"
        url = (conn.extra_dejson or {}).get("url") or conn.host
    if not url or not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook url={url!r} is not an http(s) URL: set TL_NOTIFY_WEBHOOK_URL or the "
                         "connection's extra {\"url\": \"https://...\"}")
    request = urllib.request.Request(url, data=json.dumps(message["payload"]).encode("utf-8"), method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:  # noqa: S310 (http(s) only, checked above)
        response.read()
    return "sent"


def _airflow_connection(conn_id: str):
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _regressed_text(r: dict) -> str:
    bits = [f"{r['variant']}: accuracy {_pct(r.get('accuracy'))}"]
    if r.get("accuracy_ci"):
        bits[0] += f" ({_interval(r['accuracy_ci'])})"
    bits.append(f"champion {_pct(r.get('champion_accuracy'))}")
    if r.get("delta") is not None:
        bits.append(f"change {r['delta'] * 100:+.2f} pts"
                    + (f" (95% interval {_interval(r['delta_ci'], pts=True)})" if r.get("delta_ci") else ""))
    if r.get("p_value") is not None:
        bits.append(f"p = {r['p_value']:.3g}")
    return ", ".join(bits)


def _interval(ci, pts: bool = False) -> str:
    try:
        low, high = ci
        if pts:
            return f"{low * 100:+.2f} to {high * 100:+.2f} pts"
        return f"{low * 100:.2f}% to {high * 100:.2f}%"
    except (TypeError, ValueError):
        return str(ci)


def _pct(value) -> str:
    return "—" if value is None else f"{float(value) * 100:.2f}%"


def _tail(text, limit: int = 1000) -> str | None:
    if not text:
        return None
    text = str(text).strip()
    return text if len(text) <= limit else "…" + text[-limit:]
