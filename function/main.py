"""The functions-framework entry point, and the only module that knows Flask and HTTP answers.

  functions-framework --source function/main.py --target handle --signature-type cloudevent

Answers decide whether Knative redelivers: 204 with an empty body when done, and when a failure
is recorded in status (its retry is the resync's, after a backoff: redelivering at once would
only feed the loop; a Broker counts a non-empty non-CloudEvent body as a failure), with the
outcome in the headers ``Quay-Dockertoken-Outcome`` and ``-Reason`` (the resync command counts
them); 503 when nothing could be recorded (API server trouble, a concurrent creation;
ApiServerSource retries 503 but not 500); 400 for a malformed event. The resync command's plan
requests (``resyncplan``) are answered 200 with the page's report as JSON (``inventory.py``).
``GET /healthz`` serves probes (a CloudEvent function answers GET / with 405).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import flask
import functions_framework
from cloudevents.http import from_http
from cloudevents.http.event import CloudEvent

from function import events, logs
from function.errors import BadEvent, PermanentError, TemporaryError
from function.inventory import PAGE_SIZE, Inventory
from function.reconcile import Outcome, Reconciler

logs.setup()
logger = logging.getLogger("function")

# A DockerToken with managedFields is a few KiB; etcd refuses objects over 1.5 MiB.
MAX_BODY_BYTES = 2 * 1024 * 1024

_lock = threading.Lock()
_reconciler: Reconciler | None = None
_inventory: Inventory | None = None


def reconciler() -> Reconciler:
    """Built on the first event, so the process starts fast and tests can set KUBECONFIG first."""
    global _reconciler
    with _lock:
        if _reconciler is None:
            from function import renewal
            from function.kube import Kube

            period = os.environ.get("RESYNC_PERIOD", "")  # the CronJob's schedule, e.g. "10m"
            _reconciler = Reconciler(Kube(), resync_period=renewal.parse_duration(
                period, "RESYNC_PERIOD") if period else None)
        return _reconciler


def inventory() -> Inventory:
    """The resync planner; shares the reconciler's API client and Quay token lists, so the
    resync events of a run reuse the lists its plan made."""
    global _inventory
    rec = reconciler()
    with _lock:
        if _inventory is None:
            _inventory = Inventory(rec.kube, rec.cache, quay_factory=rec.quay_factory,
                                   clock=rec.clock, resync_period=rec.resync_period)
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
        if target is None:
            _log(fields, started, "ignored", 204)
            return
        fields.update(namespace=target.namespace, name=target.name)
        outcome = reconciler().reconcile(target.namespace, target.name,
                                         verify_quay=target.verify_quay, wave=target.wave)
    # the event itself is wrong: redelivering the same bytes cannot help
    except BadEvent as exc:
        _log(fields, started, "bad-event", 400, message=str(exc))
        flask.abort(_answer(400, f"bad event: {exc}"))
    # Quay or the API server is unavailable, or a concurrent delivery holds the lease: redeliver
    except TemporaryError as exc:
        _log(fields, started, "retry", 503, reason=exc.reason, message=str(exc))
        flask.abort(_answer(503, f"temporary failure, retry: {exc}"))
    # a bug or a failure nobody foresaw: 503 so it is retried (500 would drop the event)
    except Exception:
        logger.exception("unexpected error", extra={"fields": fields})
        _log(fields, started, "error", 503)
        flask.abort(_answer(503, "unexpected error; see the function's log"))
    # a failure recorded with its retry time is a job done: the outcome says what it was
    flask.g.outcome = (outcome.result, outcome.reason)
    _log(fields, started, outcome.result, 204, outcome=outcome)


def _plan(cloud_event: CloudEvent, fields: dict[str, Any], started: float) -> None:
    """Answer a resync plan request: which objects of the page need a reconcile (200, JSON)."""
    flask.g.handled = False  # a 200 with a body, not the empty 204 of events
    try:
        page = events.parse_plan(cloud_event.get_attributes(), cloud_event.data, PAGE_SIZE)
        report = inventory().plan_page(namespace=page.namespace, cont=page.cont, limit=page.limit,
                                       wave=page.wave)
    except BadEvent as exc:
        _log(fields, started, "bad-event", 400, message=str(exc))
        flask.abort(_answer(400, f"bad event: {exc}"))
    # the API server failed the page's lists: the command retries, then reports the run failed
    except TemporaryError as exc:
        _log(fields, started, "retry", 503, reason=exc.reason, message=str(exc))
        flask.abort(_answer(503, f"temporary failure, retry: {exc}"))
    # refused (a right missing, a continue token expired): retrying the same cannot help
    except PermanentError as exc:
        _log(fields, started, "failed", 500, message=str(exc))
        flask.abort(_answer(500, f"cannot plan this page: {exc}"))
    except Exception as exc:
        logger.exception("unexpected error", extra={"fields": fields})
        _log(fields, started, "error", 503, message=type(exc).__name__)
        flask.abort(_answer(503, "unexpected error; see the function's log"))
    fields.update(namespace=page.namespace or "*")
    _log(fields, started, "planned", 200, seen=report.seen, up_to_date=report.up_to_date,
         drifted=len(report.drifted), failing=report.failing, quay_calls=report.quay_calls)
    flask.abort(flask.Response(json.dumps(report.as_json(), separators=(",", ":")), status=200,
                               mimetype="application/json"))


def _log(fields: dict[str, Any], started: float, result: str, http: int, *,
         outcome: Outcome | None = None, **extra: Any) -> None:
    line = {**fields, "outcome": result, "http": http,
            "duration_ms": round((time.monotonic() - started) * 1000, 1), **extra}
    if outcome is not None:
        line.update(actions=outcome.actions, quay_calls=outcome.quay_calls, writes=outcome.writes,
                    claims_read=outcome.claims_read, reason=outcome.reason, message=outcome.message)
    logger.info("%s %s/%s: %s", fields.get("event"), fields.get("namespace", "-"),
                fields.get("name", "-"), result, extra={"fields": line})


def _check_request() -> flask.Response | None:
    """Reject what functions-framework would turn into a 415 or a 500, with a message that says why."""
    request = flask.request
    if request.method != "POST":
        return None
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return _answer(400, f"bad event: body larger than {MAX_BODY_BYTES} bytes")
    body = request.get_data(cache=True)
    if len(body) > MAX_BODY_BYTES:
        return _answer(400, f"bad event: body larger than {MAX_BODY_BYTES} bytes")
    try:
        from_http(dict(request.headers), body)
    # any parse failure is the sender's: say what the CloudEvents SDK said, briefly
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        return _answer(400, f"bad event: not a valid CloudEvent ({detail}); send ce-id, ce-source, "
                            "ce-type and ce-specversion headers (binary mode) or a structured JSON event")
    return None


def _empty_success(response: flask.Response) -> flask.Response:
    if flask.g.get("handled") and response.status_code == 200:
        response = flask.Response(status=204)
        result, reason = flask.g.get("outcome") or ("", "")
        if result:
            response.headers[events.OUTCOME_HEADER] = result
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
