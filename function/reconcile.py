"""One reconcile of one DockerToken: read everything, decide (``decide.py``), act, write status once.

Called by ``main.py`` for every event. Level-based: the event only names the object. Each pass
re-reads the object; a write conflict restarts the pass from a fresh read (a few times, then 503).
How a token is obtained under concurrency (the creation lease) is in ``creation.py``; the
return Secret is written by ``secretsync.py``.
"""

from __future__ import annotations

from function import conditions, decide
from function import secret as secrets
from function.cache import TokenListCache
from function.creation import CreationSteps
from function.errors import PermanentError, QuayNotFound, TemporaryError
from function.kube import Conflict, Kube
from function.model import FINALIZER, DockerToken, Status
from function.secretsync import SecretSteps
from function.steps import (
    Clock,
    Outcome,
    QuayFactory,
    Restart,
    Shared,
    quay_client,
    rfc3339,
    token_data,
    utcnow,
)

__all__ = ["Outcome", "Reconciler"]

# Conflicting writes restart the pass; past this many the event is answered 503 and redelivered.
MAX_PASSES = 5


class Reconciler:
    """Holds what outlives one event: the API client, the Quay client factory, the list cache."""

    def __init__(self, kube: Kube, *, quay_factory: QuayFactory = quay_client,
                 cache: TokenListCache | None = None, clock: Clock = utcnow) -> None:
        self.shared = Shared(kube, quay_factory, cache or TokenListCache(), clock)

    def reconcile(self, namespace: str, name: str, *, verify_quay: bool = False) -> Outcome:
        """Bring one object in line. Raises TemporaryError (503) when a retry is needed."""
        for _ in range(MAX_PASSES):
            p = _Pass(self.shared, namespace, name, verify_quay=verify_quay)
            try:
                return p.run()
            # someone wrote the object meanwhile: decide again on its new state
            except (Conflict, Restart):
                continue
            finally:
                p.close()
        raise TemporaryError(f"{namespace}/{name}: still changing after {MAX_PASSES} attempts")


class _Pass(CreationSteps, SecretSteps):
    """One pass: ensure (finalizer, token, Secret, old tokens revoked) or finalize."""

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
            self.fail(exc.reason, str(exc))
            self.outcome.result = "failed"
        except TemporaryError as exc:
            if isinstance(exc, Conflict):
                raise
            self.fail(exc.reason, str(exc), best_effort=True)
            raise
        return self.outcome

    def _add_finalizer(self) -> None:
        obj = self.kube.set_finalizers(self.namespace, self.name, [*self.dt.finalizers, FINALIZER],
                                       self.dt.resource_version)
        if not obj:
            raise Restart
        self.act("add-finalizer")
        self.dt = DockerToken.from_object(obj)

    def _ensure(self) -> None:
        dt = self.dt
        dt.validate()
        self.connection()
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
                self.write_secret(dt.ret_secret, current, token)
        self.drop_old_secret()
        self._revoke_pending()
        self._succeed(replaced)

    def _token(self, held: secrets.TokenData | None) -> tuple[secrets.TokenData | None, str]:
        """The token the Secret must hold, and a message when it had to be replaced."""
        plan, why = decide.plan_token(self.dt, held, verify=self.verify_quay, now=self.now)
        uid = self.dt.status.uuid
        if plan is decide.TokenPlan.KEEP:
            return held, ""
        if plan is decide.TokenPlan.VERIFY:
            seen = self.cached_tokens().get(uid)
            if seen is not None and not decide.is_expired(seen.expiration, self.now):
                if held is None:
                    return None, ""
                return secrets.TokenData(uid, held.title, held.token_code, seen.created,
                                         seen.expiration, seen.last_accessed), ""
        if plan in (decide.TokenPlan.VERIFY, decide.TokenPlan.FETCH):
            try:
                self.act("fetch-token")
                return token_data(self.quay.get_token(uid)), ""
            # revoked or expired in Quay: replace it
            except QuayNotFound:
                why = f"token {uid} no longer exists in Quay (revoked or expired); created a replacement"
                return self.acquire(revoke_old=False), why
        return self.acquire(revoke_old=True), why

    def _revoke_pending(self) -> None:
        pending = self.pending()
        if not pending:
            return
        self.forget_tokens()  # whatever happens below, the cached list no longer holds
        for uid in list(pending):
            try:
                self.quay.revoke_token(uid)
                self.act("revoke-old-token")
            # already gone: nothing left to revoke
            except QuayNotFound:
                pass
            pending.remove(uid)
            self.status["pendingRevocation"] = pending or None

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
        self.write_status(st, full=True)

    # -- deletion --------------------------------------------------------------------------------------
    def _finalize(self) -> Outcome:
        dt = self.dt
        if not dt.has_finalizer:
            self.outcome.result = "gone"
            return self.outcome
        if decide.lease_state(dt.status.creation, self.now) is decide.Lease.FRESH:
            # a delivery is POSTing this object's token: let it record the UUID, then revoke that
            self.wait_for_other_creator()
        if not dt.preserve_in_quay:
            try:
                self._cleanup_quay()
            except (PermanentError, TemporaryError) as exc:
                if isinstance(exc, Conflict):
                    raise
                self.fail(
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
            self.delete_secret(where)
        remaining = [f for f in dt.finalizers if f != FINALIZER]
        self.kube.set_finalizers(self.namespace, self.name, remaining, dt.resource_version)
        self.act("remove-finalizer")
        self.outcome.result = "finalized"
        return self.outcome

    def _cleanup_quay(self) -> None:
        dt = self.dt
        if not dt.conn_secret.name:
            raise PermanentError("spec.connSecretRef.name is empty")
        self.connection()
        doomed = [u for u in (dt.status.uuid, *dt.status.pending_revocation) if u]
        if not dt.status.uuid and (dt.status.exist_in_quay or dt.status.creation) and dt.title:
            # adopted from the old operator, or a creation was cut short: revoke by title
            claimed = decide.claimed_uuids(self.kube.iter_dockertokens(), except_uid=dt.uid)
            doomed += decide.revocable(self.list_tokens(), title=dt.title, claimed=claimed)
        for uid in doomed:
            try:
                self.quay.revoke_token(uid)
                self.act("revoke-token")
            # already gone (revoked by hand, or expired and purged): nothing to do
            except QuayNotFound:
                pass
        if doomed:
            self.forget_tokens()
