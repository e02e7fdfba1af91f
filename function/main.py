"""The functions-framework entry point, and the only module that knows Flask and HTTP answers.

  functions-framework --source function/main.py --target handle --signature-type cloudevent

Answers decide whether Knative redelivers: 204 with an empty body when done, and when a failure
is recorded in status (its retry is the resync's, after a backoff: redelivering at once would
only feed the loop; a Broker counts a non-empty non-CloudEvent body as a failure), with the
outcome in the headers ``Quay-Dockertoken-Outcome`` and ``-Reason`` (the resync command counts
them); 503 when nothing could be recorded (API server trouble, a concurrent creation;
ApiServerSource retries 503 but not 500); 400 for a malformed event (or a body over 2 MiB, read
as a stream); 401/403 before anything else to a sender without a trusted bearer token
(``auth.py``; no API read, no Quay call), plan requests included. The resync command's plan
requests (``resyncplan``) are answered 200 with the page's report as JSON (``inventory.py``).
``GET /healthz`` serves probes (a CloudEvent function answers GET / with 405).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
from typing import Any

import flask
import functions_framework
from cloudevents.http import from_http
from cloudevents.http.event import CloudEvent

from function import auth, events, logs, result
from function.errors import PermanentError
from function.inventory import PAGE_SIZE, Inventory
from function.reconcile import Reconciler
from function.result import Result

logs.setup()
logger = logging.getLogger("function")

# A DockerToken with managedFields is a few KiB; etcd refuses objects over 1.5 MiB.
MAX_BODY_BYTES = 2 * 1024 * 1024

_lock = threading.Lock()
_reconciler: Reconciler | None = None
_inventory: Inventory | None = None


def reconciler() -> Reconciler:
    """Built on the first event, so the process starts fast and tests can set KUBECONFIG first.
    The deployment's settings are read here, once."""
    global _reconciler
    with _lock:
        if _reconciler is None:
            from function import lastaccess, renewal
            from function.kube import Kube

            period = os.environ.get("RESYNC_PERIOD", "")  # the CronJob's schedule, e.g. "10m"
            grace = float(os.environ.get("ROTATION_GRACE_SECONDS") or 0)
            _reconciler = Reconciler(
                Kube(),
                resync_period=renewal.parse_duration(period, "RESYNC_PERIOD") if period else None,
                rotation_grace=datetime.timedelta(seconds=grace) if grace else None,
                registry_check=_flag(os.environ.get("REGISTRY_CHECK")),
                last_accessed_refresh=lastaccess.parse_interval(os.environ.get(lastaccess.ENV, "")),
                reporting_instance=os.environ.get("HOSTNAME") or socket.gethostname())
        return _reconciler


def _flag(value: str | None) -> bool:
    """An on/off setting that is on unless it says false, no, 0 or off."""
    return (value or "true").strip().lower() not in ("false", "no", "0", "off")


def inventory() -> Inventory:
    """The resync planner; shares the reconciler's API client, Quay token lists and settings,
    so the resync events of a run reuse the lists its plan made."""
    global _inventory
    rec = reconciler()
    with _lock:
        if _inventory is None:
            _inventory = Inventory(rec.kube, rec.cache, quay_factory=rec.quay_factory,
                                   clock=rec.clock, resync_period=rec.resync_period,
                                   rotation_grace=rec.rotation_grace,
                                   registry_check=rec.registry_check,
                                   last_accessed_refresh=rec.last_accessed_refresh)
        return _inventory


def _answer(status: int, message: str) -> flask.Response:
    return flask.Response(message + "\n", status=status, mimetype="text/plain")


@functions_framework.cloud_event
def handle(cloud_event: CloudEvent) -> None:
    started = time.monotonic()
    attrs = cloud_event.get_attributes()
    fields: dict[str, Any] = {"event": attrs.get("type"), "id": attrs.get("id")}
    flask.g.handled = True
    if attrs.get("type") == events.PLAN_TYPE:
        _plan(cloud_event, fields, started)
        return
    try:
        target = events.parse_event(attrs, cloud_event.data)
        if target is not None:
            fields.update(namespace=target.namespace, name=target.name)
        answer = result.IGNORED if target is None else reconciler().reconcile(
            target.namespace, target.name, verify_quay=target.verify_quay, wave=target.wave)
        if target is not None:  # a failure recorded with its retry time is a job done: say which
            flask.g.outcome = (answer.outcome, answer.reason)
    # a malformed event, or no reconciler: the one mapping of errors to answers (result.py)
    except Exception as exc:
        answer = result.from_error(exc)
        if answer.unexpected:
            logger.exception("unexpected error", extra={"fields": fields})
    _log(fields, started, answer)
    if answer.http != result.NO_CONTENT:
        flask.abort(_answer(answer.http, answer.answer))


def _plan(cloud_event: CloudEvent, fields: dict[str, Any], started: float) -> None:
    """Answer a resync plan request: which objects of the page need a reconcile (200, JSON)."""
    flask.g.handled = False  # a 200 with a body, not the empty 204 of events
    try:
        page = events.parse_plan(cloud_event.get_attributes(), cloud_event.data, PAGE_SIZE)
        report = inventory().plan_page(namespace=page.namespace, cont=page.cont, limit=page.limit,
                                       wave=page.wave)
    # refused (a right missing, a continue token expired): retrying the same cannot help
    except PermanentError as exc:
        answer = Result(500, "failed", exc.reason, str(exc), f"cannot plan this page: {exc}")
    # a malformed request (400), the API server failing the page's lists (503: the command
    # retries, then reports the run failed), or a bug: the one mapping of errors (result.py)
    except Exception as exc:
        answer = result.from_error(exc)
        if answer.unexpected:
            logger.exception("unexpected error", extra={"fields": fields})
    else:
        fields.update(namespace=page.namespace or "*")
        _log(fields, started, Result(200, "planned"), seen=report.seen, up_to_date=report.up_to_date,
             drifted=len(report.drifted), failing=report.failing, quay_calls=report.quay_calls)
        flask.abort(flask.Response(json.dumps(report.as_json(), separators=(",", ":")), status=200,
                                   mimetype="application/json"))
    _log(fields, started, answer)
    flask.abort(_answer(answer.http, answer.answer))


def _log(fields: dict[str, Any], started: float, answer: Result, **extra: Any) -> None:
    tally = answer.tally
    line = {**fields, "outcome": answer.outcome, "http": answer.http,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "actions": list(tally.actions), "quay_calls": tally.quay_calls, "writes": tally.writes,
            "claims_read": tally.claims_read, "reason": answer.reason, "message": answer.message}
    if answer.retry_at:
        line["retry_at"] = answer.retry_at
    line.update(extra)
    logger.info("%s %s/%s: %s", fields.get("event"), fields.get("namespace", "-"),
                fields.get("name", "-"), answer.outcome, extra={"fields": line})


def _check_request() -> flask.Response | None:
    """Refuse a sender we do not trust (before anything is read), then what functions-framework
    would turn into a 415 or a 500, with a message that says why."""
    request = flask.request
    if request.method != "POST":
        return None
    started = time.monotonic()
    verdict = auth.verifier().check(request.headers.get("Authorization"))
    if verdict.status:
        fields = {"event": request.headers.get("Ce-Type"), "sender": verdict.who or None}
        _log(fields, started, Result(verdict.status, "refused-sender", message=verdict.message))
        response = _answer(verdict.status, f"sender refused: {verdict.message}")
        if verdict.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _answer(400, f"bad event: body larger than {MAX_BODY_BYTES} bytes")
    body = _read_capped(request)
    if body is None:
        return _answer(400, f"bad event: body larger than {MAX_BODY_BYTES} bytes")
    try:
        from_http(dict(request.headers), body)
    # any parse failure is the sender's: say what the CloudEvents SDK said, briefly
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        return _answer(400, f"bad event: not a valid CloudEvent ({detail}); send ce-id, ce-source, "
                            "ce-type and ce-specversion headers (binary mode) or a structured JSON event")
    return None


def _read_capped(request: flask.Request) -> bytes | None:
    """The body, read as a stream and given up past MAX_BODY_BYTES (a chunked body announces no
    length: reading it whole first would let a sender fill the memory); None when too large."""
    chunks, size = [], 0
    stream = request.stream
    while True:
        chunk = stream.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    body = b"".join(chunks)
    # what request.get_data() returns from now on (functions-framework reads it again)
    request._cached_data = body
    return body


def _empty_success(response: flask.Response) -> flask.Response:
    if flask.g.get("handled") and response.status_code == 200:
        response = flask.Response(status=204)
        outcome, reason = flask.g.get("outcome") or ("", "")
        if outcome:
            response.headers[events.OUTCOME_HEADER] = outcome
        if reason:
            response.headers[events.REASON_HEADER] = reason
    return response


def _install_hooks(app: flask.Flask) -> None:
    app.before_request(_check_request)
    app.after_request(_empty_success)
    app.add_url_rule("/healthz", "healthz", lambda: _answer(200, "ok"), methods=["GET"])


# functions-framework executes this module inside its app context, so hooks can be added here.
if flask.has_app_context():
    _install_hooks(flask.current_app)
