"""The error tree every layer raises, and what each branch means for the HTTP answer.

    ReconcileError
    ├── BadEvent           the CloudEvent itself is malformed        -> 400, not retried
    ├── TemporaryError     retrying later can succeed
    │   ├── QuayTransient      Quay 5xx/429, timeout, refused or reset connection: recorded in
    │   │                      status with its retry time -> 204 (the outcome in its headers)
    │   └── KubeTransient      API server outage: nothing could be recorded -> 503, redelivered
    │       └── Conflict           the object changed since it was read (409): the pass restarts
    └── PermanentError     retrying cannot help; the reason goes to status -> 204
        ├── ConfigError        a spec field or connection Secret key is wrong
        └── QuayPermanent      Quay refused: auth, scope, TLS, invalid request, disabled feature

What a reconcile pass does with each, whatever phase (observe, plan, apply) raised it, is
decided once, by ``result.classify``; ``result.py`` also turns them into HTTP answers. Messages
never carry a credential: they name the field or Quay's own error text, and at most a short
body excerpt.
"""

from __future__ import annotations

from typing import Self

__all__ = [
    "BadEvent",
    "ConfigError",
    "Conflict",
    "KubeTransient",
    "PermanentError",
    "QuayAuthError",
    "QuayError",
    "QuayFeatureDisabled",
    "QuayInvalidRequest",
    "QuayNotFound",
    "QuayPermanent",
    "QuayTLSError",
    "QuayTransient",
    "QuayUnexpectedResponse",
    "ReconcileError",
    "Restart",
    "TemporaryError",
]


class ReconcileError(Exception):
    """Base of every error the function raises on purpose."""

    #: CamelCase reason written to the Ready condition.
    reason = "Error"

    def with_reason(self, reason: str) -> Self:
        """Give this instance a more specific Ready reason than its class's."""
        self.reason = reason
        return self


class BadEvent(ReconcileError):
    """The CloudEvent is malformed: answer 400 naming what is wrong."""

    reason = "BadEvent"


class TemporaryError(ReconcileError):
    """A retry can succeed: answer 503 so the event source redelivers."""

    reason = "Retrying"


class PermanentError(ReconcileError):
    """A retry cannot help until someone fixes something: status says what, answer 2xx."""

    reason = "Failed"


class ConfigError(PermanentError):
    """A DockerToken field or a connection Secret key is invalid; the message names it."""

    reason = "InvalidConfiguration"


class KubeTransient(TemporaryError):
    """The API server answered 409, 429 or 5xx, or could not be reached."""

    reason = "KubernetesUnavailable"


class Conflict(KubeTransient):
    """The object changed since we read it (409): re-read and retry."""

    reason = "Conflict"


class QuayError(ReconcileError):
    """Base of the errors raised by the Quay client (``quay.py``)."""


class QuayTransient(QuayError, TemporaryError):
    """Quay 5xx or 429, a timeout, a refused or reset connection."""

    reason = "QuayUnavailable"


class QuayPermanent(QuayError, PermanentError):
    """Quay refused the request in a way a retry will not change."""

    reason = "QuayError"


class QuayAuthError(QuayPermanent):
    """Wrong, expired or under-scoped OAuth token, or a wrong username/password."""

    reason = "QuayAuthenticationFailed"


class QuayNotFound(QuayPermanent):
    """The token (or endpoint) does not exist for this user."""

    reason = "QuayNotFound"


class QuayFeatureDisabled(QuayPermanent):
    """Application tokens (FEATURE_APP_SPECIFIC_TOKENS) are disabled on this Quay."""

    reason = "QuayFeatureDisabled"


class QuayInvalidRequest(QuayPermanent):
    """Quay answered 400/415 with its own message."""

    reason = "QuayInvalidRequest"


class QuayTLSError(QuayPermanent):
    """The Quay certificate did not verify: retrying won't help, fix validateCerts or the CA."""

    reason = "QuayTLSError"


class QuayUnexpectedResponse(QuayPermanent):
    """Quay answered something the contract does not describe."""

    reason = "QuayUnexpectedResponse"


class Restart(Exception):
    """The object changed under a pass (or went away): start again from a fresh read."""
