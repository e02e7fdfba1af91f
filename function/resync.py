"""Full resync of every DockerToken: the entrypoint of the ``dockertoken-resync`` CronJob.

Who calls it: the CronJob in ``knative/base/cronjob.yaml`` runs ``python -m function.resync`` on a
schedule (every 10 minutes by default). You can also run it by hand with a KUBECONFIG.

Why it exists: the ApiServerSource sends nothing for objects that already exist when its
adapter (re)starts, drops events after a few failed attempts, and silently loses changes made
during a watch relist. A periodic "look at everything again" is what makes the reconciler
eventually correct (see docs/deploy.md and shared notes on ApiServerSource).

What it owns:

* listing every DockerToken in the cluster (``Kube.iter_dockertokens``, paginated, 500 per page);
* turning each one into a resync CloudEvent (``resync_event``): type
  ``io.github.herve4m.quay.dockertoken.resync``, source ``/quay-dockertoken/resync``, binary
  content mode, the ApiServerSource extension attributes (``kind``, ``namespace``, ``name``,
  ``apiversion``) so Broker triggers can filter on them, and data
  ``{"namespace": ..., "name": ...}``;
* delivering them to the reconciler (``RESYNC_SINK`` or ``--sink``: the Knative Service or
  the Broker ingress) with bounded concurrency, retrying 429/502/503/504 and transport errors
  3 times with exponential backoff (0.5 s, 1 s, 2 s). A retry re-sends the same event (same
  ``id``). Any 2xx is a success; the reconciler itself never trusts the event body, it GETs
  the object.

Output: one JSON line on stdout, ``{"listed": N, "sent": N, "failed": N, "seconds": x}``;
failures are logged on stderr. Exit status: 0 when every event was accepted, 1 when at least
one delivery failed, 2 when the listing (or the configuration) failed.

Environment: ``RESYNC_SINK``, ``RESYNC_CONCURRENCY`` (default 8), ``RESYNC_TIMEOUT`` (seconds
per request, default 60), ``RESYNC_TOKEN_FILE`` (the projected ServiceAccount token sent as
``Authorization: Bearer``, which the function checks: ``function/auth.py``), ``LOG_LEVEL``
(default INFO).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from function.auth import sender_auth
from function.events import RESYNC_TYPE
from function.logs import excerpt
from function.model import API_VERSION, KIND, PLURAL

__all__ = [
    "EVENT_SOURCE",
    "Delivery",
    "ObjectRef",
    "main",
    "resync_event",
]

log = logging.getLogger("function.resync")

EVENT_SOURCE = "/quay-dockertoken/resync"

#: Statuses worth another attempt: the Knative activator/queue-proxy or Broker say "not now".
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Delay before retry 1, 2 and 3.
BACKOFF_SECONDS = (0.5, 1.0, 2.0)

DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT = 60.0

Lister = Callable[[], Iterable[Mapping[str, Any]]]
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


# --- Events and delivery ---------------------------------------------------------------------


def resync_event(ref: ObjectRef, event_id: str | None = None,
                 wave: str | None = None) -> tuple[dict[str, str], bytes]:
    """Headers and body of the binary-mode resync CloudEvent for one object.

    ``wave`` identifies the run: the function shares one Quay list per connection between the
    events of one run, and lists afresh for the next one (default: a run of its own).
    """
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id or str(uuid.uuid4()),
        "ce-source": EVENT_SOURCE,
        "ce-type": RESYNC_TYPE,
        "ce-time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        # Same subject and extensions as ApiServerSource events, so Trigger filters and the
        # function treat both alike.
        "ce-subject": f"/apis/{API_VERSION}/namespaces/{ref.namespace}/{PLURAL}/{ref.name}",
        "ce-kind": KIND,
        "ce-namespace": ref.namespace,
        "ce-name": ref.name,
        "ce-apiversion": API_VERSION,
        "ce-resyncwave": wave or str(uuid.uuid4()),
        "content-type": "application/json",
    }
    body = json.dumps({"namespace": ref.namespace, "name": ref.name}, separators=(",", ":"))
    return headers, body.encode()


def deliver(
    client: httpx.Client, sink: str, ref: ObjectRef, sleep: Sleeper = time.sleep, wave: str = ""
) -> Delivery:
    """POST one resync event, retrying transient answers; never raises for HTTP problems."""
    headers, body = resync_event(ref, wave=wave or None)
    attempts = 0
    detail = ""
    for delay in (*BACKOFF_SECONDS, None):
        attempts += 1
        try:
            resp = client.post(sink, headers=headers, content=body)
        except httpx.TransportError as exc:
            detail = f"{type(exc).__name__}: {excerpt(str(exc))}"
        else:
            if resp.is_success:
                return Delivery(ref, True, attempts)
            detail = f"HTTP {resp.status_code}: {excerpt(resp.text)}"
            if resp.status_code not in RETRY_STATUSES:
                break
        if delay is None:
            break
        log.debug(
            "resync %s/%s attempt %d: %s; retrying in %.1fs",
            ref.namespace,
            ref.name,
            attempts,
            detail,
            delay,
        )
        sleep(delay)
    return Delivery(ref, False, attempts, detail)


def _ref(obj: Mapping[str, Any]) -> ObjectRef:
    meta = obj.get("metadata") or {}
    return ObjectRef(str(meta.get("namespace") or ""), str(meta.get("name") or ""))


# --- Command line ----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
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
        description="Send one resync CloudEvent per DockerToken to the reconciler.",
    )
    p.add_argument(
        "--sink",
        default=env.get("RESYNC_SINK"),
        help="URL that receives the events (env RESYNC_SINK)",
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
        "--timeout",
        type=_positive_float,
        default=env.get("RESYNC_TIMEOUT", str(DEFAULT_TIMEOUT)),
        help="seconds per HTTP request (env RESYNC_TIMEOUT, default 60)",
    )
    return p


def _lister(namespace: str | None) -> Lister:
    """DockerTokens from the API server: in-cluster config in the Job's Pod, else KUBECONFIG."""
    from function.kube import Kube

    return lambda: Kube().iter_dockertokens(namespace)


def _setup_logging() -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(
    argv: list[str] | None = None,
    *,
    lister: Lister | None = None,
    sleep: Sleeper = time.sleep,
) -> int:
    """Run one resync; returns the exit status (0 ok, 1 a delivery failed, 2 listing failed).

    ``lister`` and ``sleep`` are injection points for tests; by default the objects come from
    the API server (``Kube.iter_dockertokens``) and backoff really sleeps.
    """
    _setup_logging()
    parser = _parser()
    args = parser.parse_args(argv)
    sink: str | None = args.sink
    if not sink or not sink.startswith(("http://", "https://")):
        parser.error("--sink (or RESYNC_SINK) must be an http:// or https:// URL")

    start = time.monotonic()
    listed = sent = failed = 0

    def summary() -> None:
        line = {
            "listed": listed,
            "sent": sent,
            "failed": failed,
            "seconds": round(time.monotonic() - start, 3),
        }
        print(json.dumps(line), flush=True)

    try:
        refs = [_ref(obj) for obj in (lister or _lister(args.namespace))()]
    except Exception as exc:
        log.error("listing DockerTokens failed: %s", excerpt(f"{type(exc).__name__}: {exc}"))
        summary()
        return 2
    listed = len(refs)
    log.info("resync of %d DockerToken(s) to %s, concurrency %d", listed, sink, args.concurrency)

    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    with (
        httpx.Client(timeout=args.timeout, limits=limits, auth=sender_auth()) as client,
        ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="resync") as pool,
    ):
        # Results are consumed here, in the main thread: the counters need no lock.
        wave = str(uuid.uuid4())
        for result in pool.map(lambda ref: deliver(client, sink, ref, sleep, wave), refs):
            if result.ok:
                sent += 1
            else:
                failed += 1
                log.error(
                    "resync %s/%s failed after %d attempt(s): %s",
                    result.ref.namespace,
                    result.ref.name,
                    result.attempts,
                    result.detail,
                )
    summary()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
