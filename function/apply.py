"""Carry out a plan: the Quay calls and API server writes of one pass, in the plan's order.

``reconcile.py`` runs one :class:`Pass` per pass. It performs ``decide.py``'s typed steps and
hands every answer to decide's continuations; it chooses nothing itself. The creation protocol
is ``creation.py``'s. What a step raises goes to ``decide.on_error``: recorded in status in one
write (freeing a lease this pass holds), or raised on (503).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

from function import creation, decide, inuse, kevents, steps
from function.cache import TokenListCache
from function.connection import Connection
from function.errors import PermanentError, QuayError, QuayNotFound, Restart, TemporaryError
from function.kube import Kube
from function.model import DockerToken, Status, Token
from function.result import Report, Tally

if TYPE_CHECKING:
    from function.quay import QuayClient

logger = logging.getLogger(__name__)

QuayFactory = Callable[[Connection], "QuayClient"]


def quay_client(conn: Connection) -> QuayClient:
    """The default QuayFactory."""
    from function.quay import QuayClient

    return QuayClient(conn)


class Pass:
    """One pass's I/O; counts its own writes and Quay calls (the log's per-event figures)."""

    def __init__(self, kube: Kube, quay_factory: QuayFactory, cache: TokenListCache,
                 observed: decide.Observed, plan: steps.Plan, *, reporting_instance: str) -> None:
        self.kube, self.ob, self.plan = kube, observed, plan
        self.dt: DockerToken = observed.dt        # its resourceVersion moves with our metadata write
        self.stored: Status = observed.dt.status  # status as the server has it
        self.status: Status = observed.dt.status  # status as this pass has it so far
        self.lease_held = False
        self.report: Report = plan.report
        self.events: list[kevents.Transition] = list(plan.events)
        self.actions: list[str] = []
        self.reporting_instance = reporting_instance
        self._factory, self.cache = quay_factory, cache
        self._client: QuayClient | None = None
        self.creator = creation.Creator(kube, lambda: self.quay, cache, observed.conn,
                                        act=self.actions.append, stored=self._stored, revoke=self._revoke)

    @property
    def quay(self) -> QuayClient:
        """The pass's Quay client, opened on its first call: a pass that needs none opens none."""
        if self._client is None:
            assert self.ob.conn is not None
            self._client = self._factory(self.ob.conn).__enter__()
        return self._client

    def run(self) -> Report:
        try:
            self._perform_all(self.plan.steps)
            return self.report
        finally:
            self._record_events()

    def close(self) -> Tally:
        """Sign out of Quay; what the pass did."""
        client, self._client, calls = self._client, None, 0
        if client is not None:
            calls = client.calls
            try:
                client.__exit__(None, None, None)
            # signing out is a courtesy; the session expires on its own
            except Exception:
                logger.debug("quay sign-out failed", exc_info=True)
        return Tally(tuple(self.actions), calls, self.kube.writes, self.creator.claims_read)

    def _perform_all(self, todo: Iterable[steps.Step]) -> None:
        for step in todo:
            try:
                self._perform(step)
            except Exception as exc:
                settled = decide.on_error(self.ob, self.plan, step, self.status, exc,
                                          lease_held=self.lease_held)
                if settled is None:
                    raise
                self._settle(settled)
                return

    def _settle(self, settlement: steps.Settlement) -> None:
        self.status, self.report = settlement.base, settlement.report
        self.events += settlement.events
        for step in settlement.steps:
            self._perform(step)

    def _perform(self, step: steps.Step) -> None:
        kube, dt = self.kube, self.dt
        match step:
            case steps.PatchMetadata():
                obj = kube.patch_metadata(dt.namespace, dt.name, dt.resource_version,
                                          finalizers=step.finalizers, labels=step.labels,
                                          annotations=step.annotations)
                if not obj:
                    raise Restart
                self.dt = DockerToken.from_object(obj)
            case steps.ProtectConnection():
                return inuse.protect(kube, self.ob.conn_secret, step.where, self.actions.append)
            case steps.ReleaseConnection():
                return inuse.release(kube, step.where, except_uid=dt.uid, act=self.actions.append)
            case steps.ObtainToken():
                return self._obtain(step)
            case steps.WriteStatus():
                return self._write_status(step.status)
            case steps.CreateSecret():
                if not kube.create_secret(dict(step.body)):
                    raise decide.namespace_missing(step.where)
            case steps.ReplaceSecret():
                kube.replace_secret(dict(step.body))
            case steps.RecreateSecret():
                kube.delete_secret(step.where.namespace, step.where.name, uid=step.uid)
                if not kube.create_secret(dict(step.body)):
                    raise decide.namespace_missing(step.where)
            case steps.DeleteSecret():
                kube.delete_secret(step.where.namespace, step.where.name, uid=step.uid)
            case steps.EditServiceAccount():
                kube.patch_serviceaccount_pull_secrets(step.namespace, step.name,
                                                       list(step.pull_secrets), step.resource_version)
            case steps.Revoke():
                return self._revoke(step.uuids, step.action)
            case steps.RevokeByTitle():
                others = list(self.creator.same_title(dt))
                return self._perform(decide.by_title(self.ob, step, others, self.quay.list_tokens()))
            case steps.WaitForCreator():
                self.creator.wait_for_creator(dt)
            case steps.RemoveFinalizer():
                kube.patch_metadata(dt.namespace, dt.name, dt.resource_version, finalizers=step.finalizers)
        self.actions.append(step.action)

    def _obtain(self, step: steps.ObtainToken) -> None:
        """Ask Quay what each token step asks, until the token is known; then settle."""
        work = step.first
        while not isinstance(work, steps.Obtained):
            work = self._answer(work)
            self.status = work.status
        self._settle(decide.settle(self.ob, step.ensure, work))

    def _answer(self, work: steps.TokenWork) -> steps.TokenWork:
        ob = self.ob
        match work:
            case steps.Verify():
                return decide.verified(ob, work, self.creator.tokens(wave=work.wave).get(work.uuid))
            case steps.Fetch():
                return decide.fetched(ob, work, self._fetch(work.uuid))
            case steps.Acquire():
                made = self.creator.acquire(self.dt, work, ob.now)
                return decide.acquired(work, made.token, adopted=made.adopted, status=made.status)
            case steps.CheckRegistry():
                try:
                    return decide.challenged(ob, work, self._challenge())
                # the token is made and recorded: a check that cannot be made is reported
                except QuayError as exc:
                    return decide.unchecked(ob, work, exc)
            case steps.CheckCredential():
                try:
                    check = self.quay.check_credential(work.realm, work.service, work.token.code)
                # as above
                except QuayError as exc:
                    return decide.unchecked(ob, work, exc)
                return decide.credential_checked(ob, work, check.ok, check.detail)
        return work

    def _challenge(self) -> steps.Challenge | None:
        """``GET /v2/``: a setting of the Quay server, not of a token, so learnt once per
        connection and kept (cache.py); the token-specific ``/v2/auth`` is never cached."""
        assert self.ob.conn is not None
        return cast("steps.Challenge | None", self.cache.challenges.get(
            self.ob.conn.fingerprint, lambda: self.quay.registry_challenge()))

    def _fetch(self, uid: str) -> Token | None:
        """The token with its code; None when Quay no longer has it."""
        self.actions.append("fetch-token")
        try:
            return creation.with_code(self.quay.get_token(uid))
        # revoked or expired in Quay: the continuation replaces it
        except QuayNotFound:
            self.creator.forget(uid)
            return None

    def _revoke(self, uuids: Iterable[str], action: str) -> None:
        """Revoke each token; one already gone (revoked by hand, expired and purged) is done."""
        for uid in uuids:
            try:
                self.quay.revoke_token(uid)
                self.actions.append(action)
                self.events.append(decide.revoked(uid))
            # already gone: nothing left to revoke
            except QuayNotFound:
                pass
            self.creator.forget(uid)

    def _stored(self, status: Status, lease_held: bool) -> None:
        """The creation protocol wrote ``status``."""
        self.stored = self.status = status
        self.lease_held = lease_held

    def _write_status(self, desired: Status) -> None:
        """Write only what differs from what the server has; nothing at all when equal."""
        patch = desired.merge_patch(self.stored)
        obj = self.kube.patch_status(self.dt.namespace, self.dt.name, patch) if patch else {}
        if obj:  # its new resourceVersion guards the writes that follow (the finalizer's)
            self.dt, self.stored = DockerToken.from_object(obj), Status.from_object(obj.get("status"))
        self.lease_held = False

    def _record_events(self) -> None:
        """Kubernetes Events for this pass's transitions (never from a pass that changed nothing).
        Best effort: an Event that cannot be recorded never fails the reconcile."""
        dt = self.dt
        for event in self.events:
            body = kevents.build_event(dt.namespace, dt.name, dt.uid, event.type, event.reason,
                                       event.note, self.ob.now, reporting_instance=self.reporting_instance)
            try:
                self.kube.create_event(body)
            # the reconcile's outcome does not depend on its Events
            except (TemporaryError, PermanentError) as exc:
                logger.warning("%s/%s: could not record Event %s: %s", dt.namespace, dt.name,
                               event.reason, exc)
        self.events.clear()
