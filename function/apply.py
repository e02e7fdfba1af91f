"""Carry out a plan: every Quay call and API server write of one pass, in the plan's order.

``reconcile.py`` builds one :class:`Apply` per pass. Writes are made only where the server's
copy differs from what is wanted. Whatever fails is recorded in status in one write (and a
lease we hold is freed by that same write), so the echo of a failed pass finds nothing to do.

Token creation is the one non-idempotent call, so it runs under a lease recorded in status
with a resourceVersion precondition: of any number of concurrent deliveries (in any number of
processes) exactly one wins the compare-and-swap and calls POST; the others wait for it to
record the UUID, then find everything in place. A holder that dies leaves a token with the
right title that no DockerToken claims; the next holder adopts it instead of creating another.
A POST that fails may have created the token anyway: the holder looks once more before it
lets go. Only the holder frees a lease (or anyone, once stale), and deletion waits for it.
Objects sharing a title take turns: seeing another's lease, the younger yields, the older waits.
The lease is the one write made before the Quay call it protects; the credentials are checked
(the list) before it is taken, so a refused connection costs no lease write.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from function import conditions, decide, kevents, protection, pullsecret
from function.cache import TokenListCache
from function.connection import Connection
from function.decide import Failure, Observed, Plan, TokenStep
from function.errors import (
    ConfigError,
    Conflict,
    Handling,
    PermanentError,
    QuayError,
    QuayNotFound,
    QuayPermanent,
    QuayTransient,
    ReconcileError,
    TemporaryError,
    classify,
)
from function.kube import Kube
from function.model import FINALIZER, Creation, DockerToken, Ref, Token

if TYPE_CHECKING:
    from function.quay import QuayClient

logger = logging.getLogger(__name__)

QuayFactory = Callable[[Connection], "QuayClient"]

# How long a delivery waits for a concurrent one to finish creating the token before answering 503.
LEASE_WAIT_SECONDS = 8.0
LEASE_POLL_SECONDS = 0.2
# After a failed POST, how long to wait (at most; the Quay timeout if shorter) before looking for
# the token it may have created anyway: Quay finishing a request its client gave up on.
LOST_POST_GRACE_SECONDS = 2.0
# A rotated-out token keeps working this long (image pulls in flight); revoked on a later pass.
ROTATION_GRACE = datetime.timedelta(seconds=float(os.environ.get("ROTATION_GRACE_SECONDS") or 120))
# Names this pod in the Events it records (Knative sets HOSTNAME to the pod name).
REPORTING_INSTANCE = os.environ.get("HOSTNAME") or socket.gethostname()


def quay_client(conn: Connection) -> QuayClient:
    """The default QuayFactory."""
    from function.quay import QuayClient

    return QuayClient(conn)


class Restart(Exception):
    """The object changed under us: start the pass again from a fresh read."""


@dataclass
class Outcome:
    """What one pass did; ``main.py`` logs it and picks the HTTP answer."""

    result: str  # ready | failed | retrying | backoff | blocked | finalized | gone
    actions: list[str] = field(default_factory=list)
    reason: str = ""
    message: str = ""
    quay_calls: int = 0
    writes: int = 0
    temporary: bool = False  # left failing because Quay was unavailable (a resync reports it)
    claims_read: int = 0     # DockerTokens read to learn which tokens others claim


class Apply:
    """One pass's I/O. Counts its own writes and Quay calls (the log's per-event figures)."""

    def __init__(self, kube: Kube, quay_factory: QuayFactory, cache: TokenListCache,
                 observed: Observed, plan: Plan, raw_status: Mapping[str, Any]) -> None:
        self.kube, self.cache, self.ob, self.plan = kube, cache, observed, plan
        self.dt: DockerToken = observed.dt
        self.now = observed.now
        self._factory = quay_factory
        self._quay: QuayClient | None = None
        self.raw: dict[str, Any] = dict(raw_status)     # status as the server has it
        self.status: dict[str, Any] = dict(raw_status)  # status as this pass wants it
        self.lease: Creation | None = None              # the creation lease we hold
        self.outcome = Outcome("ready")
        self.events: list[tuple[str, str, str]] = []    # (type, reason, note) of transitions

    # -- plumbing ----------------------------------------------------------------------------------
    def close(self) -> Outcome:
        if self._quay is not None:
            self.outcome.quay_calls = self._quay.calls
            try:
                self._quay.__exit__(None, None, None)
            # signing out is a courtesy; the session expires on its own
            except Exception:
                logger.debug("quay sign-out failed", exc_info=True)
            self._quay = None
        self.outcome.writes = self.kube.writes
        return self.outcome

    @property
    def quay(self) -> QuayClient:
        if self._quay is None:
            assert self.ob.conn is not None
            self._quay = self._factory(self.ob.conn).__enter__()
        return self._quay

    def act(self, action: str) -> None:
        self.outcome.actions.append(action)

    # -- the pass ----------------------------------------------------------------------------------
    def run(self) -> Outcome:
        try:
            return self._run()
        finally:
            self._record_events()

    def _run(self) -> Outcome:
        plan = self.plan
        try:
            if plan.in_use.release is not None and not plan.cleanup:
                self._release(plan.in_use.release)  # before the registration that names it goes
            if plan.add_finalizer or plan.labels or plan.in_use.labels:
                self._patch_metadata()
            if plan.skip:
                self._skipped(plan.skip)
            elif plan.failure is not None:
                self._fail(plan.failure)
            elif plan.cleanup:
                self._finalize()
            else:
                self._ensure()
        # a refusal, or Quay unavailable: recorded with its retry time; the echo does nothing
        except ReconcileError as exc:
            if classify(exc) is not Handling.RECORD or plan.failure is not None:  # could not record
                raise
            self._fail(decide.cleanup_blocked(exc) if plan.cleanup else Failure.of(exc))
        return self.outcome

    def _record_events(self) -> None:
        """Kubernetes Events for this pass's transitions (never from a pass that changed nothing).
        Best effort: an Event that cannot be recorded never fails the reconcile."""
        dt = self.dt
        for type_, reason, note in self.events:
            body = kevents.build_event(dt.namespace, dt.name, dt.uid, type_, reason, note, self.now,
                                       reporting_instance=REPORTING_INSTANCE)
            try:
                # None: not recorded, on purpose (e.g. the namespace is being deleted)
                self.kube.create_event(body)
            # the reconcile's outcome does not depend on its Events
            except (TemporaryError, PermanentError) as exc:
                logger.warning("%s/%s: could not record Event %s: %s", dt.namespace, dt.name, reason, exc)
        self.events.clear()

    def _event(self, reason: str, note: str, *, warning: bool = False) -> None:
        self.events.append((kevents.WARNING if warning else kevents.NORMAL, reason, note))

    def _skipped(self, why: str) -> None:
        out, retry = self.outcome, self.dt.status.retry
        out.result = why
        if why == "backoff" and retry is not None:
            ready = self.dt.status.condition(conditions.READY) or {}
            out.reason, out.message = str(ready.get("reason", "")), str(ready.get("message", ""))
            out.temporary = retry.temporary

    def _patch_metadata(self) -> None:
        """Our finalizer before anything is made in Quay, and the claim labels (one write)."""
        plan, dt = self.plan, self.dt
        labels = {**(plan.labels or {}), **(plan.in_use.labels or {})}
        obj = self.kube.patch_metadata(
            dt.namespace, dt.name, dt.resource_version,
            finalizers=[*dt.finalizers, FINALIZER] if plan.add_finalizer else None,
            labels=labels, annotations=plan.in_use.annotations)
        if not obj:
            raise Restart
        self.act("add-finalizer" if plan.add_finalizer else "set-labels")
        self.dt = DockerToken.from_object(obj)

    def _ensure(self) -> None:
        plan = self.plan
        if plan.in_use.protect is not None:
            self._protect(plan.in_use.protect)
        token, replaced = self._token()
        if token is not None:
            self.status["expiration"] = token.expiration or None
            if token.created:
                self.status.update(decide.renewal_fields(self.dt, token))
            if plan.write_secret is not None:
                self._write_secret(plan.write_secret, self.ob.ret_secret, token)
        for ref in plan.delete_secrets:
            self._delete_secret(ref)
        if self.dt.ret_secret is None:
            self.status["retSecret"] = None
        self._edit_service_accounts()
        if plan.attached is not None:
            self.status["serviceAccounts"] = list(plan.attached) or None
        pending = list(self.status.get("pendingRevocation") or ())
        if pending and decide.revocation_due(self.status, self.now):
            self._revoke(pending, "revoke-old-token")
            self.status["pendingRevocation"] = self.status["revokeAfter"] = None
        note = decide.renewal_note(self.dt, token, plan.resync_period)
        desired, reason, message = decide.ready_status(self.dt, self.status, replaced=replaced,
                                                       now=self.now, note=note)
        self._note_deleting_connection(desired)
        self.outcome.reason, self.outcome.message = reason, message
        self._write_status(desired)

    def _token(self) -> tuple[Token | None, str]:
        """The token the Secret must hold, and a message when it had to be replaced."""
        step, held, uid = self.plan.token, self.plan.held, self.dt.status.uuid
        if step is TokenStep.VERIFY:
            listed = self.tokens(wave=self.ob.wave).get(uid)
            step, refreshed = decide.after_verify(held, listed, self.now)
            if step is TokenStep.KEEP:
                return refreshed, ""
        if step is TokenStep.KEEP:
            return held, ""
        if step is TokenStep.FETCH:
            try:
                self.act("fetch-token")
                return _with_code(self.quay.get_token(uid)), ""
            # revoked or expired in Quay: replace it
            except QuayNotFound:
                self._forget(uid)
                why = f"token {uid} no longer exists in Quay (revoked or expired); created a replacement"
                return self._acquire(revoke_old=False), why
        if step is TokenStep.ROTATE:
            return self._acquire(revoke_old=True, rotation=True), ""
        return self._acquire(revoke_old=True), self.plan.replace_reason

    # -- Quay ----------------------------------------------------------------------------------------
    def tokens(self, *, wave: str = "", fresh: bool = False) -> Mapping[str, Token]:
        """The connection's token list, shared by the passes of this process (see cache.py)."""
        assert self.ob.conn is not None

        def fetch() -> list[Token]:
            self.act("list-tokens")
            return self.quay.list_tokens()

        return self.cache.get(self.ob.conn.fingerprint, fetch, wave=wave, fresh=fresh)

    def _forget(self, uid: str) -> None:
        if self.ob.conn is not None:
            self.cache.discard(self.ob.conn.fingerprint, uid)

    def _revoke(self, uuids: list[str], action: str) -> None:
        """Revoke each token; one already gone (revoked by hand, expired and purged) is done."""
        for uid in uuids:
            try:
                self.quay.revoke_token(uid)
                self.act(action)
                self._event("TokenRevoked", f"revoked Quay token {uid}")
            # already gone: nothing left to revoke
            except QuayNotFound:
                pass
            self._forget(uid)

    # -- the creation lease ----------------------------------------------------------------------------
    def _acquire(self, *, revoke_old: bool, rotation: bool = False) -> Token:
        """Adopt an unclaimed token with our title, else create one; record it at once.

        A rotation keeps the old token (pendingRevocation) until ROTATION_GRACE has passed.
        """
        assert self.ob.conn is not None
        # the credentials, checked before any lease is written; afresh when a token may already
        # exist that a cached list has not seen (decide.fresh_list_needed)
        known = self.tokens(fresh=decide.fresh_list_needed(self.dt.status, self.now))
        dt = self._take_lease()
        try:
            others = self._others_once_rivals_settled(dt)
            # ours too: the token we hold, and those we are about to revoke
            claimed = (decide.claimed_uuids(others, except_uid=dt.uid)
                       | {dt.status.uuid, *dt.status.pending_revocation})
            token = self._adopt(decide.pick_adoptable(known.values(), title=dt.title, claimed=claimed,
                                                      now=self.now), "adopt-token")
            if token is None:
                token = self._create(dt.title, claimed)
            self.cache.add(self.ob.conn.fingerprint, token)
        # recorded by _fail, which frees the lease in the same write
        except (PermanentError, QuayTransient):
            raise
        # anything else (a restart, a rival, the API server): free the lease, the next delivery goes on
        except BaseException:
            self._write_status({**self.status, "creation": None}, best_effort=True)
            raise
        grace = decide.rfc3339(self.now + ROTATION_GRACE) if rotation else ""
        self.status.update(decide.recorded(dt, token, self.status.get("pendingRevocation") or (),
                                           revoke_old=revoke_old, grace_until=grace))
        self.lease = None
        # record at once, before anything else can fail: this is what makes the token ours
        written = self._write_status(self.status)
        if written == {}:
            # the object went away (its finalizer removed by hand): nobody else will revoke it
            self._revoke([token.uuid], "revoke-unrecorded-token")
            raise Restart
        if (written or {}).get("metadata", {}).get("deletionTimestamp"):
            raise Restart  # deleted meanwhile: the next pass finalizes, revoking this token
        adopted = "adopt-token" in self.outcome.actions or "adopt-lost-token" in self.outcome.actions
        if rotation:
            self._event("TokenRotated", f"replaced Quay token {dt.status.uuid} before it expires "
                        f"({dt.status.expiration}) with {token.uuid}; the old one is revoked after "
                        f"{int(ROTATION_GRACE.total_seconds())} s")
        else:
            self._event("TokenAdopted" if adopted else "TokenCreated",
                        f"{'adopted' if adopted else 'created'} Quay token {token.uuid} titled {dt.title!r}")
        self._verify_at_registry(token)
        return token

    def _verify_at_registry(self, token: Token) -> None:
        """After a create or rotation only (2 requests): the registry's own host name, which the
        pull Secret must name too, and whether the registry accepts the new code."""
        assert self.ob.conn is not None
        try:
            challenge = self.quay.registry_challenge()
            if challenge is None:
                ok, reason, detail = None, "NoRegistryChallenge", (
                    "GET /v2/ announced no Bearer challenge; the code was not checked")
            else:
                service = challenge.service or ""
                self.status["registry"] = service if service and service != self.ob.conn.registry else None
                check = self.quay.check_credential(challenge.realm, challenge.service, token.code)
                ok, reason = check.ok, "RegistryAccepted" if check.ok else "RegistryRefused"
                detail = check.detail
        # the token is made and recorded: a check that cannot be made is reported, not fatal
        except QuayError as exc:
            ok, reason, detail = None, "CheckFailed", f"could not check the code at the registry: {exc}"
        self.status["conditions"] = conditions.set_condition(
            self.status.get("conditions") or [], type_=conditions.CREDENTIAL_VERIFIED,
            status=ok, reason=reason, message=detail, generation=self.dt.generation,
            now=decide.rfc3339(self.now))

    def _adopt(self, pick: Token | None, action: str) -> Token | None:
        if pick is None:
            return None
        try:
            token = _with_code(self.quay.get_token(pick.uuid))
        # gone between list and get: create instead
        except QuayNotFound:
            self._forget(pick.uuid)
            return None
        self.act(action)
        return token

    def _take_lease(self) -> DockerToken:
        dt = self.dt
        lease = decide.lease_state(dt.status.creation, self.now)
        if lease is decide.Lease.FRESH:
            self._wait_for_other_creator()
        creation = Creation(id=uuid.uuid4().hex, title=dt.title, since=decide.rfc3339(self.now))
        body = {"creation": {"id": creation.id, "title": creation.title, "since": creation.since}}
        obj = self.kube.patch_status(dt.namespace, dt.name, body, dt.resource_version)
        if not obj:
            raise Restart
        self.act("take-lease" if lease is decide.Lease.NONE else "take-over-stale-lease")
        self.lease = creation
        self.dt = DockerToken.from_object(obj)
        self.raw = dict(obj.get("status") or {})
        self.status.update(self.raw)
        return self.dt

    def _wait_for_other_creator(self) -> None:
        """Another delivery holds the lease: wait for it to record its UUID, then start over."""
        deadline = time.monotonic() + LEASE_WAIT_SECONDS
        while time.monotonic() < deadline:
            time.sleep(LEASE_POLL_SECONDS)
            obj = self.kube.get_dockertoken(self.dt.namespace, self.dt.name)
            if obj is None or not (obj.get("status") or {}).get("creation"):
                raise Restart
        raise TemporaryError("another delivery is creating the token; retrying").with_reason(
            conditions.CREATION_IN_PROGRESS)

    def _same_title(self) -> Iterator[dict[str, Any]]:
        """The DockerTokens that may claim tokens with our title on our Quay: one labelled list,
        whatever the size of the cluster (each object gets the label before it takes a lease)."""
        assert self.ob.conn is not None
        label = decide.claim_label(self.ob.conn.registry, self.dt.title)
        self.outcome.claims_read = 0
        for obj in self.kube.iter_dockertokens(label_selector=label):
            self.outcome.claims_read += 1
            yield obj

    def _others_once_rivals_settled(self, dt: DockerToken) -> list[dict[str, Any]]:
        """The same-title DockerTokens, read once no other one holds a fresh lease on our title.

        Both sides take their lease before looking, so at least one sees the other. The side
        holding the younger lease steps back (503; the lease is freed). The older side waits
        until the younger one is done: that one may not have seen us and be POSTing now, and
        its token must be claimed before we look for one to adopt.
        """
        ours = dt.status.creation
        assert ours is not None
        deadline = time.monotonic() + LEASE_WAIT_SECONDS
        while True:
            others = [decide.claim_view(o) for o in self._same_title()]
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

    def _create(self, title: str, claimed: set[str]) -> Token:
        """POST, under the lease. A POST that failed may still have created the token (the answer
        was lost, or Quay finished after our timeout): look once more, a moment later, and adopt
        what appeared. Nobody else adopts or creates this title meanwhile, so it is ours."""
        assert self.ob.conn is not None
        try:
            token = _with_code(self.quay.create_token(title))
        except QuayTransient:
            self.cache.invalidate(self.ob.conn.fingerprint)  # Quay may have made it all the same
            time.sleep(min(self.ob.conn.timeout, LOST_POST_GRACE_SECONDS))
            try:
                lost = self._adopt(decide.pick_adoptable(self.quay.list_tokens(), title=title,
                                                         claimed=claimed, now=self.now),
                                   "adopt-lost-token")
            # Quay still failing: the next delivery adopts the token if there is one
            except QuayError:
                lost = None
            if lost is None:
                raise
            return lost
        self.act("create-token")
        return token

    # -- deletion ------------------------------------------------------------------------------------
    def _finalize(self) -> None:
        plan, dt = self.plan, self.dt
        if plan.wait_for_lease:
            # a delivery is POSTing this object's token: let it record the UUID, then revoke that
            self._wait_for_other_creator()
        doomed = list(plan.revoke)
        if plan.revoke_by_title:
            claimed = decide.claimed_uuids(self._same_title(), except_uid=dt.uid)
            doomed += decide.revocable(self.quay.list_tokens(), title=dt.title, claimed=claimed)
        self._revoke(doomed, "revoke-token")
        if plan.in_use.forget:
            # nothing is left in Quay: say so before the Secret can go, so that a later pass
            # (this one failing below) finishes without it
            written = self._write_status(protection.forgotten(self.status))
            if written:
                self.dt = DockerToken.from_object(written)
        if plan.in_use.release is not None:
            self._release(plan.in_use.release)
        self._edit_service_accounts()
        for ref in plan.delete_secrets:
            self._delete_secret(ref)
        remaining = [f for f in self.dt.finalizers if f != FINALIZER]
        self.kube.patch_metadata(dt.namespace, dt.name, self.dt.resource_version, finalizers=remaining)
        self.act("remove-finalizer")
        self.outcome.result = "finalized"

    # -- the connection Secret's in-use protection (protection.py) -------------------------------------
    def _protect(self, ref: Ref) -> None:
        """Our finalizer on the connection Secret before any token is made with it."""
        found = self.ob.conn_secret
        state = protection.secret_state(found)
        if found is None or state.protected:
            return
        if state.deleting:  # new finalizers are refused now
            raise PermanentError(protection.refused_message(ref)).with_reason(protection.DELETING)
        meta = found.get("metadata") or {}
        try:
            written = self.kube.set_secret_finalizers(found, [*meta.get("finalizers", ()),
                                                              protection.IN_USE_FINALIZER])
        # changed meanwhile: most often another first user protecting it at the same moment
        except Conflict:
            if protection.secret_state(self.kube.get_secret(ref.namespace, ref.name)).protected:
                return
            raise
        if written is None:
            raise Restart  # gone meanwhile: observe again
        self.act("protect-connection-secret")

    def _release(self, ref: Ref) -> None:
        """Take our finalizer off ``ref`` unless another DockerToken still needs it
        (``protection.holds``; this object has stopped needing it before it looks)."""
        found = self.kube.get_secret(ref.namespace, ref.name)
        if found is None or not protection.secret_state(found).protected:
            return
        if protection.in_use(self.kube.iter_dockertokens(label_selector=protection.selector(ref)), ref,
                             except_uid=self.dt.uid):
            return
        finalizers = list((found.get("metadata") or {}).get("finalizers") or ())
        released = self.kube.set_secret_finalizers(
            found, [f for f in finalizers if f != protection.IN_USE_FINALIZER])
        self.act("release-connection-secret")
        # a user that registered while we looked (it read the Secret still protected): protect
        # it again, unless it is already on its way out
        if released and not protection.secret_state(released).deleting and protection.in_use(
                self.kube.iter_dockertokens(label_selector=protection.selector(ref)), ref,
                except_uid=self.dt.uid):
            self.kube.set_secret_finalizers(released, finalizers)
            self.act("protect-connection-secret")

    def _note_deleting_connection(self, desired: dict[str, Any]) -> None:
        """The condition (and, when it appears, a Warning Event) telling the owner that the
        connection Secret is being deleted and kept until this object lets it go."""
        ref, state = self.dt.conn_secret, self.ob.conn_state
        deleting = state.deleting and not self.dt.preserve_in_quay
        before = self.dt.status.condition(protection.DELETING) is not None
        desired["conditions"] = protection.with_condition(
            desired.get("conditions") or [], ref if deleting else None,
            generation=self.dt.generation, now=decide.rfc3339(self.now))
        if deleting and not before:
            self._event(protection.DELETING, protection.deleting_message(ref), warning=True)

    # -- the return Secret -------------------------------------------------------------------------
    def _write_secret(self, where: Ref, current: Mapping[str, Any] | None, token: Token) -> None:
        """Make the Secret at ``where`` hold ``token``; no write when it already does."""
        assert self.ob.conn is not None
        hosts = [self.ob.conn.registry, *([self.status["registry"]] if self.status.get("registry") else [])]
        desired = pullsecret.build(self.dt, where, token, hosts)
        restoring = self.dt.status.ret_secret == where and token.uuid == self.dt.status.uuid
        if restoring and (current is None or self.plan.held is None):
            self._event("SecretRestored", f"restored the pull Secret {where} (it was "
                        f"{'deleted' if current is None else 'changed'})")
        if current is None:
            self._create_secret(where, desired)
            self.act("create-secret")
        elif not pullsecret.is_intact(current, desired):
            meta = current["metadata"]
            if current.get("type") != desired["type"]:  # type is immutable: recreate
                self.kube.delete_secret(where.namespace, where.name, uid=meta.get("uid"))
                self._create_secret(where, desired)
            else:  # keep labels and annotations others added
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
            # the token is already recorded in status: a later pass writes the Secret once it can
            raise ConfigError(
                f"retSecretRef.namespace: namespace {where.namespace!r} does not exist; create it "
                "(the next resync then writes the Secret) or name an existing namespace")

    def _delete_secret(self, where: Ref) -> None:
        """Delete the Secret at ``where`` if it is ours (as observed at the start of the pass)."""
        found = self.ob.ret_secret if where == self.dt.ret_secret else self.ob.old_ret_secret
        if found is not None and pullsecret.is_ours(found, self.dt):
            self.kube.delete_secret(where.namespace, where.name, uid=found["metadata"].get("uid"))
            self.act("delete-secret")

    def _edit_service_accounts(self) -> None:
        """Attach the pull Secret to (or detach it from) the ServiceAccounts the plan names."""
        ref = self.dt.ret_secret or self.dt.status.ret_secret
        if ref is None:
            return
        for edit in self.plan.sa_edits:
            self.kube.patch_serviceaccount_pull_secrets(ref.namespace, edit.name, list(edit.pull_secrets),
                                                        edit.resource_version)
            self.act(f"{'attach-to' if edit.attach else 'detach-from'}-serviceaccount")

    # -- status ----------------------------------------------------------------------------------------
    def _fail(self, failure: Failure) -> None:
        """Record the failure (and free our lease) in one write; the outcome says what happened."""
        desired = decide.failed_status(self.dt, self.status, failure, self.plan.inputs, self.now)
        was = (self.dt.status.condition(conditions.READY) or {}).get("status")
        if was != "False":
            self._event(failure.reason, failure.message, warning=True)
        if self.lease is not None:
            desired["creation"] = None
        self._write_status(desired)
        self.lease = None
        out = self.outcome
        out.reason, out.message, out.temporary = failure.reason, failure.message, failure.temporary
        out.result = "blocked" if self.plan.cleanup else "retrying" if failure.temporary else "failed"

    def _write_status(self, desired: Mapping[str, Any], *,
                      best_effort: bool = False) -> dict[str, Any] | None:
        """Write only what differs from what the server has; nothing at all when equal.

        Returns the object as written, {} if it no longer exists, None if nothing was written.
        """
        patch = decide.status_patch(self.raw, desired)
        if not patch:
            return None
        try:
            obj = self.kube.patch_status(self.dt.namespace, self.dt.name, patch)
        # freeing a lease is best effort: it goes stale on its own
        except (TemporaryError, PermanentError):
            if not best_effort:
                raise
            logger.warning("%s/%s: could not write status", self.dt.namespace, self.dt.name)
            return None
        if obj:
            self.raw = dict(obj.get("status") or {})
        return obj


def _with_code(token: Token) -> Token:
    if not token.code:
        raise QuayPermanent(f"Quay returned token {token.uuid} without its code")
    return token
