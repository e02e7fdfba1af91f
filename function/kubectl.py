"""``kubectl dockertoken`` (the console script ``kubectl-dockertoken``): status, renew, audit.

Runs as the person who types it, with their kubeconfig (``--kubeconfig``, else KUBECONFIG or
~/.kube/config; the namespace is ``-n``, else the context's, else ``default``):

- ``status NAME``: Ready and why, the token's dates, the pull Secret, its ServiceAccounts, what
  waits for revocation or a retry, and the recent Events;
- ``renew NAME``: asks for a new token now by setting the annotation
  ``quay.herve4m.github.io/renew-request``; the function rotates the token once per value (it
  records the value handled in ``status.renewRequest``), so repeating the command while a request
  waits does nothing, and the echo of the rotation's own write does nothing;
- ``audit``: ``python -m function.audit``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from function import audit, conditions, decide, renewal
from function.errors import Conflict, PermanentError, ReconcileError
from function.kube import Kube
from function.model import LABEL, RENEW_REQUEST, SUBDOMAIN, DockerToken

PROG = "kubectl dockertoken"
EVENTS_SHOWN = 8
Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# -- pure: what to print ---------------------------------------------------------------------------
def ago(when: str, now: datetime.datetime) -> str:
    """``in 3h5m`` or ``12m ago`` for an RFC 3339 (or Quay) time; "" when absent."""
    at = renewal.parse_time(when)
    if at is None:
        return ""
    delta = at - now
    text = _short(abs(delta))
    return f"in {text}" if delta.total_seconds() > 0 else f"{text} ago"


def _short(value: datetime.timedelta) -> str:
    seconds = int(value.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m{seconds}s" if minutes and seconds else f"{minutes}m" if minutes else f"{seconds}s"


def describe(obj: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: datetime.datetime) -> str:
    """The ``status`` report of one DockerToken."""
    dt = DockerToken.from_object(obj)
    raw: Mapping[str, Any] = obj.get("status") or {}
    st = dt.status

    def when(key: str, empty: str) -> str:
        value = str(raw.get(key) or "")
        return f"{value}  ({ago(value, now)})" if value else empty

    host = str(raw.get("registryHost") or "")
    lines = [f"DockerToken {dt.namespace}/{dt.name}: Quay token {dt.title!r}"
             + (f" for {host}" if host else "")]
    rows: list[tuple[str, str]] = []
    for type_ in (conditions.READY, conditions.CREDENTIAL_VERIFIED):
        cond = st.condition(type_) or {}
        text = f"{cond.get('status', 'Unknown')}  {cond.get('reason', '')}".rstrip() if cond else "Unknown"
        if cond.get("message"):
            text += f": {cond['message']}"
        rows.append((type_, text))
    rows.append(("Token", f"{st.uuid}  created {raw.get('createdTime') or '?'}" if st.uuid else "none yet"))
    if st.uuid:
        rows.append(("Expires", when("expirationTime", "never")))
        rows.append(("Renewal", when("renewalTime", "never (the token does not expire)")))
        rows.append(("Last accessed", when("lastAccessedTime", "never (as of the last resync)")))
    ret = dt.ret_secret or st.ret_secret
    rows.append(("Pull Secret", str(ret) if ret else "none (no spec.retSecretRef)"))
    if dt.service_accounts:
        attached = set(st.service_accounts)
        rows.append(("ServiceAccounts", ", ".join(
            n if n in attached else f"{n} (not attached: does it exist?)" for n in dt.service_accounts)))
    if st.pending_revocation:
        rows.append(("Pending revocation", f"{', '.join(st.pending_revocation)}  "
                     f"after {st.revoke_after or 'the next pass'}"
                     + (f" ({ago(st.revoke_after, now)})" if st.revoke_after else "")))
    if st.retry is not None:
        rows.append(("Retry", f"attempt {st.retry.attempts}, next at {st.retry.not_before} "
                     f"({ago(st.retry.not_before, now)}); "
                     "`kubectl annotate` quay.herve4m.github.io/reconcile-request to retry now"))
    if dt.renew_request:
        rows.append(("Renew request", f"{dt.renew_request}  "
                     + ("(waiting for the reconciler)" if decide.renew_requested(dt) else "(done)")))
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines.append("Events:" if events else "Events: none recorded")
    for ev in sorted(events, key=_event_time)[-EVENTS_SHOWN:]:
        lines.append(f"  {ago(_event_time(ev), now):>9}  {ev.get('type', ''):<7}  "
                     f"{ev.get('reason', ''):<15}  {ev.get('note', '')}")
    return "\n".join(lines)


def _event_time(ev: Mapping[str, Any]) -> str:
    series = ev.get("series") or {}
    return str(series.get("lastObservedTime") or ev.get("eventTime") or
               (ev.get("metadata") or {}).get("creationTimestamp") or "")


# -- I/O ---------------------------------------------------------------------------------------------
def context_namespace(kubeconfig: str | None) -> str:
    """The namespace of the kubeconfig's current context, else ``default``."""
    import yaml

    path = kubeconfig or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or "~/.kube/config"
    try:
        doc = yaml.safe_load(Path(path).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "default"
    contexts = {c.get("name"): c.get("context") or {} for c in doc.get("contexts") or ()}
    return str(contexts.get(doc.get("current-context"), {}).get("namespace") or "default")


def _get(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    obj = kube.get_dockertoken(namespace, name)
    if obj is None:
        raise PermanentError(f"DockerToken {namespace}/{name} not found; "
                             f"`kubectl get dockertokens -n {namespace}` lists them")
    return obj


def cmd_status(kube: Kube, namespace: str, name: str, out: TextIO, now: Clock) -> int:
    obj = _get(kube, namespace, name)
    uid = str((obj.get("metadata") or {}).get("uid") or "")
    try:
        events = kube.list_events(namespace, uid)
    # reading Events is a courtesy: the status is what matters
    except ReconcileError as exc:
        events = []
        print(f"(Events not shown: {exc})", file=out)
    print(describe(obj, events, now()), file=out)
    ready = DockerToken.from_object(obj).status.condition(conditions.READY) or {}
    return 0 if ready.get("status") == "True" else 1


def cmd_renew(kube: Kube, namespace: str, name: str, out: TextIO, now: Clock, *,
              wait: float, sleep: Callable[[float], None] = time.sleep) -> int:
    """Ask for a new token once; with ``wait``, report what the reconciler did."""
    for _ in range(5):  # a concurrent write: read again and decide again
        obj = _get(kube, namespace, name)
        dt = DockerToken.from_object(obj)
        if dt.deleting:
            raise PermanentError(f"DockerToken {namespace}/{name} is being deleted; nothing to renew")
        if decide.renew_requested(dt):
            value, asked = dt.renew_request, ""  # a failure in status is the answer to it
            print(f"A renewal requested at {value} is waiting for the reconciler; not asking again.",
                  file=out)
            break
        value = now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            written = kube.patch_metadata(namespace, name, dt.resource_version,
                                        annotations={RENEW_REQUEST: value})
        except Conflict:
            continue
        if not written:
            raise PermanentError(f"DockerToken {namespace}/{name} not found")
        asked = str((written.get("metadata") or {}).get("resourceVersion") or "")
        print(f"Renewal requested ({RENEW_REQUEST}={value}); old token {dt.status.uuid or 'none'}.", file=out)
        break
    else:
        raise PermanentError(f"DockerToken {namespace}/{name} keeps changing; try again")
    deadline = time.monotonic() + wait
    while wait > 0:
        current = _get(kube, namespace, name)
        dt = DockerToken.from_object(current)
        if dt.status.renew_request == value:
            st, expires = dt.status, (current.get("status") or {}).get("expirationTime")
            print(f"Renewed: new token {st.uuid}, expires {expires or 'never'}.", file=out)
            if st.pending_revocation:
                print(f"The old token stays valid for pulls in flight until {st.revoke_after}; "
                      "the first pass after that revokes it.", file=out)
            return 0
        if dt.renew_request != value:
            print(f"Someone else changed {RENEW_REQUEST} meanwhile ({dt.renew_request!r}); "
                  f"`{PROG} status {name}` shows what happened.", file=out)
            return 1
        ready = dt.status.condition(conditions.READY) or {}
        # a failure recorded after the request (not one from before it, still in status)
        if dt.resource_version != asked and dt.status.retry is not None and ready.get("status") == "False":
            print(f"Not renewed: the DockerToken is failing ({ready.get('reason')}: "
                  f"{ready.get('message')}); fix that and the request is carried out on the next pass.",
                  file=out)
            return 1
        if time.monotonic() >= deadline:
            print(f"The reconciler has not acted within {wait:g} s: is its ApiServerSource Ready "
                  f"(`kubectl get apiserversources -A`)? `{PROG} status {name}` shows progress; "
                  "the request stays until it is handled.", file=out)
            return 1
        sleep(0.5)
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", help="kubeconfig to use (default: KUBECONFIG or ~/.kube/config)")
    common.add_argument("-n", "--namespace", help="the DockerToken's namespace (default: the context's)")
    p = argparse.ArgumentParser(prog=PROG, description="Inspect and renew DockerTokens (Quay tokens).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{status,renew,audit}")
    s = sub.add_parser("status", parents=[common], help="Ready and why, expiry, renewal, Events")
    s.add_argument("name")
    r = sub.add_parser("renew", parents=[common], help="a new token now (the old one after the grace)")
    r.add_argument("name")
    r.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="wait that long for the new token (default 30; 0: only ask)")
    sub.add_parser("audit", add_help=False, help="every Quay token and who tracks it (see audit --help)")
    return p


def main(argv: Sequence[str] | None = None, *, out: TextIO = sys.stdout, now: Clock = _utcnow,
         kube: Kube | None = None) -> int:
    """Exit status: 0 done (status: Ready), 1 not Ready / not renewed, 2 usage or access error."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["audit"]:
        return audit.main(args_list[1:], kube=kube, out=out, prog=f"{PROG} audit")
    p = parser()
    args = p.parse_args(args_list)
    if not SUBDOMAIN.fullmatch(args.name):
        p.error(f"NAME: {args.name!r} is not a Kubernetes object name (lower-case letters, digits, '-', '.')")
    namespace = args.namespace or context_namespace(args.kubeconfig)
    if not LABEL.fullmatch(namespace):
        p.error(f"--namespace: {namespace!r} is not a namespace name")
    try:
        kube = kube or (Kube.from_kubeconfig(args.kubeconfig) if args.kubeconfig else Kube())
        if args.command == "status":
            return cmd_status(kube, namespace, args.name, out, now)
        return cmd_renew(kube, namespace, args.name, out, now, wait=args.wait)
    except ReconcileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
