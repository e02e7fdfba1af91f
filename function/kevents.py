"""Kubernetes Events (``events.k8s.io/v1``) on a DockerToken. Pure functions: ``kube.py``
sends what these build.

Events are for transitions only (a token created, adopted, rotated or revoked, a Secret
restored, Ready turning False), never one per pass: the caller decides when; this module only
builds a body the API server accepts (its ``ValidateEventCreate`` rules) and keeps credentials
out of it. Not to be confused with ``events.py``, the CloudEvents the function receives.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from function.model import API_VERSION, CODE_LIKE, KIND

__all__ = [
    "ACTIONS",
    "NORMAL",
    "REPORTING_CONTROLLER",
    "WARNING",
    "Transition",
    "build_event",
    "micro_time",
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


@dataclass(frozen=True)
class Transition:
    """An Event to record about the DockerToken: what ``decide.py`` says happened."""

    type: str  # NORMAL or WARNING
    reason: str
    note: str


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
    body_note = _cut(CODE_LIKE.sub("***", note), NOTE_MAX_BYTES)
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
