"""Getting a token when the object has none usable: adopt an unclaimed one with the title, else
create one, always under the creation lease. ``reconcile.py`` calls ``acquire``.

Token creation is the one non-idempotent call, so it runs under a lease recorded in status
with a resourceVersion precondition: of any number of concurrent deliveries (in any number of
processes) exactly one wins the compare-and-swap and calls POST; the others wait for it to
record the UUID, then find everything in place. A holder that dies leaves a token with the
right title that no DockerToken claims; the next holder adopts it instead of creating another.
A POST that fails may have created the token anyway: the holder looks once more before it
lets go. Only the holder frees a lease (or anyone, once stale), and deletion waits for it.
Objects sharing a title take turns: seeing another's lease, the younger yields, the older waits.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from function import conditions, decide
from function import secret as secrets
from function.errors import QuayError, QuayNotFound, QuayTransient, TemporaryError
from function.model import Creation, DockerToken
from function.steps import PassBase, Restart, rfc3339, token_data

if TYPE_CHECKING:
    from function.quay import AppToken

# How long a delivery waits for a concurrent one to finish creating the token before answering 503.
LEASE_WAIT_SECONDS = 8.0
LEASE_POLL_SECONDS = 0.2
# After a failed POST, how long to wait (at most; the Quay timeout if shorter) before looking for
# the token it may have created anyway: Quay finishing a request its client gave up on.
LOST_POST_GRACE_SECONDS = 2.0


class CreationSteps(PassBase):
    """The lease and what runs under it."""

    def acquire(self, *, revoke_old: bool) -> secrets.TokenData:
        """Adopt an unclaimed token with our title, else create one; record it at once."""
        assert self.conn is not None
        dt = self._take_lease()
        try:
            others = self._others_once_rivals_settled(dt)
            claimed = decide.claimed_uuids(others, except_uid=dt.uid) | {dt.status.uuid}
            pick = decide.pick_adoptable(self.list_tokens(), title=dt.title, claimed=claimed,
                                         now=self.now)
            token = None
            if pick is not None:
                try:
                    token = self.quay.get_token(pick.uuid)
                    self.act("adopt-token")
                # gone between list and get: create instead
                except QuayNotFound:
                    token = None
            if token is None:
                token = self._create(dt.title, claimed)
            self.forget_tokens()
        # whatever failed, free the lease so the next delivery can go ahead (it adopts any orphan)
        except BaseException:
            self.write_status({"creation": None}, best_effort=True)
            raise
        data = token_data(token)
        old = dt.status.uuid
        pending = [u for u in self.pending() if u not in (data.uuid, old)]
        if revoke_old and old and old != data.uuid:
            pending.append(old)  # revoked once the Secret holds the new one
        recorded = {"uuid": data.uuid, "tokenName": dt.title, "expiration": data.expiration or None,
                    "existInQuay": True, "creation": None, "pendingRevocation": pending or None}
        # record at once, before anything else can fail: this is what makes the token ours
        written = self.write_status(recorded)
        if written == {}:
            # the object went away (its finalizer removed by hand): nobody else will revoke it
            self._revoke_unrecorded(data.uuid)
            raise Restart
        if (written or {}).get("metadata", {}).get("deletionTimestamp"):
            raise Restart  # deleted meanwhile: the next pass finalizes, revoking this token
        return data

    def wait_for_other_creator(self) -> None:
        """Another delivery holds the lease: wait for it to record its UUID, then start over."""
        deadline = time.monotonic() + LEASE_WAIT_SECONDS
        while time.monotonic() < deadline:
            time.sleep(LEASE_POLL_SECONDS)
            obj = self.kube.get_dockertoken(self.namespace, self.name)
            if obj is None or not (obj.get("status") or {}).get("creation"):
                raise Restart
        raise TemporaryError("another delivery is creating the token; retrying").with_reason(
            conditions.CREATION_IN_PROGRESS)

    def _take_lease(self) -> DockerToken:
        dt = self.dt
        lease = decide.lease_state(dt.status.creation, self.now)
        if lease is decide.Lease.FRESH:
            self.wait_for_other_creator()
        creation = Creation(id=uuid.uuid4().hex, title=dt.title, since=rfc3339(self.now))
        body = {"creation": {"id": creation.id, "title": creation.title, "since": creation.since}}
        obj = self.kube.patch_status(self.namespace, self.name, body, dt.resource_version)
        if not obj:
            raise Restart
        self.act("take-lease" if lease is decide.Lease.NONE else "take-over-stale-lease")
        self.dt = DockerToken.from_object(obj)
        self.raw_status = dict(obj.get("status") or {})
        self.status.update(self.raw_status)
        return self.dt

    def _others_once_rivals_settled(self, dt: DockerToken) -> list[dict[str, Any]]:
        """Every DockerToken, read once no other one holds a fresh lease on our title.

        Both sides take their lease before looking, so at least one sees the other. The side
        holding the younger lease steps back (503; ``acquire`` frees the lease). The older side
        waits until the younger one is done: that one may not have seen us and be POSTing now,
        and its token must be claimed before we look for one to adopt.
        """
        ours = dt.status.creation
        assert ours is not None
        deadline = time.monotonic() + LEASE_WAIT_SECONDS
        while True:
            others = [decide.claim_view(o) for o in self.kube.iter_dockertokens()]
            rival = decide.yields_to(others, dt, ours, self.now)
            if not rival:
                rival = decide.waits_for(others, dt, ours, self.now)
                if not rival:
                    return others
                if time.monotonic() <= deadline:
                    time.sleep(LEASE_POLL_SECONDS)
                    continue
            raise TemporaryError(
                f"DockerToken {rival} is creating a token titled {dt.title!r}; retrying after it"
            ).with_reason(conditions.CREATION_IN_PROGRESS)

    def _create(self, title: str, claimed: set[str]) -> AppToken:
        """POST, under the lease. A POST that failed may still have created the token (the answer
        was lost, or Quay finished after our timeout): look once more, a moment later, and adopt
        what appeared. Nobody else adopts or creates this title meanwhile, so it is ours."""
        assert self.conn is not None
        try:
            token = self.quay.create_token(title)
        except QuayTransient:
            time.sleep(min(self.conn.timeout, LOST_POST_GRACE_SECONDS))
            try:
                pick = decide.pick_adoptable(self.list_tokens(), title=title, claimed=claimed,
                                             now=self.now)
                lost = self.quay.get_token(pick.uuid) if pick is not None else None
            # Quay still failing: the next delivery adopts the token if there is one
            except QuayError:
                lost = None
            if lost is None:
                raise
            self.act("adopt-lost-token")
            return lost
        self.act("create-token")
        return token

    def _revoke_unrecorded(self, uid: str) -> None:
        try:
            self.quay.revoke_token(uid)
            self.act("revoke-unrecorded-token")
        # already gone: nothing leaked
        except QuayNotFound:
            pass
