"""The whole decision of a reconcile pass, as pure functions: no I/O, no clock, no CloudEvent.

``reconcile.py`` runs observe (``observe.py``) -> :func:`plan` -> apply (``apply.py``). The plan
is a value (``steps.py``): typed steps in order (each says what to write or ask, and the action
it logs), the status to write, the Events to record and the report. ``apply.py`` performs the
steps and chooses nothing. Where the decision needs an answer from outside, the step names the
question and a continuation here takes the answer and returns the next step (as h11 takes
bytes)::

    Verify          --the listed token-->       verified()           -> Obtained | Fetch
    Fetch           --the token, or gone-->     fetched()            -> Obtained | Acquire
    Acquire         --creation.py's token-->    acquired()           -> CheckRegistry
    CheckRegistry   --GET /v2/ challenge-->     challenged()         -> CheckCredential | Obtained
    CheckCredential --the registry's answer-->  credential_checked() -> Obtained
    (either check failing)                      unchecked()          -> Obtained
    Obtained        -->                         settle(): the Secret, ServiceAccounts, revocations, status
    RevokeByTitle   --claims, tokens-->         by_title()           -> Revoke
    an error        -->                         on_error(): Ready=False with its retry, or None (503)

The convergence rule (README "Design notes"): a pass that fails records, with the failure, a
digest of what could fix it (:func:`inputs_digest`) and a retry time; until one of them moves,
every event - including the echo of that very write - is answered with no write and no Quay
call (the "backoff" report).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from function import (
    claims,
    conditions,
    lastaccess,
    protection,
    pullsecret,
    records,
    renewal,
    result,
    template,
)
from function.claims import Lease
from function.connection import Connection
from function.errors import ConfigError, PermanentError
from function.kevents import NORMAL, WARNING, Transition
from function.model import FINALIZER, DockerToken, Ref, Status, Token
from function.renewal import is_expired, parse_time, rfc3339
from function.result import Failure, Report
from function.steps import (
    Acquire,
    Challenge,
    CheckCredential,
    CheckRegistry,
    CreateSecret,
    DeleteSecret,
    EditServiceAccount,
    Ensure,
    Fetch,
    Obtained,
    ObtainToken,
    PatchMetadata,
    Plan,
    ProtectConnection,
    RecreateSecret,
    ReleaseConnection,
    RemoveFinalizer,
    ReplaceSecret,
    Revoke,
    RevokeByTitle,
    Settlement,
    Step,
    TokenWork,
    Verify,
    WaitForCreator,
    WriteStatus,
)

# The deployment's defaults (main.py reads RESYNC_PERIOD and ROTATION_GRACE_SECONDS): the
# CronJob's schedule, and how long a rotated-out token keeps working (image pulls in flight).
RESYNC_PERIOD = datetime.timedelta(minutes=10)
ROTATION_GRACE = datetime.timedelta(seconds=120)


class TokenStep(enum.StrEnum):
    """How to obtain the token the Secret must hold."""

    KEEP = "keep"          # status UUID stands and the Secret holds its code: no Quay call
    VERIFY = "verify"      # as KEEP, but confirm the UUID is still listed in Quay (resync)
    FETCH = "fetch"        # status UUID stands but the Secret lost its code: GET it
    ACQUIRE = "acquire"    # no usable UUID: adopt an unclaimed same-title token, else create
    ROTATE = "rotate"      # renewalTime passed: a new token now, the old one revoked after a grace


@dataclass(frozen=True)
class Observed:
    """Everything one pass knows before it acts; built by ``observe.py`` (or from lists)."""

    dt: DockerToken
    now: datetime.datetime
    verify: bool                       # a resync: confirm in Quay that the token still exists
    wave: str                          # the resync run (its events share one list)
    conn: Connection | None            # None: see conn_error
    conn_error: PermanentError | None  # the connection Secret is missing, refused or invalid
    conn_version: str                  # digest of its data ("" when missing): a fix moves it
    ret_secret: Mapping[str, Any] | None      # the Secret at spec.retSecretRef, as found
    old_ret_secret: Mapping[str, Any] | None  # the one at status.retSecret, when that moved
    consent_error: PermanentError | None = None  # a cross-namespace reference is not allowed
    consent_version: str = ""          # what the consent was read from (a fix moves it)
    # spec.serviceAccounts and status.serviceAccounts, as found (None: no such ServiceAccount)
    service_accounts: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    resync_period: datetime.timedelta = RESYNC_PERIOD
    rotation_grace: datetime.timedelta = ROTATION_GRACE
    registry_check: bool = True        # log in at the registry with each new code (REGISTRY_CHECK)
    # how often Quay's lastAccessed is worth a pull Secret write (LAST_ACCESSED_REFRESH)
    last_accessed_refresh: datetime.timedelta = lastaccess.DEFAULT
    # in-use protection (protection.py): the connection Secret as found (None: missing or not
    # ours to read), and the Secret this object is registered as a user of
    conn_secret: Mapping[str, Any] | None = None
    registered: Ref | None = None

    @property
    def conn_state(self) -> protection.SecretState:
        return protection.secret_state(self.conn_secret)


# -- plan ------------------------------------------------------------------------------------------
def plan(ob: Observed) -> Plan:
    """The plan for one observed DockerToken (see the module docstring for the loop rule)."""
    dt = ob.dt
    inputs = inputs_digest(ob)
    if dt.deleting:
        return _plan_deletion(ob, inputs)
    add = not dt.has_finalizer
    labels = claims.claim_labels(dt, ob.conn.registry) if ob.conn is not None and dt.title else None
    if _backing_off(dt.status, inputs, ob.now):
        return Plan(steps=_metadata(dt, add, None), report=_backoff(dt.status), inputs=inputs)
    try:
        dt.validate()
        records.renew_before(dt)
        template.validate_template(dt.secret_template)
    except PermanentError as exc:
        return _failing(ob, _metadata(dt, add, None), Failure(exc.reason, str(exc)), inputs)
    for error in (ob.consent_error, ob.conn_error):
        if error is not None:
            return _failing(ob, _metadata(dt, add, None), Failure(error.reason, str(error)), inputs)
    if ob.ret_secret is not None and not pullsecret.is_ours(ob.ret_secret, dt):
        return _failing(ob, _metadata(dt, add, labels), Failure(
            conditions.SECRET_CONFLICT,
            f"retSecretRef: Secret {dt.ret_secret} exists and belongs to something else (no "
            "quay-dockertoken owner mark); choose another name or delete that Secret"), inputs)
    # the Secret this object makes or holds tokens with is protected until they are revoked
    want = None if dt.preserve_in_quay else dt.conn_secret
    if protection.starts_using_deleted(ob.registered, want, ob.conn_state):
        return _failing(ob, _metadata(dt, add, labels), Failure(
            protection.DELETING, protection.refused_message(dt.conn_secret)), inputs)
    in_use = protection.for_use(ob.registered, want, ob.conn_state)
    held = pullsecret.token_from(ob.ret_secret) if ob.ret_secret is not None else None
    if held is not None and held.uuid != dt.status.uuid:
        held = None
    step, why = token_step(dt, held, verify=ob.verify, now=ob.now)
    old = dt.status.ret_secret
    edits, attached = service_account_edits(dt, ob.service_accounts, keep=dt.service_accounts)
    ensure = Ensure(held=held, write_secret=dt.ret_secret,
                    deletes=_deletes(ob, (old,) if old is not None and old != dt.ret_secret else ()),
                    sa_edits=edits, attached=attached)
    first = _first(ob, step, why, held)
    # released before the registration that names it goes; protected before any token is made
    meta: tuple[Step, ...] = (
        *((ReleaseConnection(in_use.release),) if in_use.release is not None else ()),
        *_metadata(dt, add, {**(labels or {}), **(in_use.labels or {})}, in_use.annotations),
        *((ProtectConnection(in_use.protect),) if in_use.protect is not None else ()))
    if not isinstance(first, Obtained):
        return Plan(steps=(*meta, ObtainToken(first, ensure)), recordable=True, inputs=inputs)
    try:
        done = settle(ob, ensure, first)
    except PermanentError as exc:
        return _failing(ob, meta, Failure(exc.reason, str(exc)), inputs)
    return Plan(steps=(*meta, *done.steps), status=done.status, events=done.events,
                report=done.report, recordable=True, inputs=inputs)


def _plan_deletion(ob: Observed, inputs: str) -> Plan:
    dt = ob.dt
    if not dt.has_finalizer:
        return Plan(report=Report("gone"))
    refs = tuple(dict.fromkeys(r for r in (dt.status.ret_secret, dt.ret_secret) if r is not None))
    detach, _ = service_account_edits(dt, ob.service_accounts, keep=())
    # once nothing is left in Quay (revoked, or kept on purpose), this object stops using its
    # connection Secret: say so first, so that a later pass finishes without the Secret
    release = (ReleaseConnection(ob.registered),) if ob.registered is not None else ()
    finish: tuple[Step, ...] = (*release, *detach, *_deletes(ob, refs),
                                RemoveFinalizer(tuple(f for f in dt.finalizers if f != FINALIZER)))
    done = Plan(steps=finish, report=Report("finalized"), recordable=True, cleanup=True, inputs=inputs)
    if dt.preserve_in_quay:
        return done
    revoke = tuple(u for u in (dt.status.uuid, *dt.status.pending_revocation) if u)
    # adopted from the old operator (no UUID), or a creation was cut short: revoke by title
    by_title = not dt.status.uuid and bool(dt.status.exist_in_quay or dt.status.creation) and bool(dt.title)
    if not revoke and not by_title:
        return done  # nothing was ever made in Quay: no connection needed
    if _backing_off(dt.status, inputs, ob.now):
        return Plan(report=_backoff(dt.status), cleanup=True, inputs=inputs)
    error = ob.consent_error or ob.conn_error
    if error is None and not dt.conn_secret.name:
        error = PermanentError("spec.connSecretRef.name is empty")
    if error is not None:
        failure = result.failure_of(error, cleanup=True)
        assert failure is not None
        return _failing(ob, (), failure, inputs, cleanup=True)
    creating = claims.lease_state(dt.status.creation, ob.now) is Lease.FRESH
    wait: tuple[Step, ...] = (WaitForCreator(),) if creating else ()
    revoking: Step = RevokeByTitle(dt.title, revoke) if by_title else Revoke(revoke, "revoke-token")
    forget = (WriteStatus(protection.forgotten(dt.status)),) if ob.registered is not None else ()
    return Plan(steps=(*wait, revoking, *forget, *finish), report=Report("finalized"), recordable=True,
                cleanup=True, inputs=inputs)


def unobserved(dt: DockerToken, exc: Exception, now: datetime.datetime) -> tuple[Observed, Plan]:
    """A pass whose observation failed (the API server refused a read, say): the failure is
    recorded under the convergence rule like any other, with what could fix it as its digest."""
    ob = Observed(dt=dt, now=now, verify=False, wave="", conn=None, conn_error=None, conn_version="",
                  ret_secret=None, old_ret_secret=None)
    inputs = inputs_digest(ob)
    if dt.deleting and not dt.has_finalizer:
        return ob, Plan(report=Report("gone"))
    if _backing_off(dt.status, inputs, now):
        return ob, Plan(report=_backoff(dt.status), cleanup=dt.deleting, inputs=inputs)
    failure = result.failure_of(exc, cleanup=dt.deleting)
    assert failure is not None
    meta = _metadata(dt, not dt.deleting and not dt.has_finalizer, None)
    return ob, _failing(ob, meta, failure, inputs, cleanup=dt.deleting)


def _metadata(dt: DockerToken, add: bool, labels: Mapping[str, str | None] | None,
              annotations: Mapping[str, str | None] | None = None) -> tuple[Step, ...]:
    if not add and not labels:
        return ()
    return (PatchMetadata((*dt.finalizers, FINALIZER) if add else None, labels or None,
                          "add-finalizer" if add else "set-labels", annotations),)


def _backoff(status: Status) -> Report:
    """Nothing that could fix the failure changed: say again what status says."""
    ready = status.condition(conditions.READY) or {}
    retry = status.retry
    return Report("backoff", str(ready.get("reason", "")), str(ready.get("message", "")),
                  retry.temporary if retry else False, retry.not_before if retry else "")


def _failing(ob: Observed, meta: tuple[Step, ...], failure: Failure, inputs: str, *,
             cleanup: bool = False) -> Plan:
    done = failed(ob, ob.dt.status, failure, inputs=inputs, cleanup=cleanup)
    return Plan(steps=(*meta, *done.steps), status=done.status, events=done.events,
                report=done.report, failure=failure, cleanup=cleanup, inputs=inputs)


def _first(ob: Observed, step: TokenStep, why: str, held: Token | None) -> TokenWork:
    st, title = ob.dt.status, ob.dt.title
    if step is TokenStep.KEEP:
        return Obtained(held, "kept", "", st)
    if step is TokenStep.VERIFY:
        return Verify(st.uuid, held, ob.wave, st)
    if step is TokenStep.FETCH:
        return Fetch(st.uuid, st)
    rotation = step is TokenStep.ROTATE
    grace = rfc3339(ob.now + ob.rotation_grace) if rotation else ""
    return Acquire(title, rotation, revoke_old=True, grace_until=grace, why=why, status=st)


def token_step(dt: DockerToken, held: Token | None, *, verify: bool,
               now: datetime.datetime) -> tuple[TokenStep, str]:
    """What to do about the token, and (for ACQUIRE) why, for the status message.

    ``held`` is the token the return Secret holds, if it is ours and matches the status UUID.
    """
    st = dt.status
    if not st.uuid:
        return TokenStep.ACQUIRE, ""
    if st.token_name and st.token_name != dt.title:
        return TokenStep.ACQUIRE, f"spec.name changed from {st.token_name!r}; replaced the token"
    if is_expired(st.expiration, now):
        return TokenStep.ACQUIRE, f"token {st.uuid} expired on {st.expiration}; created a replacement"
    if renewal.is_due(parse_time(st.renewal_time), now) or renew_requested(dt):
        return TokenStep.ROTATE, ""
    if dt.ret_secret is not None and held is None:
        return TokenStep.FETCH, ""
    return (TokenStep.VERIFY if verify else TokenStep.KEEP), ""


def renew_requested(dt: DockerToken) -> bool:
    """Whether the renew-request annotation holds a value no pass has acted on yet (the value
    acted on is recorded with the new token, so the echo of that write rotates nothing)."""
    return bool(dt.renew_request) and dt.renew_request != dt.status.renew_request


# -- continuations: Quay's answers -> the next step ------------------------------------------------
def after_verify(held: Token | None, listed: Token | None, now: datetime.datetime,
                 refresh: datetime.timedelta = lastaccess.DEFAULT) -> tuple[TokenStep, Token | None]:
    """VERIFY, once the (cached) list is known: KEEP with Quay's dates (``lastAccessed``: its
    first real use, then at most once per ``refresh``, see lastaccess.py), or FETCH to be sure."""
    if listed is None or is_expired(listed.expiration, now):
        return TokenStep.FETCH, None
    if held is None:
        return TokenStep.KEEP, None
    seen = lastaccess.to_record(held.last_accessed, listed.last_accessed, listed.created, refresh)
    return TokenStep.KEEP, Token(listed.uuid, held.title, listed.created, listed.expiration, seen,
                                 held.code)


def verified(ob: Observed, step: Verify, listed: Token | None) -> Obtained | Fetch:
    """A token missing from the list (or expired in it) is confirmed with a GET."""
    nxt, refreshed = after_verify(step.held, listed, ob.now, ob.last_accessed_refresh)
    if nxt is TokenStep.KEEP:
        return Obtained(refreshed, "kept", "", step.status)
    return Fetch(step.uuid, step.status)


def fetched(ob: Observed, step: Fetch, token: Token | None) -> Obtained | Acquire:
    """The GET's answer; None: revoked or expired in Quay, so a replacement is made."""
    if token is not None:
        return Obtained(token, "fetched", "", step.status)
    why = f"token {step.uuid} no longer exists in Quay (revoked or expired); created a replacement"
    return Acquire(ob.dt.title, rotation=False, revoke_old=False, grace_until="", why=why,
                   status=step.status)


def acquired(step: Acquire, token: Token, *, adopted: bool, status: Status) -> CheckRegistry:
    """``creation.py`` recorded ``token`` (``status`` as written): check it at the registry."""
    how = "rotated" if step.rotation else "adopted" if adopted else "created"
    return CheckRegistry(token, how, step.why, status)


def challenged(ob: Observed, step: CheckRegistry, challenge: Challenge | None) -> CheckCredential | Obtained:
    """The registry's own name (when other than the API host) goes to status and the pull
    Secret; its realm is where the new code is tried (one bcrypt in Quay, ~255 ms of its CPU,
    per created or rotated token), unless the deployment turned the check off."""
    if challenge is None:
        return _credential(ob, step, None, "NoRegistryChallenge",
                           "GET /v2/ announced no Bearer challenge; the code was not checked")
    assert ob.conn is not None
    service = challenge.service or ""
    status = step.status.with_(registry=service if service != ob.conn.registry else "")
    if not ob.registry_check:
        return _credential(ob, dataclasses.replace(step, status=status), None, "CheckDisabled",
                           "the registry check is turned off (REGISTRY_CHECK=false); the code was "
                           "not checked")
    return CheckCredential(challenge.realm, challenge.service, step.token, step.how, step.why, status)


def credential_checked(ob: Observed, step: CheckCredential, ok: bool, detail: str) -> Obtained:
    return _credential(ob, step, ok, "RegistryAccepted" if ok else "RegistryRefused", detail)


def unchecked(ob: Observed, step: CheckRegistry | CheckCredential, error: Exception) -> Obtained:
    """The token is made and recorded: a check that cannot be made is reported, not fatal."""
    return _credential(ob, step, None, "CheckFailed", f"could not check the code at the registry: {error}")


def _credential(ob: Observed, step: CheckRegistry | CheckCredential, ok: bool | None, reason: str,
                detail: str) -> Obtained:
    conds = conditions.set_condition(
        step.status.conditions, type_=conditions.CREDENTIAL_VERIFIED, status=ok, reason=reason,
        message=detail, generation=ob.dt.generation, now=rfc3339(ob.now))
    return Obtained(step.token, step.how, step.why, step.status.with_(conditions=tuple(conds)))


def by_title(ob: Observed, step: RevokeByTitle, others: Iterable[Mapping[str, Any]],
             tokens: Iterable[Token]) -> Revoke:
    """Deleting an object adopted from the old operator: every token with its title that no
    other DockerToken claims (``others``: the same-title objects)."""
    claimed = claims.claimed_uuids(others, except_uid=ob.dt.uid)
    return Revoke((*step.also, *claims.revocable(tokens, title=step.title, claimed=claimed)), "revoke-token")


def revoked(uuid: str) -> Transition:
    return Transition(NORMAL, "TokenRevoked", f"revoked Quay token {uuid}")


def namespace_missing(where: Ref) -> ConfigError:
    """Creating the Secret got 404: its namespace does not exist."""
    # the token is already recorded in status: a later pass writes the Secret once it can
    return ConfigError(
        f"retSecretRef.namespace: namespace {where.namespace!r} does not exist; create it "
        "(the next resync then writes the Secret) or name an existing namespace")


def on_error(ob: Observed, plan: Plan, step: Step, status: Status, exc: Exception, *,
             lease_held: bool) -> Settlement | None:
    """What to record when ``step`` of ``plan`` raised ``exc`` (``status``: as the pass had it);
    None when nothing is (``result.classify``; the event is answered 503 and redelivered), or
    when the plan was recording a failure already."""
    failure = result.failure_of(exc, cleanup=plan.cleanup) if plan.recordable else None
    if failure is None:
        return None
    return failed(ob, status, failure, inputs=plan.inputs, cleanup=plan.cleanup, lease_held=lease_held)


def without_quay(ob: Observed, plan: Plan, listed: Mapping[str, Token] | None) -> tuple[Step, ...] | None:
    """The steps ``plan`` comes to when the only Quay answer it may use is ``listed`` (the
    connection's tokens by UUID, e.g. one list for a whole page of a bulk resync); None when a
    step would need another answer (a GET, a creation) or ``listed`` is None. An object is in
    order when this is only a WriteStatus of what is already stored (:func:`is_in_order`)."""
    out: list[Step] = []
    for step in plan.steps:
        if not isinstance(step, ObtainToken):
            out.append(step)
            continue
        if not isinstance(step.first, Verify) or listed is None:
            return None
        got = verified(ob, step.first, listed.get(step.first.uuid))
        if not isinstance(got, Obtained):
            return None
        out += settle(ob, step.ensure, got).steps
    return tuple(out)


def is_in_order(ob: Observed, todo: Iterable[Step] | None) -> bool:
    """Whether steps (from :func:`without_quay`) would write nothing and call nothing."""
    return todo is not None and all(
        isinstance(s, WriteStatus) and not s.status.merge_patch(ob.dt.status) for s in todo)


# -- the end of a pass ---------------------------------------------------------------------------
def settle(ob: Observed, ensure: Ensure, got: Obtained) -> Settlement:
    """Once the token is known: the pull Secret, the moved Secret, the ServiceAccounts, old tokens
    whose grace is over, and the status to write. Raises ConfigError for a Secret the API server
    would refuse."""
    dt, token = ob.dt, got.token
    st = got.status
    if token is not None:
        st = st.with_(expiration=token.expiration, **records.token_times(token))
        if token.created:
            st = st.with_(renewal_time=records.renewal_time(dt, token))
    base = st
    steps: list[Step] = []
    events = list(_token_events(ob, got))
    if token is not None and ensure.write_secret is not None:
        write, restored = _secret_write(ob, ensure, ensure.write_secret, token, st)
        steps += write
        events += restored
        st = st.with_(ret_secret=ensure.write_secret)
    steps += ensure.deletes
    if dt.ret_secret is None:
        st = st.with_(ret_secret=None)
    assert ob.conn is not None  # the registry the pull Secret is for (a metrics label)
    st = st.with_(registry_host=st.registry or ob.conn.registry)
    steps += ensure.sa_edits
    st = st.with_(service_accounts=ensure.attached)
    if st.pending_revocation and records.revocation_due(st.revoke_after, ob.now):
        steps.append(Revoke(st.pending_revocation, "revoke-old-token"))
        st = st.with_(pending_revocation=(), revoke_after="")
    note = records.renewal_note(dt, token, ob.resync_period)
    st, reason, message = records.ready_status(dt, st, replaced=got.why, now=ob.now, note=note)
    st, deleting = _connection_deleting(ob, st)
    events += deleting
    steps.append(WriteStatus(st))
    return Settlement(tuple(steps), st, tuple(events), Report("ready", reason, message), base)


def _connection_deleting(ob: Observed, status: Status) -> tuple[Status, tuple[Transition, ...]]:
    """The condition (and, when it appears, a Warning Event) telling the owner that the
    connection Secret is being deleted and kept until this object lets it go."""
    dt = ob.dt
    deleting = ob.conn_state.deleting and not dt.preserve_in_quay
    before = dt.status.condition(protection.DELETING) is not None
    conds = protection.with_condition(status.conditions, dt.conn_secret if deleting else None,
                                      generation=dt.generation, now=rfc3339(ob.now))
    events = (Transition(WARNING, protection.DELETING, protection.deleting_message(dt.conn_secret)),)
    return status.with_(conditions=tuple(conds)), events if deleting and not before else ()


def failed(ob: Observed, status: Status, failure: Failure, *, inputs: str, cleanup: bool = False,
           lease_held: bool = False) -> Settlement:
    """Record the failure (and free a lease this pass holds) in one write; a Warning Event when
    Ready turns False."""
    st = records.failed_status(ob.dt, status, failure, inputs, ob.now)
    if lease_held:
        st = st.with_(creation=None)
    was = (ob.dt.status.condition(conditions.READY) or {}).get("status")
    events = (Transition(WARNING, failure.reason, failure.message),) if was != "False" else ()
    outcome = "blocked" if cleanup else "retrying" if failure.temporary else "failed"
    retry_at = st.retry.not_before if st.retry else ""
    report = Report(outcome, failure.reason, failure.message, failure.temporary, retry_at)
    return Settlement((WriteStatus(st),), st, events, report, st)


def _token_events(ob: Observed, got: Obtained) -> tuple[Transition, ...]:
    dt, token = ob.dt, got.token
    if token is None or got.how in ("kept", "fetched"):
        return ()
    if got.how == "rotated":
        return (Transition(NORMAL, "TokenRotated", (
            f"replaced Quay token {dt.status.uuid} before it expires ({dt.status.expiration}) with "
            f"{token.uuid}; the old one is revoked after {int(ob.rotation_grace.total_seconds())} s")),)
    reason = "TokenAdopted" if got.how == "adopted" else "TokenCreated"
    return (Transition(NORMAL, reason, f"{got.how} Quay token {token.uuid} titled {dt.title!r}"),)


def _secret_write(ob: Observed, ensure: Ensure, where: Ref, token: Token,
                  status: Status) -> tuple[list[Step], list[Transition]]:
    """The write that makes the Secret at ``where`` hold ``token`` (none when it does), and the
    SecretRestored Event when it had lost it."""
    dt, current = ob.dt, ob.ret_secret
    assert ob.conn is not None
    hosts = [ob.conn.registry, *([status.registry] if status.registry else [])]
    desired = pullsecret.build(dt, where, token, hosts)
    events: list[Transition] = []
    restoring = dt.status.ret_secret == where and token.uuid == dt.status.uuid
    if restoring and (current is None or ensure.held is None):
        events.append(Transition(NORMAL, "SecretRestored", f"restored the pull Secret {where} (it was "
                                 f"{'deleted' if current is None else 'changed'})"))
    if current is None:
        return [CreateSecret(where, desired)], events
    if pullsecret.is_intact(current, desired):
        return [], events
    meta = current["metadata"]
    if current.get("type") != desired["type"]:
        return [RecreateSecret(where, str(meta.get("uid") or ""), desired)], events
    body = {**desired, "metadata": {  # keep labels and annotations others added
        **desired["metadata"],
        "resourceVersion": meta.get("resourceVersion"),
        "labels": {**(meta.get("labels") or {}), **desired["metadata"]["labels"]},
        "annotations": {**(meta.get("annotations") or {}), **desired["metadata"]["annotations"]},
    }}
    return [ReplaceSecret(body)], events


def _deletes(ob: Observed, refs: Iterable[Ref]) -> tuple[DeleteSecret, ...]:
    """Those of ``refs`` whose Secret (as observed) is ours."""
    out = []
    for ref in refs:
        found = ob.ret_secret if ref == ob.dt.ret_secret else ob.old_ret_secret
        if found is not None and pullsecret.is_ours(found, ob.dt):
            out.append(DeleteSecret(ref, str(found["metadata"].get("uid") or "")))
    return tuple(out)


def service_account_edits(dt: DockerToken, found: Mapping[str, Mapping[str, Any] | None], *,
                          keep: Iterable[str]) -> tuple[tuple[EditServiceAccount, ...], tuple[str, ...]]:
    """The imagePullSecrets edits that attach the return Secret to the ServiceAccounts in
    ``keep`` and detach it from those status lists and ``keep`` does not; and the attached list.
    A ServiceAccount that does not exist is skipped (a later resync attaches it). Only what this
    object attached is detached: the Secret status.retSecret records (where this object wrote its
    Secret), never whatever spec.retSecretRef names now, which may be someone else's."""
    if dt.ret_secret is None:
        return (), ()
    secret, keep = dt.ret_secret.name, tuple(keep)
    written = dt.status.ret_secret.name if dt.status.ret_secret is not None else ""
    edits, attached = [], []
    for name in dict.fromkeys((*keep, *dt.status.service_accounts)):
        account = found.get(name)
        wanted = name in keep
        if account is None or not (wanted or written):
            continue
        new = pullsecret.pull_secret_edit(account.get("imagePullSecrets"), secret if wanted else written,
                                          wanted)
        if new is not None:
            meta = account.get("metadata") or {}
            edits.append(EditServiceAccount(
                dt.ret_secret.namespace, name, tuple(new), str(meta.get("resourceVersion") or ""),
                "attach-to-serviceaccount" if wanted else "detach-from-serviceaccount"))
        if wanted:
            attached.append(name)
    return tuple(edits), tuple(attached)


# -- the convergence rule ------------------------------------------------------------------------
def inputs_digest(ob: Observed) -> str:
    """What someone could change to fix a failure, hashed (status must not name Secrets' data).

    The spec (generation), deletion, the reconcile-request annotation, the connection Secret's
    resourceVersion, a foreign Secret squatting the return Secret's name, and where consent to a
    cross-namespace reference is read from. Never anything this function writes itself.
    """
    ret = ob.ret_secret
    foreign = ""
    if ret is not None and not pullsecret.is_ours(ret, ob.dt):
        foreign = str((ret.get("metadata") or {}).get("resourceVersion") or "")
    parts: tuple[str, ...] = (str(ob.dt.generation), "deleting" if ob.dt.deleting else "",
                              ob.dt.reconcile_request, str(ob.dt.conn_secret), ob.conn_version,
                              foreign, ob.consent_version)
    if ob.dt.renew_request:  # only when set, so the digests of other objects stay as they were
        parts += (ob.dt.renew_request,)
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _backing_off(status: Status, inputs: str, now: datetime.datetime) -> bool:
    retry = status.retry
    if retry is None or retry.inputs != inputs:
        return False
    due = parse_time(retry.not_before)
    return due is not None and now < due - records.RETRY_SLACK


