"""Full resync of every DockerToken: the entrypoint of the ``dockertoken-resync`` CronJob.

Who calls it: the CronJob in ``knative/base/cronjob.yaml`` runs ``python -m function.resync`` on a
schedule (every 10 minutes by default). You can also run it by hand.

Why it exists: the ApiServerSource sends nothing for objects that already exist when its
adapter (re)starts, drops events after a few failed attempts, and silently loses changes made
during a watch relist; tokens are revoked or expire in Quay, renewals fall due, failures reach
their retry time. A periodic "look at everything again" is what makes the reconciler eventually
correct (see docs/deploy.md and shared notes on ApiServerSource).

How: it costs what changed, not what exists.

1. **Plan, a page at a time.** It sends the function one ``resyncplan`` CloudEvent per page of
   1,000 DockerTokens (``--planner``, default the sink; it must be the Service itself, not a
   Broker, since the answer matters). The function lists that page, its pull Secrets, and what
   they reference, plans each object with the same pure decision as a reconcile
   (``function/inventory.py``) and answers which objects drifted, and how; the next page
   follows the API server's continue token. The credentials stay with the function: this
   command reads nothing from the API server.
2. **Reconcile only the drifted objects**, each with one resync CloudEvent, as before: type
   ``io.github.herve4m.quay.dockertoken.resync``, source ``/quay-dockertoken/resync``, binary
   content mode, the ApiServerSource extension attributes (``kind``, ``namespace``, ``name``,
   ``apiversion``) and the run's ``resyncwave``, data ``{"namespace": ..., "name": ...}``;
   delivered to ``RESYNC_SINK`` (the Knative Service or the Broker ingress) with bounded
   concurrency while the next pages are planned. Requests are retried on 429/502/503/504 and
   transport errors 3 times with exponential backoff (0.5 s, 1 s, 2 s), the same ``id`` each time.

Output on stdout: a summary a person can read (objects seen, up to date, repaired by kind of
drift, failing by reason, time), then one JSON line with the same counts. Exit status: 0 when
every object was processed, whatever its state (an object that fails, or waits for its retry
time, is counted by reason, not a failed run); 1 when some resync events could not be
delivered; 2 when the run could not plan every page (the function or the API server
unreachable, or refusing) or its configuration is wrong.

Environment: ``RESYNC_SINK``, ``RESYNC_PLANNER`` (default: the sink), ``RESYNC_CONCURRENCY``
(default 8), ``RESYNC_NAMESPACE``, ``RESYNC_PAGE_SIZE`` (default 1000), ``RESYNC_TIMEOUT``
(seconds per request, default 60), ``RESYNC_TOKEN_FILE`` (the projected ServiceAccount token
sent as ``Authorization: Bearer``, which the function checks: ``function/auth.py``; on plan
requests too, unless ``RESYNC_PLANNER_TOKEN_FILE`` names another, for when the events go through a
Broker with an audience of its own), ``LOG_LEVEL`` (default INFO).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from function.auth import planner_auth, sender_auth
from function.events import MAX_LIMIT, OUTCOME_HEADER, PLAN_TYPE, REASON_HEADER, RESYNC_TYPE
from function.logs import excerpt
from function.model import API_VERSION, KIND, PLURAL

__all__ = [
    "EVENT_SOURCE",
    "Delivery",
    "ObjectRef",
    "Summary",
    "deliver",
    "main",
    "plan_event",
    "resync_event",
]

log = logging.getLogger("function.resync")

EVENT_SOURCE = "/quay-dockertoken/resync"

#: Statuses worth another attempt: the Knative activator/queue-proxy or Broker say "not now".
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Delay before retry 1, 2 and 3.
BACKOFF_SECONDS = (0.5, 1.0, 2.0)
#: Outcomes of a reconcile that left the object failing (it waits for its retry time).
FAILING = frozenset({"failed", "retrying", "blocked", "backoff"})

DEFAULT_CONCURRENCY = 8
DEFAULT_PAGE_SIZE = 1000
DEFAULT_TIMEOUT = 60.0

Sleeper = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The namespace and name of one DockerToken."""

    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of delivering one resync event (after retries)."""

    ref: ObjectRef
    ok: bool
    attempts: int
    detail: str = ""
    outcome: str = ""  # what the reconcile did, when the function said (not through a Broker)
    reason: str = ""


@dataclass
class Summary:
    """The run's counts, as printed."""

    seen: int = 0
    pages: int = 0
    up_to_date: int = 0
    repaired: Counter[str] = field(default_factory=Counter)  # kind of drift -> objects
    failing: Counter[str] = field(default_factory=Counter)   # Ready reason -> objects
    undelivered: int = 0
    plan_error: str = ""
    quay_calls: int = 0

    def as_json(self, seconds: float) -> dict[str, Any]:
        return {"seen": self.seen, "pages": self.pages, "upToDate": self.up_to_date,
                "repaired": dict(self.repaired), "failing": dict(self.failing),
                "undelivered": self.undelivered, "planQuayCalls": self.quay_calls,
                "planned": not self.plan_error, "seconds": round(seconds, 3)}

    def text(self, seconds: float) -> str:
        def kinds(counts: Counter[str]) -> str:
            return ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

        lines = [f"resync: {self.seen} DockerToken(s) seen in {seconds:.2f} s ({self.pages} page(s), "
                 f"{self.quay_calls} Quay call(s) to plan)",
                 f"  up to date     {self.up_to_date}",
                 f"  repaired       {sum(self.repaired.values())}  {kinds(self.repaired)}".rstrip(),
                 f"  failing        {sum(self.failing.values())}  {kinds(self.failing)}".rstrip()]
        if self.undelivered:
            lines.append(f"  NOT DELIVERED  {self.undelivered}  (see the log above; the next run "
                         "retries them)")
        if self.plan_error:
            lines.append(f"  NOT PLANNED    the run stopped: {self.plan_error}")
        return "\n".join(lines)


# --- Events and delivery ---------------------------------------------------------------------


def _headers(event_type: str, ref: ObjectRef | None, event_id: str | None,
             wave: str | None) -> dict[str, str]:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id or str(uuid.uuid4()),
        "ce-source": EVENT_SOURCE,
        "ce-type": event_type,
        "ce-time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "ce-resyncwave": wave or str(uuid.uuid4()),
        "content-type": "application/json",
    }
    if ref is not None:
        # Same subject and extensions as ApiServerSource events, so Trigger filters and the
        # function treat both alike.
        headers.update({
            "ce-subject": f"/apis/{API_VERSION}/namespaces/{ref.namespace}/{PLURAL}/{ref.name}",
            "ce-kind": KIND,
            "ce-namespace": ref.namespace,
            "ce-name": ref.name,
            "ce-apiversion": API_VERSION,
        })
    return headers


def resync_event(ref: ObjectRef, event_id: str | None = None,
                 wave: str | None = None) -> tuple[dict[str, str], bytes]:
    """Headers and body of the binary-mode resync CloudEvent for one object.

    ``wave`` identifies the run: the function shares one Quay list per connection between the
    plan and the events of one run, and lists afresh for the next one (default: a run of its own).
    """
    body = json.dumps({"namespace": ref.namespace, "name": ref.name}, separators=(",", ":"))
    return _headers(RESYNC_TYPE, ref, event_id, wave), body.encode()


def plan_event(namespace: str, cont: str, limit: int, wave: str,
               event_id: str | None = None) -> tuple[dict[str, str], bytes]:
    """Headers and body of the binary-mode plan request for one page of DockerTokens."""
    body = json.dumps({"namespace": namespace, "continue": cont, "limit": limit}, separators=(",", ":"))
    return _headers(PLAN_TYPE, None, event_id, wave), body.encode()


def _post(client: httpx.Client, url: str, headers: Mapping[str, str], body: bytes,
          sleep: Sleeper, what: str, auth: httpx.Auth | None = None
          ) -> tuple[httpx.Response | None, int, str]:
    """POST, retrying transient answers: (the successful response or None, attempts, last error).
    ``auth``: the request's credentials when not the client's."""
    extra: dict[str, Any] = {"auth": auth} if auth is not None else {}
    attempts = 0
    detail = ""
    for delay in (*BACKOFF_SECONDS, None):
        attempts += 1
        try:
            try:
                resp = client.post(url, headers=headers, content=body, **extra)
            # a kept-alive connection the server closed meanwhile (its keep-alive timeout, e.g.
            # gunicorn's 2 s, met our backoff; closed, or reset when the request raced the
            # close): sent again at once on a new connection (plans and events are idempotent)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                resp = client.post(url, headers=headers, content=body, **extra)
        except httpx.TransportError as exc:
            detail = f"{type(exc).__name__}: {excerpt(str(exc))}"
        else:
            if resp.is_success:
                return resp, attempts, ""
            detail = f"HTTP {resp.status_code}: {excerpt(resp.text)}"
            if resp.status_code not in RETRY_STATUSES:
                break
        if delay is None:
            break
        log.debug("%s attempt %d: %s; retrying in %.1fs", what, attempts, detail, delay)
        sleep(delay)
    return None, attempts, detail


def deliver(
    client: httpx.Client, sink: str, ref: ObjectRef, sleep: Sleeper = time.sleep, wave: str = ""
) -> Delivery:
    """POST one resync event, retrying transient answers; never raises for HTTP problems."""
    headers, body = resync_event(ref, wave=wave or None)
    resp, attempts, detail = _post(client, sink, headers, body, sleep, f"resync {ref.namespace}/{ref.name}")
    if resp is None:
        return Delivery(ref, False, attempts, detail)
    return Delivery(ref, True, attempts, outcome=resp.headers.get(OUTCOME_HEADER, ""),
                    reason=resp.headers.get(REASON_HEADER, ""))


def _plan_page(client: httpx.Client, planner: str, namespace: str, cont: str, limit: int,
               wave: str, sleep: Sleeper, auth: httpx.Auth | None = None
               ) -> tuple[dict[str, Any] | None, str]:
    """The function's report on one page, or (None, why not)."""
    headers, body = plan_event(namespace, cont, limit, wave)
    resp, attempts, detail = _post(client, planner, headers, body, sleep, "resync plan", auth)
    if resp is None:
        return None, f"{detail} (after {attempts} attempt(s))"
    try:
        report = resp.json()
    except ValueError:
        report = None
    if not isinstance(report, dict) or not isinstance(report.get("drifted"), list):
        return None, (f"HTTP {resp.status_code} from {planner} is not a plan report; --planner (or "
                      "RESYNC_PLANNER) must be the reconciler Service itself, not a Broker")
    return report, ""


# --- Command line ----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _page_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_LIMIT}: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="python -m function.resync",
        description="Ask the reconciler which DockerTokens drifted, a page at a time, and send "
                    "one resync CloudEvent to each of those.",
    )
    p.add_argument(
        "--sink",
        default=env.get("RESYNC_SINK"),
        help="URL that receives the resync events (env RESYNC_SINK)",
    )
    p.add_argument(
        "--planner",
        default=env.get("RESYNC_PLANNER") or None,
        help="URL of the reconciler Service that plans the pages (env RESYNC_PLANNER; default: "
             "the sink; set it when the sink is a Broker)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=env.get("RESYNC_CONCURRENCY", str(DEFAULT_CONCURRENCY)),
        help="deliveries in flight at once (env RESYNC_CONCURRENCY, default 8)",
    )
    p.add_argument(
        "--namespace",
        default=env.get("RESYNC_NAMESPACE") or None,
        help="only the DockerTokens of this namespace (env RESYNC_NAMESPACE; default: all)",
    )
    p.add_argument(
        "--page-size",
        type=_page_size,
        default=env.get("RESYNC_PAGE_SIZE", str(DEFAULT_PAGE_SIZE)),
        help=f"DockerTokens per plan request (env RESYNC_PAGE_SIZE, default {DEFAULT_PAGE_SIZE}, "
             f"at most {MAX_LIMIT})",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=env.get("RESYNC_TIMEOUT", str(DEFAULT_TIMEOUT)),
        help="seconds per HTTP request (env RESYNC_TIMEOUT, default 60)",
    )
    return p


def _setup_logging() -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _url(parser: argparse.ArgumentParser, value: str | None, what: str) -> str:
    if not value or not value.startswith(("http://", "https://")):
        parser.error(f"{what} must be an http:// or https:// URL")
    return value


def main(argv: list[str] | None = None, *, sleep: Sleeper = time.sleep) -> int:
    """Run one resync; returns the exit status (0 every object processed, 1 some events not
    delivered, 2 the run could not plan every page).

    ``sleep`` is an injection point for tests (backoff really sleeps by default).
    """
    _setup_logging()
    parser = _parser()
    args = parser.parse_args(argv)
    sink = _url(parser, args.sink, "--sink (or RESYNC_SINK)")
    planner = _url(parser, args.planner or sink, "--planner (or RESYNC_PLANNER)")
    namespace = args.namespace or ""
    start = time.monotonic()
    wave = str(uuid.uuid4())
    summary = Summary()
    log.info("resync %s: planning %s on %s, delivering to %s, concurrency %d", wave,
             f"namespace {namespace}" if namespace else "every namespace", planner, sink,
             args.concurrency)

    limits = httpx.Limits(
        max_connections=args.concurrency + 1, max_keepalive_connections=args.concurrency + 1
    )
    pending: list[tuple[str, Future[Delivery]]] = []
    plan_auth = planner_auth()
    with (
        httpx.Client(timeout=args.timeout, limits=limits, auth=sender_auth()) as client,
        ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="resync") as pool,
    ):
        cont = ""
        while True:
            report, why = _plan_page(client, planner, namespace, cont, args.page_size, wave, sleep,
                                     plan_auth)
            if report is None:
                summary.plan_error = why
                log.error("resync plan failed after %d page(s): %s", summary.pages, why)
                break
            summary.pages += 1
            summary.seen += int(report.get("seen") or 0)
            summary.up_to_date += int(report.get("upToDate") or 0)
            summary.quay_calls += int(report.get("quayCalls") or 0)
            summary.failing.update({str(k): int(v) for k, v in (report.get("failing") or {}).items()})
            for item in report["drifted"]:
                ref = ObjectRef(str(item.get("namespace") or ""), str(item.get("name") or ""))
                pending.append((str(item.get("drift") or "unknown"),
                                pool.submit(deliver, client, sink, ref, sleep, wave)))
            cont = str(report.get("continue") or "")
            if not cont:
                break
        # Results are consumed here, in the main thread: the counters need no lock.
        for drift, future in pending:
            result = future.result()
            if not result.ok:
                summary.undelivered += 1
                log.error("resync %s/%s (%s) failed after %d attempt(s): %s", result.ref.namespace,
                          result.ref.name, drift, result.attempts, result.detail)
            elif result.outcome in FAILING:
                summary.failing[result.reason or result.outcome] += 1
            else:
                summary.repaired[drift] += 1
    seconds = time.monotonic() - start
    print(summary.text(seconds), flush=True)
    print(json.dumps(summary.as_json(seconds)), flush=True)
    if summary.plan_error:
        return 2
    return 1 if summary.undelivered else 0


if __name__ == "__main__":
    sys.exit(main())
