"""Status conditions in the ``metav1.Condition`` shape, and the one rule for updating them.

``lastTransitionTime`` moves only when ``status`` changes, so a pass that changes nothing
produces an identical status, no write, and no new watch event (no self-triggered loop).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

READY = "Ready"
# After a token is created or rotated: does the registry accept its code? (never on other passes)
CREDENTIAL_VERIFIED = "CredentialVerified"
# The Ansible operator's condition; tools that waited on it keep working. Mirrors Ready.
SUCCESSFUL = "Successful"

# Ready reasons (CamelCase, stable: users and alerts match on them).
TOKEN_READY = "TokenReady"
TOKEN_REPLACED = "TokenReplaced"
CLEANUP_BLOCKED = "CleanupBlocked"
SECRET_NOT_FOUND = "ConnectionSecretNotFound"
SECRET_UNREADABLE = "ConnectionSecretUnreadable"
SECRET_CONFLICT = "ReturnSecretConflict"
CREATION_IN_PROGRESS = "CreationInProgress"
CROSS_NAMESPACE_DENIED = "CrossNamespaceRefDenied"


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """Return the list with ``type_`` set; other conditions are kept as they are."""
    value = "Unknown" if status is None else "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    moved = old is None or old.get("status") != value
    new = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if moved else (old or {}).get("lastTransitionTime", now),
        "observedGeneration": generation,
    }
    out = [dict(c) for c in conditions if c.get("type") != type_]
    out.append(new)
    return sorted(out, key=lambda c: str(c.get("type")))


def set_ready(
    conditions: Sequence[Mapping[str, Any]], *, ready: bool, reason: str, message: str,
    generation: int, now: str,
) -> list[dict[str, Any]]:
    """Set Ready and its mirror Successful together."""
    out = set_condition(conditions, type_=READY, status=ready, reason=reason, message=message,
                        generation=generation, now=now)
    return set_condition(out, type_=SUCCESSFUL, status=ready, reason=reason, message=message,
                         generation=generation, now=now)
