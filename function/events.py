"""Turn an incoming CloudEvent into the object it names. Called by ``main.py``; no I/O.

Accepted (binary or structured content mode; README "Events"):
  dev.knative.apiserver.resource.{add,update,delete}  data = the whole object
  dev.knative.apiserver.ref.{add,update,delete}       data = {kind, namespace, name, apiVersion}
  io.github.herve4m.quay.dockertoken.resync           data = {namespace, name}  (the CronJob;
                                                      extension resyncwave: the run's id)
  io.github.herve4m.quay.dockertoken.resyncplan       data = {namespace, continue, limit} (the
                                                      CronJob asks which objects of a page drifted)
The body is only used to learn *which* object: the reconciler always reads the current one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from function.errors import BadEvent
from function.model import GROUP, KIND, LABEL, SUBDOMAIN

RESYNC_TYPE = "io.github.herve4m.quay.dockertoken.resync"
PLAN_TYPE = "io.github.herve4m.quay.dockertoken.resyncplan"
# The function's answer to a resync event says what the pass did, for the command's summary.
OUTCOME_HEADER = "Quay-Dockertoken-Outcome"  # ready, failed, retrying, backoff, blocked, ...
REASON_HEADER = "Quay-Dockertoken-Reason"    # the Ready reason
# A continue token is an opaque API server cursor; a few hundred bytes in practice.
MAX_CONTINUE = 4096
MAX_LIMIT = 1000
APISERVER_PREFIXES = ("dev.knative.apiserver.resource.", "dev.knative.apiserver.ref.")
APISERVER_VERBS = ("add", "update", "delete")
# Kubernetes name rules (model.LABEL, model.SUBDOMAIN): namespaces are RFC 1123 labels, object
# names DNS subdomains.
_WAVE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@dataclass(frozen=True)
class Target:
    """The object an event is about, and whether Quay itself must be re-checked (resync)."""

    namespace: str
    name: str
    verify_quay: bool
    wave: str = ""  # a resync run's id: its events share one Quay list per connection


def parse_event(attributes: Mapping[str, Any], data: Any) -> Target | None:
    """The target, or None for an event to acknowledge and ignore (another kind or type).

    Raises BadEvent naming the attribute or field that is wrong.
    """
    event_type = attributes.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise BadEvent("attribute 'type' is missing; send a CloudEvent with ce-type set")
    resync = event_type == RESYNC_TYPE
    if not resync and not _is_apiserver(event_type):
        return None
    if data is not None and not isinstance(data, Mapping):
        raise BadEvent(f"data must be a JSON object for {event_type}, got {type(data).__name__}; "
                       "send a JSON object with Content-Type: application/json")
    body: Mapping[str, Any] = data or {}
    if not resync and not _is_dockertoken(body, attributes):
        return None
    meta = body.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = _first_str(body.get("namespace"), meta.get("namespace"), attributes.get("namespace"))
    name = _first_str(body.get("name"), meta.get("name"), attributes.get("name"))
    if not namespace or not LABEL.match(namespace):
        raise BadEvent(f"namespace {namespace[:80]!r} is missing or not a valid namespace name; "
                       "set data.namespace (or data.metadata.namespace, or the namespace extension)")
    if not name or not SUBDOMAIN.match(name):
        raise BadEvent(f"name {name[:80]!r} is missing or not a valid object name; "
                       "set data.name (or data.metadata.name, or the name extension)")
    wave = attributes.get("resyncwave") if resync else ""
    wave = wave if isinstance(wave, str) and _WAVE.match(wave) else ""
    return Target(namespace, name, verify_quay=resync, wave=wave)


@dataclass(frozen=True)
class PageRequest:
    """A resync plan request: which page of DockerTokens to plan (``inventory.py``)."""

    namespace: str  # "" for every namespace
    cont: str       # the API server's continue token ("" for the first page)
    limit: int
    wave: str


def parse_plan(attributes: Mapping[str, Any], data: Any, default_limit: int) -> PageRequest:
    """The page a ``resyncplan`` event asks for; BadEvent naming the field that is wrong."""
    body = data if data is not None else {}
    if not isinstance(body, Mapping):
        raise BadEvent(f"data must be a JSON object for {PLAN_TYPE}, got {type(body).__name__}")
    namespace, cont, limit = body.get("namespace") or "", body.get("continue") or "", body.get("limit")
    if not isinstance(namespace, str) or (namespace and not LABEL.match(namespace)):
        raise BadEvent(f"data.namespace {str(namespace)[:80]!r} is not a valid namespace name; "
                       "leave it out (or empty) for every namespace")
    if not isinstance(cont, str) or len(cont) > MAX_CONTINUE:
        raise BadEvent(f"data.continue must be the API server's continue token (a string of at most "
                       f"{MAX_CONTINUE} characters)")
    if limit is None:
        limit = default_limit
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadEvent(f"data.limit {str(limit)[:20]!r} must be an integer from 1 to {MAX_LIMIT}")
    wave = attributes.get("resyncwave")
    wave = wave if isinstance(wave, str) and _WAVE.match(wave) else ""
    return PageRequest(namespace, cont, limit, wave)


def _is_apiserver(event_type: str) -> bool:
    for prefix in APISERVER_PREFIXES:
        if event_type.startswith(prefix):
            return event_type[len(prefix):] in APISERVER_VERBS
    return False


def _is_dockertoken(body: Mapping[str, Any], attributes: Mapping[str, Any]) -> bool:
    kind = _first_str(body.get("kind"), attributes.get("kind"))
    api_version = _first_str(body.get("apiVersion"), attributes.get("apiversion"))
    return kind == KIND and (not api_version or api_version.split("/")[0] == GROUP)


def _first_str(*values: Any) -> str:
    return next((v for v in values if isinstance(v, str) and v), "")
