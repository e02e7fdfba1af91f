"""Kubernetes Events (``events.k8s.io/v1``) on a DockerToken, and ServiceAccount pull-secret
edits. Pure functions: ``kube.py`` sends what these build.

Events are for transitions only (a token created, adopted, rotated or revoked, a Secret
restored, Ready turning False), never one per pass: the caller decides when; this module only
builds a body the API server accepts (its ``ValidateEventCreate`` rules) and keeps credentials
out of it. Not to be confused with ``events.py``, the CloudEvents the function receives.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from function.model import API_VERSION, KIND

__all__ = [
    "ACTIONS",
    "NORMAL",
    "REPORTING_CONTROLLER",
    "WARNING",
    "build_event",
    "micro_time",
    "pull_secret_edit",
]

NORMAL, WARNING = "Normal", "Warning"
REPORTING_CONTROLLER = "quay-dockertoken"
# The action each transition reason stands for (Event.action: what was done to `regarding`).
ACTIONS: Mapping[str, str] = {
    "TokenCreated": "CreateToken",
    "TokenAdopted": "AdoptToken",
    "TokenRotated": "RotateToken",
    "TokenRevoked": "RevokeToken",
    "SecretRestored": "RestoreSecret",
}
DEFAULT_ACTION = "Reconcile"
# ValidateEventCreate (k8s.io/kubernetes/pkg/apis/core/validation/events.go).
NOTE_MAX_BYTES = 1024
FIELD_MAX = 128  # action, reason, reportingInstance
NAME_MAX = 253
_TRUNCATED = "..."
# Token codes are 120 characters of [A-Z0-9]: never let one into an Event, whatever the caller
# passes (the same guard as quay.py's messages).
_CODE_LIKE = re.compile(r"[A-Z0-9]{40,}")


def build_event(dt_namespace: str, dt_name: str, dt_uid: str, type_: str, reason: str, note: str,
                now: datetime.datetime, reporting_controller: str = REPORTING_CONTROLLER,
                reporting_instance: str = REPORTING_CONTROLLER,
                action: str | None = None) -> dict[str, Any]:
    """The ``events.k8s.io/v1`` Event about the DockerToken ``dt_namespace/dt_name``.

    ``type_`` is Normal or Warning; ``reason`` a CamelCase word (e.g. TokenRotated, or the
    Ready reason for a Warning); ``action`` defaults to :data:`ACTIONS` of the reason, else
    Reconcile. The note is cut to 1 KiB (UTF-8) and anything shaped like a token code is
    masked. ``reporting_instance`` should name the pod (its host name). The name is the
    DockerToken's plus the time and a digest of what is reported, so the same report at the
    same instant is one object (a second create gets 409), and different ones never collide.
    """
    if type_ not in (NORMAL, WARNING):
        raise ValueError(f"type_ must be {NORMAL} or {WARNING}, not {type_!r}")
    if not reason or not dt_namespace or not dt_name:
        raise ValueError("reason, dt_namespace and dt_name are required")
    when = now.astimezone(datetime.UTC)
    body_note = _cut(_CODE_LIKE.sub("***", note), NOTE_MAX_BYTES)
    digest = hashlib.sha256("\0".join((dt_uid, type_, reason, body_note)).encode()).hexdigest()
    nanos = int(when.timestamp()) * 10**9 + when.microsecond * 1000
    suffix = f".{nanos:x}{digest[:8]}"
    prefix = dt_name[:NAME_MAX - len(suffix)].rstrip(".-")
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{prefix}{suffix}", "namespace": dt_namespace},
        "eventTime": micro_time(when),
        "type": type_,
        "reason": reason[:FIELD_MAX],
        "action": (action or ACTIONS.get(reason, DEFAULT_ACTION))[:FIELD_MAX],
        "note": body_note,
        "regarding": {"apiVersion": API_VERSION, "kind": KIND, "namespace": dt_namespace,
                      "name": dt_name, "uid": dt_uid},
        "reportingController": reporting_controller,
        "reportingInstance": reporting_instance[:FIELD_MAX],
    }


def micro_time(value: datetime.datetime) -> str:
    """``metav1.MicroTime`` in UTC: ``2026-11-26T17:22:43.123456Z``."""
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes, ending in "..." when cut (never mid-character)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit - len(_TRUNCATED)].decode(errors="ignore") + _TRUNCATED


def pull_secret_edit(current: Sequence[Any] | None, secret_name: str,
                     attach: bool) -> list[Any] | None:
    """A ServiceAccount's new ``imagePullSecrets`` with ``secret_name`` attached or detached;
    None when nothing changes (so no write is made).

    Every other entry is kept as it is and where it is, even one this code does not
    understand: only entries naming ``secret_name`` are added (at the end, once) or removed
    (all of them).
    """
    if not secret_name:
        raise ValueError("a Secret name is required")
    entries = list(current or ())
    ours = [e for e in entries if isinstance(e, Mapping) and e.get("name") == secret_name]
    if attach:
        return None if ours else [*entries, {"name": secret_name}]
    if not ours:
        return None
    return [e for e in entries if not (isinstance(e, Mapping) and e.get("name") == secret_name)]
