"""One reconcile of one DockerToken: read everything, decide (``decide.py``), act, write status once.

Called by ``main.py`` for every event. Level-based: the event only names the object. Each pass
re-reads the object; a write conflict restarts the pass from a fresh read (a few times, then 503).

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

import datetime
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from function import conditions, decide
from function import secret as secrets
from function.cache import Listed, TokenListCache
from function.connection import Connection, parse_connection
from function.errors import (
    ConfigError,
    PermanentError,
    QuayError,
    QuayNotFound,
    QuayPermanent,
    QuayTransient,
    TemporaryError,
)
from function.kube import Conflict, Kube
from function.model import FINALIZER, Creation, DockerToken, Ref, Status

if TYPE_CHECKING:  # function.quay imports httpx (~50 ms): loaded on the first Quay call instead
    from function.quay import AppToken, QuayClient

logger = logging.getLogger(__name__)

# Conflicting writes restart the pass; past this many the event is answered 503 and redelivered.
MAX_PASSES = 5
# How long a delivery waits for a concurrent one to finish creating the token before answering 503.
LEASE_WAIT_SECONDS = 8.0
LEASE_POLL_SECONDS = 0.2
# After a failed POST, how long to wait (at most; the Quay timeout if shorter) before looking for
# the token it may have created anyway: Quay finishing a request its client gave up on.
LOST_POST_GRACE_SECONDS = 2.0

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


class _Restart(Exception):
    """The object changed under us: start the pass again from a fresh read."""


@dataclass
class Outcome:
    """What one reconcile did; ``main.py`` logs it and answers 2xx."""

    result: str  # ready | failed | blocked | finalized | gone | ignored
    actions: list[str] = field(default_factory=list)
    reason: str = ""
    message: str = ""
    quay_calls: int = 0
    writes: int = 0


class Reconciler:
    """Holds what outlives one event: the API client, the Quay client factory, the list cache."""

    def __init__(self, kube: Kube, *, quay_factory: QuayFactory = quay_client,
                 cache: TokenListCache | None = None, clock: Clock = utcnow) -> None:
        self.kube = kube
        self.quay_factory = quay_factory
        self.cache = cache or TokenListCache()
        self.clock = clock

    def reconcile(self, namespace: str, name: str, *, verify_quay: bool = False) -> Outcome:
        """Bring one object in line. Raises TemporaryError (503) when a retry is needed."""
        for _ in range(MAX_PASSES):
            p = _Pass(self, namespace, name, verify_quay=verify_quay)
            try:
                return p.run()
            # someone wrote the object meanwhile: decide again on its new state
            except (Conflict, _Restart):
                continue
            finally:
                p.close()
        raise TemporaryError(f"{namespace}/{name}: still changing after {MAX_PASSES} attempts")


class _Pass:
    """The state of one pass: observed objects, the lazily opened Quay client, the status to write."""

    def __init__(self, owner: Reconciler, namespace: str, name: str, *, verify_quay: bool) -> None:
        self.r = owner
        self.kube = owner.kube
        self.namespace, self.name = namespace, name
        self.verify_quay = verify_quay
        self.now = owner.clock()
        self.outcome = Outcome("ready")
        self.writes_before = owner.kube.writes
        self._quay: QuayClient | None = None
        self.conn: Connection | None = None
        self.raw_status: dict[str, Any] = {}
        self.status: dict[str, Any] = {}

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
            self._quay = self.r.quay_factory(self.conn).__enter__()
        return self._quay

    def act(self, action: str) -> None:
        self.outcome.actions.append(action)

    # -- the pass ------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        obj = self.kube.get_dockertoken(self.namespace, self.name)
        if obj is None:
            self.outcome.result = "gone"
            return self.outcome
        self.dt = DockerToken.from_object(obj)
        self.raw_status = dict(obj.get("status") or {})
        self.status = dict(self.raw_status)
        if self.dt.deleting:
            return self._finalize()
        if not self.dt.has_finalizer:
            self._add_finalizer()
        try:
            self._ensure()
        except PermanentError as exc:
            self._fail(exc.reason, str(exc))
            self.outcome.result = "failed"
        except TemporaryError as exc:
            if isinstance(exc, Conflict):
                raise
            self._fail(exc.reason, str(exc), best_effort=True)
            raise
        return self.outcome

    def _add_finalizer(self) -> None:
        obj = self.kube.set_finalizers(self.namespace, self.name, [*self.dt.finalizers, FINALIZER],
                                       self.dt.resource_version)
        if not obj:
            raise _Restart
        self.act("add-finalizer")
        self.dt = DockerToken.from_object(obj)

    def _ensure(self) -> None:
        dt = self.dt
        dt.validate()
        self.conn = self._connection()
        current = self.kube.get_secret(dt.ret_secret.namespace, dt.ret_secret.name) if dt.ret_secret else None
        if current is not None and not secrets.is_ours(current, dt):
            raise PermanentError(
                f"retSecretRef: Secret {dt.ret_secret} exists and belongs to something else "
                "(no quay-dockertoken owner mark); choose another name or delete that Secret"
            ).with_reason(conditions.SECRET_CONFLICT)
        held = secrets.token_from(current) if current is not None else None
        if held is not None and held.uuid != dt.status.uuid:
            held = None
        token, replaced = self._token(held)
        if token is not None:
            self.status["expiration"] = token.expiration or None
            if dt.ret_secret is not None:
                self._write_secret(dt.ret_secret, current, token)
        self._drop_old_secret()
        self._revoke_pending()
        self._succeed(replaced)

    # -- inputs -------------------------------------------------------------------------------------
    def _connection(self) -> Connection:
        ref = self.dt.conn_secret
        found = self.kube.get_secret(ref.namespace, ref.name)
        if found is None:
            # the original operator's wording, which users may already match on
            raise PermanentError(f"connSecretRef: {ref.name}: secret not found").with_reason(
                conditions.SECRET_NOT_FOUND)
        return parse_connection(secrets.decoded(found), secret_name=ref.name)

    # -- the token -----------------------------------------------------------------------------------
    def _token(self, held: secrets.TokenData | None) -> tuple[secrets.TokenData | None, str]:
        """The token the Secret must hold, and a message when it had to be replaced."""
        plan, why = decide.plan_token(self.dt, held, verify=self.verify_quay, now=self.now)
        uid = self.dt.status.uuid
        if plan is decide.TokenPlan.KEEP:
            return held, ""
        if plan is decide.TokenPlan.VERIFY:
            listed = self._listed().get(uid)
            if listed is not None and not decide.is_expired(listed.expiration, self.now):
                if held is None:
                    return None, ""
                return secrets.TokenData(uid, held.title, held.token_code, listed.created,
                                         listed.expiration, listed.last_accessed), ""
        if plan in (decide.TokenPlan.VERIFY, decide.TokenPlan.FETCH):
            try:
                self.act("fetch-token")
                return _token_data(self.quay.get_token(uid)), ""
            # revoked or expired in Quay: replace it (below)
            except QuayNotFound:
                why = f"token {uid} no longer exists in Quay (revoked or expired); created a replacement"
                return self._acquire(why, revoke_old=False), why
        return self._acquire(why, revoke_old=True), why

    def _listed(self) -> dict[str, Listed]:
        assert self.conn is not None

        def fetch() -> list[Listed]:
            self.act("list-tokens")
            return [_listed(t) for t in self.quay.list_tokens()]

        return self.r.cache.get(self.conn.fingerprint, fetch)

    def _acquire(self, why: str, *, revoke_old: bool) -> secrets.TokenData:
        """Adopt an unclaimed token with our title, else create one, under the status lease."""
        assert self.conn is not None
        dt = self._take_lease()
        try:
            others = self._others_once_rivals_settled(dt)
            claimed = decide.claimed_uuids(others, except_uid=dt.uid) | {dt.status.uuid}
            pick = decide.pick_adoptable([_listed(t) for t in self.quay.list_tokens()],
                                         title=dt.title, claimed=claimed, now=self.now)
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
            self.r.cache.invalidate(self.conn.fingerprint)
        # whatever failed, free the lease so the next delivery can go ahead (it adopts any orphan)
        except BaseException:
            self._write_status({"creation": None}, best_effort=True)
            raise
        data = _token_data(token)
        old = dt.status.uuid
        pending = [u for u in self._pending() if u not in (data.uuid, old)]
        if revoke_old and old and old != data.uuid:
            pending.append(old)  # revoked once the Secret holds the new one
        recorded = {"uuid": data.uuid, "tokenName": dt.title, "expiration": data.expiration or None,
                    "existInQuay": True, "creation": None, "pendingRevocation": pending or None}
        # record at once, before anything else can fail: this is what makes the token ours
        written = self._write_status(recorded)
        if written == {}:
            # the object went away (its finalizer removed by hand): nobody else will revoke it
            self._revoke_unrecorded(data.uuid)
            raise _Restart
        if (written or {}).get("metadata", {}).get("deletionTimestamp"):
            raise _Restart  # deleted meanwhile: the next pass finalizes, revoking this token
        return data

    def _revoke_unrecorded(self, uid: str) -> None:
        try:
            self.quay.revoke_token(uid)
            self.act("revoke-unrecorded-token")
        # already gone: nothing leaked
        except QuayNotFound:
            pass

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
                pick = decide.pick_adoptable([_listed(t) for t in self.quay.list_tokens()],
                                             title=title, claimed=claimed, now=self.now)
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

    def _others_once_rivals_settled(self, dt: DockerToken) -> list[dict[str, Any]]:
        """Every DockerToken, read once no other one holds a fresh lease on our title.

        Both sides take their lease before looking, so at least one sees the other. The side
        holding the younger lease steps back (503; our caller frees the lease). The older side
        waits until the younger one is done: that one may not have seen us and be POSTing now,
        and its token must be claimed before we look for one to adopt.
        """
        ours = dt.status.creation
        assert ours is not None
        deadline = time.monotonic() + LEASE_WAIT_SECONDS
        while True:
            others = list(self.kube.iter_dockertokens())
            blocker = decide.yields_to(others, dt, ours, self.now)
            if blocker:
                raise TemporaryError(
                    f"DockerToken {blocker} is creating a token titled {dt.title!r}; retrying after it"
                ).with_reason(conditions.CREATION_IN_PROGRESS)
            rival = decide.waits_for(others, dt, ours, self.now)
            if not rival:
                return others
            if time.monotonic() > deadline:
                raise TemporaryError(
                    f"DockerToken {rival} is creating a token titled {dt.title!r}; retrying after it"
                ).with_reason(conditions.CREATION_IN_PROGRESS)
            time.sleep(LEASE_POLL_SECONDS)

    def _take_lease(self) -> DockerToken:
        dt = self.dt
        lease = decide.lease_state(dt.status.creation, self.now)
        if lease is decide.Lease.FRESH:
            self._wait_for_other_creator()
        creation = Creation(id=uuid.uuid4().hex, title=dt.title, since=rfc3339(self.now))
        body = {"creation": {"id": creation.id, "title": creation.title, "since": creation.since}}
        obj = self.kube.patch_status(self.namespace, self.name, body, dt.resource_version)
        if not obj:
            raise _Restart
        self.act("take-lease" if lease is decide.Lease.NONE else "take-over-stale-lease")
        self.dt = DockerToken.from_object(obj)
        self.raw_status = dict(obj.get("status") or {})
        self.status.update(self.raw_status)
        return self.dt

    def _wait_for_other_creator(self) -> None:
        """Another delivery holds the lease: wait for it to record its UUID, then start over."""
        deadline = time.monotonic() + LEASE_WAIT_SECONDS
        while time.monotonic() < deadline:
            time.sleep(LEASE_POLL_SECONDS)
            obj = self.kube.get_dockertoken(self.namespace, self.name)
            if obj is None or not (obj.get("status") or {}).get("creation"):
                raise _Restart
        raise TemporaryError("another delivery is creating the token; retrying").with_reason(
            conditions.CREATION_IN_PROGRESS)

    def _pending(self) -> list[str]:
        return list(self.status.get("pendingRevocation") or ())

    def _revoke_pending(self) -> None:
        pending = self._pending()
        if not pending:
            return
        assert self.conn is not None
        for uid in list(pending):
            try:
                self.quay.revoke_token(uid)
                self.act("revoke-old-token")
            # already gone: nothing left to revoke
            except QuayNotFound:
                pass
            pending.remove(uid)
            self.status["pendingRevocation"] = pending or None
        self.r.cache.invalidate(self.conn.fingerprint)

    # -- the return Secret -------------------------------------------------------------------------------
    def _write_secret(self, where: Ref, current: Mapping[str, Any] | None,
                      token: secrets.TokenData) -> None:
        assert self.conn is not None
        desired = secrets.build(self.dt, where, token, self.conn.registry)
        if current is None:
            self._create_secret(where, desired)
            self.act("create-secret")
        elif not secrets.is_intact(current, desired):
            meta = current["metadata"]
            if current.get("type") != desired["type"]:  # type is immutable: recreate
                self.kube.delete_secret(where.namespace, where.name, uid=meta.get("uid"))
                self._create_secret(where, desired)
            else:
                body = dict(desired)
                body["metadata"] = {
                    **desired["metadata"],
                    "resourceVersion": meta.get("resourceVersion"),
                    "labels": {**(meta.get("labels") or {}), **desired["metadata"]["labels"]},
                    "annotations": {**(meta.get("annotations") or {}),
                                    **desired["metadata"]["annotations"]},
                }
                self.kube.replace_secret(body)
            self.act("update-secret")
        self.status["retSecret"] = {"namespace": where.namespace, "name": where.name}

    def _create_secret(self, where: Ref, desired: dict[str, Any]) -> None:
        if not self.kube.create_secret(desired):
            # the token is already recorded in status: the resync writes the Secret once it can
            raise ConfigError(
                f"retSecretRef.namespace: namespace {where.namespace!r} does not exist; create it "
                "(the next resync then writes the Secret) or name an existing namespace")

    def _drop_old_secret(self) -> None:
        """retSecretRef moved or went away: delete the Secret we wrote before, if still ours."""
        old = self.dt.status.ret_secret
        if old is not None and old != self.dt.ret_secret:
            self._delete_secret(old)
            if self.dt.ret_secret is None:
                self.status["retSecret"] = None

    def _delete_secret(self, where: Ref) -> None:
        found = self.kube.get_secret(where.namespace, where.name)
        if found is not None and secrets.is_ours(found, self.dt):
            self.kube.delete_secret(where.namespace, where.name, uid=found["metadata"].get("uid"))
            self.act("delete-secret")

    # -- deletion --------------------------------------------------------------------------------------
    def _finalize(self) -> Outcome:
        dt = self.dt
        if not dt.has_finalizer:
            self.outcome.result = "gone"
            return self.outcome
        if decide.lease_state(dt.status.creation, self.now) is decide.Lease.FRESH:
            # a delivery is POSTing this object's token: let it record the UUID, then revoke that
            self._wait_for_other_creator()
        if not dt.preserve_in_quay:
            try:
                self._cleanup_quay()
            except (PermanentError, TemporaryError) as exc:
                if isinstance(exc, Conflict):
                    raise
                self._fail(
                    conditions.CLEANUP_BLOCKED,
                    f"cannot revoke the token in Quay: {exc}. Fix it, or set "
                    "spec.preserveInQuayOnDeletion: true (the token then stays in Quay) or remove "
                    f"the finalizer {FINALIZER}, and delete the token in Quay yourself",
                    best_effort=True,
                )
                self.outcome.result = "blocked"
                if isinstance(exc, TemporaryError):
                    raise
                return self.outcome
        for where in {w for w in (dt.status.ret_secret, dt.ret_secret) if w is not None}:
            self._delete_secret(where)
        remaining = [f for f in dt.finalizers if f != FINALIZER]
        self.kube.set_finalizers(self.namespace, self.name, remaining, dt.resource_version)
        self.act("remove-finalizer")
        self.outcome.result = "finalized"
        return self.outcome

    def _cleanup_quay(self) -> None:
        dt = self.dt
        if not dt.conn_secret.name:
            raise PermanentError("spec.connSecretRef.name is empty")
        self.conn = self._connection()
        doomed = [u for u in (dt.status.uuid, *dt.status.pending_revocation) if u]
        if not dt.status.uuid and (dt.status.exist_in_quay or dt.status.creation) and dt.title:
            # adopted from the old operator, or a creation was cut short: revoke by title
            claimed = decide.claimed_uuids(self.kube.iter_dockertokens(), except_uid=dt.uid)
            doomed += decide.revocable([_listed(t) for t in self.quay.list_tokens()],
                                       title=dt.title, claimed=claimed)
        for uid in doomed:
            try:
                self.quay.revoke_token(uid)
                self.act("revoke-token")
            # already gone (revoked by hand, or expired and purged): nothing to do
            except QuayNotFound:
                pass
        if doomed:
            self.r.cache.invalidate(self.conn.fingerprint)

    # -- status --------------------------------------------------------------------------------------
    def _succeed(self, replaced: str) -> None:
        st = self.status
        if st.get("uuid"):
            st["existInQuay"] = True
        st["message"] = ""
        st["observedGeneration"] = self.dt.generation
        # a lease is freed by its holder, which may be POSTing right now; drop only an abandoned one
        if decide.lease_state(Status.from_object(st).creation, self.now) is decide.Lease.STALE:
            st["creation"] = None
        old = self.dt.status.condition(conditions.READY)
        if replaced:
            reason, message = conditions.TOKEN_REPLACED, replaced
        elif old is not None and old.get("status") == "True":
            reason, message = str(old.get("reason", "")), str(old.get("message", ""))
        else:
            reason, message = conditions.TOKEN_READY, ""
        st["conditions"] = conditions.set_ready(
            st.get("conditions") or [], ready=True, reason=reason, message=message,
            generation=self.dt.generation, now=rfc3339(self.now))
        self.outcome.reason, self.outcome.message = reason, message
        self._write_status(st, full=True)

    def _fail(self, reason: str, message: str, *, best_effort: bool = False) -> None:
        st = self.status
        st["message"] = message
        st["observedGeneration"] = self.dt.generation
        st["conditions"] = conditions.set_ready(
            st.get("conditions") or [], ready=False, reason=reason, message=message,
            generation=self.dt.generation, now=rfc3339(self.now))
        self.outcome.reason, self.outcome.message = reason, message
        self._write_status(st, full=True, best_effort=best_effort)

    def _write_status(self, changes: Mapping[str, Any], *, full: bool = False,
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


def _listed(token: AppToken) -> Listed:
    return Listed(token.uuid, token.title, token.created or "", token.expiration or "",
                  token.last_accessed or "")


def _token_data(token: AppToken) -> secrets.TokenData:
    if not token.token_code:
        raise QuayPermanent(f"Quay returned token {token.uuid} without its code")
    return secrets.TokenData(token.uuid, token.title, token.token_code, token.created or "",
                             token.expiration or "", token.last_accessed or "")
