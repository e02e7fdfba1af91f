"""The creation protocol: one Quay token per DockerToken, whatever runs at the same time.

Creating a token (POST) is the one call that is not idempotent. ``apply.py`` hands an
``Acquire`` step to :meth:`Creator.acquire`, which guarantees, for any number of concurrent
deliveries in any number of processes:

1. **Credentials first.** The token list is read before anything is written, so a refused
   connection costs no write. It is read afresh when a token may exist that a cached list has
   not seen (``claims.fresh_list_needed``: the old operator's, a dead holder's, a failed
   attempt's whose answer was lost).
2. **One creator per object.** A lease (``status.creation``) is written with a resourceVersion
   precondition (compare-and-swap): one delivery wins, the others get 409 and restart. A fresh
   lease held by another delivery is waited on (it is freed: restart; it is not within
   LEASE_WAIT_SECONDS: 503); one older than ``claims.LEASE_TTL`` is taken over.
3. **One creator per title.** Objects sharing a title on one Quay take their lease before they
   look at each other, so at least one sees the other: the younger (since, uid) yields (503),
   the older waits until the younger is done, then sees its token as claimed.
4. **Adopt before create.** An unexpired token with the title that no DockerToken claims (an
   orphan of a creator that died) is adopted rather than another created.
5. **A lost POST is found.** A POST that failed may have created the token anyway: after a
   grace the list is read afresh and such a token adopted; nobody else may take it meanwhile.
6. **Record before anything else.** The token is written to status in the write that frees
   the lease, before the Secret or anything else. If the object is gone by then, the token is
   revoked; if it is being deleted, the pass restarts and the deletion revokes it.
7. **No lease left behind.** A refusal or Quay being unavailable is recorded by the caller's
   failure write, which frees the lease (``stored`` reports it held); any other failure frees
   it here, best effort. A lease nobody frees goes stale.

``tests/test_creation.py`` runs these rules against in-memory fakes in milliseconds;
``tests/test_concurrency.py`` and ``tests/test_faults.py`` against real processes.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from function import claims, conditions, records, result, steps
from function.claims import Lease
from function.connection import Connection
from function.errors import (
    PermanentError,
    QuayError,
    QuayNotFound,
    QuayPermanent,
    QuayTransient,
    Restart,
    TemporaryError,
)
from function.model import DockerToken, Status, Token

logger = logging.getLogger(__name__)

# How long a delivery waits for a concurrent one to finish creating the token before answering 503.
LEASE_WAIT_SECONDS = 8.0
LEASE_POLL_SECONDS = 0.2
# After a failed POST, how long to wait (at most; the Quay timeout if shorter) before looking for
# the token it may have created anyway: Quay finishing a request its client gave up on.
LOST_POST_GRACE_SECONDS = 2.0


class Api(Protocol):
    """What the protocol asks of the API server (``kube.Kube``)."""

    def get_dockertoken(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def patch_status(self, namespace: str, name: str, status: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]: ...
    def iter_dockertokens(self, namespace: str | None = None, page_size: int = ..., *,
                          label_selector: str | None = None) -> Iterator[dict[str, Any]]: ...


class Tokens(Protocol):
    """What the protocol asks of Quay (``quay.QuayClient``)."""

    def list_tokens(self) -> list[Token]: ...
    def get_token(self, uuid: str) -> Token: ...
    def create_token(self, title: str) -> Token: ...


class TokenCache(Protocol):
    """The per-process token lists (``cache.TokenListCache``)."""

    def get(self, key: str, fetch: Callable[[], list[Token]], *, wave: str = "",
            fresh: bool = False) -> Mapping[str, Token]: ...
    def add(self, key: str, token: Token) -> None: ...
    def discard(self, key: str, uuid: str) -> None: ...
    def invalidate(self, key: str) -> None: ...


@dataclass(frozen=True)
class Created:
    token: Token
    adopted: bool
    status: Status  # as recorded on the server


class Creator:
    """One pass's side of the protocol. ``quay`` gives the pass's Quay client (opened on first
    use), ``act`` logs actions, ``stored`` hears every status this protocol writes (and whether
    the lease is then held), ``revoke`` revokes tokens."""

    def __init__(self, api: Api, quay: Callable[[], Tokens], cache: TokenCache, conn: Connection | None, *,
                 act: Callable[[str], None], stored: Callable[[Status, bool], None],
                 revoke: Callable[[Iterable[str], str], None],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self.api, self.quay, self.cache, self.conn = api, quay, cache, conn
        self._act, self._stored, self._revoke = act, stored, revoke
        self._clock, self._sleep, self._new_id = clock, sleep, new_id
        self.claims_read = 0  # DockerTokens read to learn which tokens others claim

    # -- what Quay and the cluster hold ----------------------------------------------------------
    def tokens(self, *, wave: str = "", fresh: bool = False) -> Mapping[str, Token]:
        """The connection's token list, shared by the passes of this process (see cache.py)."""
        def fetch() -> list[Token]:
            self._act("list-tokens")
            return self.quay().list_tokens()

        return self.cache.get(self._key, fetch, wave=wave, fresh=fresh)

    def forget(self, uid: str) -> None:
        """``uid`` is gone from Quay (revoked, or Quay said so)."""
        if self.conn is not None:
            self.cache.discard(self.conn.fingerprint, uid)

    def same_title(self, dt: DockerToken) -> Iterator[dict[str, Any]]:
        """The DockerTokens that may claim tokens with ``dt``'s title on this Quay: one labelled
        list, whatever the size of the cluster (each object gets the label before its lease)."""
        assert self.conn is not None
        self.claims_read = 0
        label = claims.claim_label(self.conn.registry, dt.title)
        for obj in self.api.iter_dockertokens(label_selector=label):
            self.claims_read += 1
            yield obj

    def wait_for_creator(self, dt: DockerToken) -> NoReturn:
        """Another delivery holds the lease: wait for it to record its UUID, then start over."""
        deadline = self._clock() + LEASE_WAIT_SECONDS
        while self._clock() < deadline:
            self._sleep(LEASE_POLL_SECONDS)
            obj = self.api.get_dockertoken(dt.namespace, dt.name)
            if obj is None or not (obj.get("status") or {}).get("creation"):
                raise Restart
        raise TemporaryError("another delivery is creating the token; retrying").with_reason(
            conditions.CREATION_IN_PROGRESS)

    # -- the protocol --------------------------------------------------------------------------------
    def acquire(self, dt: DockerToken, step: steps.Acquire, now: datetime.datetime) -> Created:
        """Adopt an unclaimed token titled ``step.title``, else create one; record it at once."""
        known = self.tokens(fresh=claims.fresh_list_needed(dt.status, now))
        dt = self._take_lease(dt, now)
        try:
            others = self._others_once_rivals_settled(dt, now)
            # ours too: the token we hold, and those we are about to revoke
            claimed = (claims.claimed_uuids(others, except_uid=dt.uid)
                       | {dt.status.uuid, *dt.status.pending_revocation})
            token = self._adopt(claims.pick_adoptable(known.values(), title=step.title,
                                                      claimed=claimed, now=now), "adopt-token")
            adopted = token is not None
            if token is None:
                token, adopted = self._create(step.title, claimed, now)
            self.cache.add(self._key, token)
        except BaseException as exc:
            # anything the caller does not record (a restart, a rival, the API server): free the
            # lease here, the next delivery goes on
            if not isinstance(exc, Exception) or result.failure_of(exc) is None:
                self._free(dt)
            raise
        status = records.recorded(dt.status, dt, token, revoke_old=step.revoke_old,
                                 grace_until=step.grace_until)
        # record at once, before anything else can fail: this is what makes the token ours
        written = self.api.patch_status(dt.namespace, dt.name, status.merge_patch(dt.status))
        if not written:
            # the object went away (its finalizer removed by hand): nobody else will revoke it
            self._revoke([token.uuid], "revoke-unrecorded-token")
            raise Restart
        recorded = Status.from_object(written.get("status"))
        self._stored(recorded, False)
        if (written.get("metadata") or {}).get("deletionTimestamp"):
            raise Restart  # deleted meanwhile: the next pass finalizes, revoking this token
        return Created(token, adopted, recorded)

    @property
    def _key(self) -> str:
        assert self.conn is not None
        return self.conn.fingerprint

    def _take_lease(self, dt: DockerToken, now: datetime.datetime) -> DockerToken:
        state = claims.lease_state(dt.status.creation, now)
        if state is Lease.FRESH:
            self.wait_for_creator(dt)
        assert self.conn is not None
        lease = records.lease(dt, id_=self._new_id(), now=now, account=self.conn.account)
        patch = dt.status.with_(creation=lease).merge_patch(dt.status)
        obj = self.api.patch_status(dt.namespace, dt.name, patch, dt.resource_version)
        if not obj:
            raise Restart
        self._act("take-lease" if state is Lease.NONE else "take-over-stale-lease")
        dt = DockerToken.from_object(obj)
        self._stored(dt.status, True)
        return dt

    def _others_once_rivals_settled(self, dt: DockerToken, now: datetime.datetime) -> list[dict[str, Any]]:
        """The same-title DockerTokens, read once no other one holds a fresh lease on our title.

        The side holding the younger lease steps back (503; the lease is freed). The older side
        waits until the younger one is done: that one may not have seen us and be POSTing now,
        and its token must be claimed before we look for one to adopt.
        """
        ours = dt.status.creation
        assert ours is not None
        deadline = self._clock() + LEASE_WAIT_SECONDS
        while True:
            others = [claims.claim_view(o) for o in self.same_title(dt)]
            rival = claims.yields_to(others, dt, ours, now)
            if not rival:
                rival = claims.waits_for(others, dt, ours, now)
                if not rival:
                    return others
                if self._clock() <= deadline:
                    self._sleep(LEASE_POLL_SECONDS)
                    continue
            raise TemporaryError(
                f"DockerToken {rival} is creating a token titled {dt.title!r}; retrying after it"
            ).with_reason(conditions.CREATION_IN_PROGRESS)

    def _adopt(self, pick: Token | None, action: str) -> Token | None:
        if pick is None:
            return None
        try:
            token = with_code(self.quay().get_token(pick.uuid))
        # gone between list and get: create instead
        except QuayNotFound:
            self.forget(pick.uuid)
            return None
        self._act(action)
        return token

    def _create(self, title: str, claimed: set[str], now: datetime.datetime) -> tuple[Token, bool]:
        """POST, under the lease; (token, whether it was adopted after a lost POST). Nobody else
        adopts or creates this title meanwhile, so what appears is ours."""
        assert self.conn is not None
        try:
            token = with_code(self.quay().create_token(title))
        except QuayTransient:
            self.cache.invalidate(self._key)  # Quay may have made it all the same
            self._sleep(min(self.conn.timeout, LOST_POST_GRACE_SECONDS))
            try:
                lost = self._adopt(claims.pick_adoptable(self.quay().list_tokens(), title=title,
                                                         claimed=claimed, now=now), "adopt-lost-token")
            # Quay still failing: the next delivery adopts the token if there is one
            except QuayError:
                lost = None
            if lost is None:
                raise
            return lost, True
        self._act("create-token")
        return token, False

    def _free(self, dt: DockerToken) -> None:
        """Free the lease we hold; best effort: it goes stale on its own."""
        try:
            obj = self.api.patch_status(dt.namespace, dt.name, {"creation": None})
        # the lease expires after LEASE_TTL anyway
        except (TemporaryError, PermanentError):
            logger.warning("%s/%s: could not free the creation lease", dt.namespace, dt.name)
            return
        if obj:
            self._stored(Status.from_object(obj.get("status")), False)


def with_code(token: Token) -> Token:
    """A GET or POST answer must carry the code (the pull Secret is made of it)."""
    if not token.code:
        raise QuayPermanent(f"Quay returned token {token.uuid} without its code")
    return token
