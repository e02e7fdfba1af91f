"""What every step of a reconcile pass shares: the observed state, the lazily opened Quay client,
the status being built, and the one way status is written (only what differs).

``reconcile.py`` composes the steps (``creation.py``, ``secretsync.py``) on top of this base.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from function import conditions, decide
from function import secret as secrets
from function.cache import Listed, TokenListCache
from function.connection import Connection, parse_connection
from function.errors import PermanentError, QuayPermanent, TemporaryError
from function.kube import Kube
from function.model import DockerToken

if TYPE_CHECKING:  # function.quay imports httpx (~50 ms): loaded on the first Quay call instead
    from function.quay import AppToken, QuayClient

logger = logging.getLogger("function.reconcile")

QuayFactory = Callable[[Connection], "QuayClient"]
Clock = Callable[[], datetime.datetime]


def quay_client(conn: Connection) -> QuayClient:
    """The default QuayFactory; imports the client (and httpx) only when Quay is called."""
    from function.quay import QuayClient

    return QuayClient(conn)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Restart(Exception):
    """The object changed under us: start the pass again from a fresh read."""


@dataclass
class Outcome:
    """What one reconcile did; ``main.py`` logs it and answers 2xx."""

    result: str  # ready | failed | blocked | finalized | gone
    actions: list[str] = field(default_factory=list)
    reason: str = ""
    message: str = ""
    quay_calls: int = 0
    writes: int = 0


@dataclass
class Shared:
    """What outlives one event: the API client, the Quay client factory, the list cache, the clock."""

    kube: Kube
    quay_factory: QuayFactory
    cache: TokenListCache
    clock: Clock


class PassBase:
    """The state of one pass over one object."""

    dt: DockerToken

    def __init__(self, shared: Shared, namespace: str, name: str, *, verify_quay: bool) -> None:
        self.shared = shared
        self.kube = shared.kube
        self.namespace, self.name = namespace, name
        self.verify_quay = verify_quay
        self.now = shared.clock()
        self.outcome = Outcome("ready")
        self.writes_before = shared.kube.writes
        self._quay: QuayClient | None = None
        self.conn: Connection | None = None
        self.raw_status: dict[str, Any] = {}  # as the server has it
        self.status: dict[str, Any] = {}      # as this pass wants it

    # -- plumbing ----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._quay is not None:
            self.outcome.quay_calls = self._quay.calls
            try:
                self._quay.__exit__(None, None, None)
            # signing out is a courtesy; the session expires on its own
            except Exception:
                logger.debug("quay sign-out failed", exc_info=True)
            self._quay = None
        self.outcome.writes = self.kube.writes - self.writes_before

    @property
    def quay(self) -> QuayClient:
        if self._quay is None:
            assert self.conn is not None
            self._quay = self.shared.quay_factory(self.conn).__enter__()
        return self._quay

    def act(self, action: str) -> None:
        self.outcome.actions.append(action)

    # -- inputs -------------------------------------------------------------------------------------
    def connection(self) -> Connection:
        ref = self.dt.conn_secret
        found = self.kube.get_secret(ref.namespace, ref.name)
        if found is None:
            # the original operator's wording, which users may already match on
            raise PermanentError(f"connSecretRef: {ref.name}: secret not found").with_reason(
                conditions.SECRET_NOT_FOUND)
        self.conn = parse_connection(secrets.decoded(found), secret_name=ref.name)
        return self.conn

    def list_tokens(self) -> list[Listed]:
        """A fresh list (one Quay call); for decisions that must not use the cache."""
        return [listed(t) for t in self.quay.list_tokens()]

    def cached_tokens(self) -> dict[str, Listed]:
        """The list shared by the passes of one resync wave (see cache.py)."""
        assert self.conn is not None

        def fetch() -> list[Listed]:
            self.act("list-tokens")
            return self.list_tokens()

        return self.shared.cache.get(self.conn.fingerprint, fetch)

    def forget_tokens(self) -> None:
        """This pass created or revoked a token: the cached list is out of date."""
        if self.conn is not None:
            self.shared.cache.invalidate(self.conn.fingerprint)

    def pending(self) -> list[str]:
        return list(self.status.get("pendingRevocation") or ())

    # -- status --------------------------------------------------------------------------------------
    def fail(self, reason: str, message: str, *, best_effort: bool = False) -> None:
        st = self.status
        st["message"] = message
        st["observedGeneration"] = self.dt.generation
        st["conditions"] = conditions.set_ready(
            st.get("conditions") or [], ready=False, reason=reason, message=message,
            generation=self.dt.generation, now=rfc3339(self.now))
        self.outcome.reason, self.outcome.message = reason, message
        self.write_status(st, full=True, best_effort=best_effort)

    def write_status(self, changes: Mapping[str, Any], *, full: bool = False,
                     best_effort: bool = False) -> dict[str, Any] | None:
        """Write only what differs from what the server has; nothing at all when equal.

        Returns the object as written, {} if it no longer exists, None if nothing was written.
        """
        if not full:
            self.status.update(changes)
        desired = dict(changes) if full else {**self.raw_status, **changes}
        patch = decide.status_patch(self.raw_status, desired)
        if not patch:
            return None
        try:
            obj = self.kube.patch_status(self.namespace, self.name, patch)
        # a failure report that cannot be written is still answered (503 or 2xx) by the caller
        except (TemporaryError, PermanentError):
            if not best_effort:
                raise
            logger.warning("%s/%s: could not write status", self.namespace, self.name)
            return None
        if obj:
            self.raw_status = dict(obj.get("status") or {})
        return obj


def listed(token: AppToken) -> Listed:
    return Listed(token.uuid, token.title, token.created or "", token.expiration or "",
                  token.last_accessed or "")


def token_data(token: AppToken) -> secrets.TokenData:
    if not token.token_code:
        raise QuayPermanent(f"Quay returned token {token.uuid} without its code")
    return secrets.TokenData(token.uuid, token.title, token.token_code, token.created or "",
                             token.expiration or "", token.last_accessed or "")
