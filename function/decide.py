"""The whole decision of a reconcile pass, as pure functions: no I/O, no clock, no CloudEvent.

``reconcile.py`` runs observe (``observe.py``) -> :func:`plan` -> apply (``apply.py``). The plan
says everything that does not depend on Quay's answers; what does (is the token still there,
did the POST succeed) is decided by the small functions below as the answers come in
(:func:`after_verify`, :func:`pick_adoptable`), and the status to write by :func:`ready_status`
and :func:`failed_status`.

The convergence rule (README "Design notes"): a pass that fails records, with the failure, a
digest of what could fix it (:func:`inputs_digest`) and a retry time; until one of them moves,
every event - including the echo of that very write - is answered with no write and no Quay
call (:attr:`Plan.skip`).
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from function import conditions, kevents, protection, pullsecret, renewal, template
from function.connection import Connection
from function.errors import PermanentError, QuayTransient, ReconcileError
from function.model import CLAIM_LABEL_PREFIX, FINALIZER, Creation, DockerToken, Ref, Status, Token

# A creation lease older than this is abandoned (its holder died between POST and recording
# the UUID). Far above the longest Quay call a holder can make (timeout <= 60 s in practice).
LEASE_TTL = datetime.timedelta(seconds=120)
# Failure retry schedule: the first retry is due 5 minutes after the failure (so the next
# resync of the default 10-minute schedule makes it), then 10, 20, 40 min ... up to 6 hours.
RETRY_BASE = datetime.timedelta(minutes=5)
RETRY_MAX = datetime.timedelta(hours=6)
# A resync that arrives this much before the retry time still retries (CronJob start jitter).
RETRY_SLACK = datetime.timedelta(minutes=1)


class TokenStep(enum.StrEnum):
    """How to obtain the token the Secret must hold."""

    KEEP = "keep"          # status UUID stands and the Secret holds its code: no Quay call
    VERIFY = "verify"      # as KEEP, but confirm the UUID is still listed in Quay (resync)
    FETCH = "fetch"        # status UUID stands but the Secret lost its code: GET it
    ACQUIRE = "acquire"    # no usable UUID: adopt an unclaimed same-title token, else create
    ROTATE = "rotate"      # renewalTime passed: a new token now, the old one revoked after a grace


class Lease(enum.StrEnum):
    NONE = "none"
    FRESH = "fresh"
    STALE = "stale"


@dataclass(frozen=True)
class Observed:
    """Everything one pass knows before it acts; built by ``observe.py``."""

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
    resync_period: datetime.timedelta = datetime.timedelta(minutes=10)  # RESYNC_PERIOD
    # in-use protection (protection.py): the connection Secret as found (None: missing or not
    # ours to read), and the Secret this object is registered as a user of
    conn_secret: Mapping[str, Any] | None = None
    registered: Ref | None = None

    @property
    def conn_state(self) -> protection.SecretState:
        return protection.secret_state(self.conn_secret)


@dataclass(frozen=True)
class Failure:
    """A failure to record in status (Ready=False) instead of acting."""

    reason: str
    message: str
    temporary: bool = False

    @classmethod
    def of(cls, exc: ReconcileError) -> Failure:
        return cls(exc.reason, str(exc), temporary=isinstance(exc, QuayTransient))


@dataclass(frozen=True)
class PullSecretsEdit:
    """A ServiceAccount's new imagePullSecrets (a merge patch guarded by its resourceVersion)."""

    name: str
    pull_secrets: tuple[Mapping[str, Any], ...]
    resource_version: str
    attach: bool


@dataclass(frozen=True)
class Plan:
    """What a pass does, in order; ``apply.py`` carries it out."""

    add_finalizer: bool = False
    labels: Mapping[str, str | None] | None = None  # claim labels to add ("true") or drop (None)
    skip: str = ""                        # why nothing else is done: "gone", "backoff"
    failure: Failure | None = None        # record this and stop
    token: TokenStep | None = None        # ensure: how to get the token
    replace_reason: str = ""              # ACQUIRE replacing a recorded token: why (status)
    held: Token | None = None             # the token the return Secret holds, when usable
    write_secret: Ref | None = None       # where the pull Secret must hold the token
    delete_secrets: tuple[Ref, ...] = ()  # ours, no longer wanted (moved, or deletion)
    revoke: tuple[str, ...] = ()          # deletion: UUIDs to revoke (ensure revokes pendingRevocation
                                          # once due, as it stands after the token step)
    revoke_by_title: bool = False         # deletion: also unclaimed tokens titled spec.name
    wait_for_lease: bool = False          # deletion: a creation is in flight, let it record
    sa_edits: tuple[PullSecretsEdit, ...] = ()  # attach to / detach from ServiceAccounts
    attached: tuple[str, ...] | None = None     # status.serviceAccounts once sa_edits are done
    resync_period: datetime.timedelta = datetime.timedelta(minutes=10)  # for renewal_note
    inputs: str = ""                      # digest recorded with a failure
    cleanup: bool = False                 # a deletion pass: revoke, detach, delete, drop our finalizer
    # the connection Secret's in-use finalizer (protection.py)
    in_use: protection.Steps = field(default_factory=protection.Steps)


def plan(ob: Observed) -> Plan:
    """The plan for one observed DockerToken (see the module docstring for the loop rule)."""
    dt = ob.dt
    inputs = inputs_digest(ob)
    if dt.deleting:
        return _plan_deletion(ob, inputs)
    add = not dt.has_finalizer
    labels = claim_labels(dt, ob.conn.registry) if ob.conn is not None and dt.title else None
    if _backing_off(dt.status, inputs, ob.now):
        return Plan(add_finalizer=add, skip="backoff", inputs=inputs)
    try:
        dt.validate()
        if dt.renew_before:
            renewal.parse_duration(dt.renew_before)
        template.validate_template(dt.secret_template)
    except PermanentError as exc:
        return Plan(add_finalizer=add, failure=Failure.of(exc), inputs=inputs)
    for error in (ob.consent_error, ob.conn_error):
        if error is not None:
            return Plan(add_finalizer=add, failure=Failure.of(error), inputs=inputs)
    if ob.ret_secret is not None and not pullsecret.is_ours(ob.ret_secret, dt):
        return Plan(add_finalizer=add, labels=labels, inputs=inputs, failure=Failure(
            conditions.SECRET_CONFLICT,
            f"retSecretRef: Secret {dt.ret_secret} exists and belongs to something else (no "
            "quay-dockertoken owner mark); choose another name or delete that Secret"))
    # the Secret this object makes or holds tokens with is protected until they are revoked
    want = None if dt.preserve_in_quay else dt.conn_secret
    if protection.starts_using_deleted(ob.registered, want, ob.conn_state):
        return Plan(add_finalizer=add, labels=labels, inputs=inputs, failure=Failure(
            protection.DELETING, protection.refused_message(dt.conn_secret)))
    held = pullsecret.token_from(ob.ret_secret) if ob.ret_secret is not None else None
    if held is not None and held.uuid != dt.status.uuid:
        held = None
    step, why = token_step(dt, held, verify=ob.verify, now=ob.now)
    old = dt.status.ret_secret
    edits, attached = service_account_edits(dt, ob.service_accounts, keep=dt.service_accounts)
    return Plan(
        add_finalizer=add, labels=labels, token=step, replace_reason=why, held=held,
        write_secret=dt.ret_secret,
        delete_secrets=(old,) if old is not None and old != dt.ret_secret else (),
        sa_edits=edits, attached=attached, resync_period=ob.resync_period, inputs=inputs,
        in_use=protection.for_use(ob.registered, want, ob.conn_state),
    )


def _plan_deletion(ob: Observed, inputs: str) -> Plan:
    dt = ob.dt
    if not dt.has_finalizer:
        return Plan(skip="gone")
    secrets = tuple(dict.fromkeys(r for r in (dt.status.ret_secret, dt.ret_secret) if r is not None))
    edits, _ = service_account_edits(dt, ob.service_accounts, keep=())
    done = Plan(cleanup=True, delete_secrets=secrets, sa_edits=edits, inputs=inputs,
                in_use=protection.for_deletion(ob.registered, revoking=False))
    lease = lease_state(dt.status.creation, ob.now)
    if dt.preserve_in_quay:
        return done
    revoke = tuple(u for u in (dt.status.uuid, *dt.status.pending_revocation) if u)
    # adopted from the old operator (no UUID), or a creation was cut short: revoke by title
    by_title = not dt.status.uuid and bool(dt.status.exist_in_quay or dt.status.creation) and bool(dt.title)
    if not revoke and not by_title:
        return done  # nothing was ever made in Quay: no connection needed
    if _backing_off(dt.status, inputs, ob.now):
        return Plan(skip="backoff", inputs=inputs, cleanup=True)
    error = ob.consent_error or ob.conn_error
    if error is None and not dt.conn_secret.name:
        error = PermanentError("spec.connSecretRef.name is empty")
    if error is not None:
        return Plan(cleanup=True, failure=cleanup_blocked(error), inputs=inputs)
    return Plan(cleanup=True, delete_secrets=secrets, revoke=revoke, revoke_by_title=by_title,
                wait_for_lease=lease is Lease.FRESH, sa_edits=edits, inputs=inputs,
                in_use=protection.for_deletion(ob.registered, revoking=True))


def unobserved(dt: DockerToken, exc: ReconcileError, now: datetime.datetime) -> tuple[Observed, Plan]:
    """A pass whose observation failed (the API server refused a read, say): the failure is
    recorded under the convergence rule like any other, with what could fix it as its digest."""
    ob = Observed(dt=dt, now=now, verify=False, wave="", conn=None, conn_error=None, conn_version="",
                  ret_secret=None, old_ret_secret=None)
    inputs = inputs_digest(ob)
    if dt.deleting and not dt.has_finalizer:
        return ob, Plan(skip="gone")
    if _backing_off(dt.status, inputs, now):
        return ob, Plan(skip="backoff", inputs=inputs, cleanup=dt.deleting)
    failure = cleanup_blocked(exc) if dt.deleting else Failure.of(exc)
    return ob, Plan(add_finalizer=not dt.deleting and not dt.has_finalizer, failure=failure,
                    inputs=inputs, cleanup=dt.deleting)


def fresh_list_needed(status: Status, now: datetime.datetime) -> bool:
    """Whether a token may already exist in Quay for this object, unseen by a cached list: one
    the original operator made (existInQuay, no UUID), one a holder that died may have made (a
    stale lease), or one a failed attempt may have made (a POST whose answer was lost). A
    brand-new object keeps the cached list: N creations on a connection cost N POSTs and 1 list."""
    return (status.retry is not None or (status.exist_in_quay and not status.uuid)
            or lease_state(status.creation, now) is Lease.STALE)


def claim_label(registry: str, title: str) -> str:
    """The label of the objects that may claim tokens titled ``title`` on this Quay (hashed: no
    title in clear). The Quay account is not in it (with an OAuth token only another Quay call
    would tell it), so objects of other accounts with that title on that Quay are read too."""
    return CLAIM_LABEL_PREFIX + hashlib.sha256(f"{registry}\x00{title}".encode()).hexdigest()[:40]


def claim_labels(dt: DockerToken, registry: str) -> dict[str, str | None] | None:
    """The label changes that keep ``dt`` findable by every title it may claim a token of: its
    spec.name, the title of the token it holds, and, while old tokens await revocation, every
    title it had; None when nothing changes."""
    want = {claim_label(registry, t) for t in (dt.title, dt.status.token_name) if t}
    if dt.status.pending_revocation:
        want |= dt.claim_labels
    changes: dict[str, str | None] = {k: "true" for k in want - dt.claim_labels}
    changes.update({k: None for k in dt.claim_labels - want})
    return changes or None


def cleanup_blocked(exc: ReconcileError) -> Failure:
    return Failure(
        conditions.CLEANUP_BLOCKED,
        f"cannot revoke the token in Quay: {exc}. Fix it, or set spec.preserveInQuayOnDeletion: "
        f"true (the token then stays in Quay) or remove the finalizer {FINALIZER}, and delete "
        "the token in Quay yourself",
        temporary=isinstance(exc, QuayTransient),
    )


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
    if renewal.is_due(parse_time(st.renewal_time), now):
        return TokenStep.ROTATE, ""
    if dt.ret_secret is not None and held is None:
        return TokenStep.FETCH, ""
    return (TokenStep.VERIFY if verify else TokenStep.KEEP), ""


def after_verify(held: Token | None, listed: Token | None,
                 now: datetime.datetime) -> tuple[TokenStep, Token | None]:
    """VERIFY, once the (cached) list is known: KEEP with Quay's dates, or FETCH to be sure."""
    if listed is None or is_expired(listed.expiration, now):
        return TokenStep.FETCH, None
    if held is None:
        return TokenStep.KEEP, None
    return TokenStep.KEEP, Token(listed.uuid, held.title, listed.created, listed.expiration,
                                 listed.last_accessed, held.code)


def service_account_edits(dt: DockerToken, found: Mapping[str, Mapping[str, Any] | None], *,
                          keep: Iterable[str]) -> tuple[tuple[PullSecretsEdit, ...], tuple[str, ...]]:
    """The imagePullSecrets edits that attach the return Secret to the ServiceAccounts in
    ``keep`` and detach it from those status lists and ``keep`` does not; and the attached list.
    A ServiceAccount that does not exist is skipped (a later resync attaches it)."""
    if dt.ret_secret is None:
        return (), ()
    secret, keep = dt.ret_secret.name, tuple(keep)
    edits, attached = [], []
    for name in dict.fromkeys((*keep, *dt.status.service_accounts)):
        account = found.get(name)
        if account is None:
            continue
        wanted = name in keep
        new = kevents.pull_secret_edit(account.get("imagePullSecrets"), secret, wanted)
        if new is not None:
            meta = account.get("metadata") or {}
            edits.append(PullSecretsEdit(name, tuple(new), str(meta.get("resourceVersion") or ""),
                                         wanted))
        if wanted:
            attached.append(name)
    return tuple(edits), tuple(attached)


def renewal_fields(dt: DockerToken, token: Token) -> dict[str, Any]:
    """``status.renewalTime`` for ``token`` (None when it does not expire)."""
    renew_before = renewal.parse_duration(dt.renew_before) if dt.renew_before else None
    at = renewal.renewal_time(parse_time(token.created), parse_time(token.expiration), renew_before)
    return {"renewalTime": rfc3339(at) if at is not None else None}


def renewal_note(dt: DockerToken, token: Token | None, resync_period: datetime.timedelta) -> str:
    """The Ready message when ``token`` may expire before a resync comes to rotate it; "" if fine."""
    if token is None:
        return ""
    renew_before = renewal.parse_duration(dt.renew_before) if dt.renew_before else None
    return renewal.resync_window_problem(parse_time(token.created), parse_time(token.expiration),
                                         renew_before, resync_period) or ""


# -- the convergence rule ------------------------------------------------------------------------
def inputs_digest(ob: Observed) -> str:
    """What someone could change to fix a failure, hashed (status must not name Secrets' data).

    The spec (generation), deletion, the reconcile-request annotation, the connection Secret's
    data (not its resourceVersion, which the in-use finalizer moves), a foreign Secret squatting
    the return Secret's name, and where consent to a cross-namespace reference is read from.
    Never anything this function writes itself.
    """
    ret = ob.ret_secret
    foreign = ""
    if ret is not None and not pullsecret.is_ours(ret, ob.dt):
        foreign = str((ret.get("metadata") or {}).get("resourceVersion") or "")
    parts = (str(ob.dt.generation), "deleting" if ob.dt.deleting else "", ob.dt.reconcile_request,
             str(ob.dt.conn_secret), ob.conn_version, foreign, ob.consent_version)
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _backing_off(status: Status, inputs: str, now: datetime.datetime) -> bool:
    retry = status.retry
    if retry is None or retry.inputs != inputs:
        return False
    due = parse_time(retry.not_before)
    return due is not None and now < due - RETRY_SLACK


def retry_record(status: Status, inputs: str, failure: Failure, now: datetime.datetime) -> dict[str, Any]:
    """The ``status.retry`` of a failure: attempts count up while the inputs stay the same."""
    old = status.retry
    attempts = old.attempts + 1 if old is not None and old.inputs == inputs else 1
    delay = min(RETRY_BASE * 2 ** min(attempts - 1, 16), RETRY_MAX)
    return {"inputs": inputs, "attempts": attempts, "notBefore": rfc3339(now + delay),
            "temporary": failure.temporary}


# -- status ----------------------------------------------------------------------------------------
def failed_status(dt: DockerToken, raw: Mapping[str, Any], failure: Failure, inputs: str,
                  now: datetime.datetime) -> dict[str, Any]:
    """Status after a failure: Ready=False, the message, the retry record, no lease left."""
    st = dict(raw)
    st["message"] = failure.message
    st["observedGeneration"] = dt.generation
    st["retry"] = retry_record(dt.status, inputs, failure, now)
    if lease_state(dt.status.creation, now) is not Lease.FRESH:
        st["creation"] = None
    st["conditions"] = conditions.set_ready(
        st.get("conditions") or [], ready=False, reason=failure.reason, message=failure.message,
        generation=dt.generation, now=rfc3339(now))
    return st


def ready_status(dt: DockerToken, raw: Mapping[str, Any], *, replaced: str,
                 now: datetime.datetime, note: str = "") -> tuple[dict[str, Any], str, str]:
    """Status after a successful pass, and the Ready (reason, message)."""
    st = dict(raw)
    if st.get("uuid"):
        st["existInQuay"] = True
    st["message"] = ""
    st["observedGeneration"] = dt.generation
    st["retry"] = None
    # a lease is freed by its holder, which may be POSTing right now; drop only an abandoned one
    if lease_state(Status.from_object(st).creation, now) is Lease.STALE:
        st["creation"] = None
    old = dt.status.condition(conditions.READY)
    if replaced:
        reason, message = conditions.TOKEN_REPLACED, replaced
    elif old is not None and old.get("status") == "True" and old.get("reason") == conditions.TOKEN_REPLACED:
        reason, message = conditions.TOKEN_REPLACED, str(old.get("message", ""))
    else:
        reason, message = conditions.TOKEN_READY, ""
    message = replaced or note or message
    st["conditions"] = conditions.set_ready(
        st.get("conditions") or [], ready=True, reason=reason, message=message,
        generation=dt.generation, now=rfc3339(now))
    return st, reason, message


def recorded(dt: DockerToken, token: Token, pending: Iterable[str], *, revoke_old: bool,
             grace_until: str = "") -> dict[str, Any]:
    """What is written the moment a token is obtained, before anything else can fail.

    ``grace_until``: a rotation's old token keeps working until then (pulls in flight).
    """
    old = dt.status.uuid
    keep = [u for u in pending if u not in (token.uuid, old)]
    if revoke_old and old and old != token.uuid:
        keep.append(old)  # revoked once the Secret holds the new one
    return {"uuid": token.uuid, "tokenName": dt.title, "expiration": token.expiration or None,
            "existInQuay": True, "creation": None, "pendingRevocation": keep or None,
            "revokeAfter": (grace_until or dt.status.revoke_after or None) if keep else None,
            **renewal_fields(dt, token)}


def revocation_due(status: Mapping[str, Any], now: datetime.datetime) -> bool:
    """Whether pendingRevocation may be revoked now (a rotation's grace period is over)."""
    after = parse_time(str(status.get("revokeAfter") or ""))
    return after is None or after <= now


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch turning ``current`` status into ``desired``; empty when equal."""
    patch: dict[str, Any] = {}
    for key in set(current) | set(desired):
        want = desired.get(key)
        if current.get(key) != want:
            patch[key] = want  # None removes the key
    return patch


# -- time -------------------------------------------------------------------------------------------
def rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime.datetime | None:
    """Quay's RFC 2822 dates (``-0000``) or our RFC 3339 ones; None when absent or unparsable."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def is_expired(expiration: str, now: datetime.datetime) -> bool:
    when = parse_time(expiration)
    return when is not None and when <= now


# -- the creation lease and adoption --------------------------------------------------------------
def lease_state(creation: Creation | None, now: datetime.datetime) -> Lease:
    if creation is None:
        return Lease.NONE
    since = parse_time(creation.since)
    if since is None or now - since >= LEASE_TTL:
        return Lease.STALE
    return Lease.FRESH


def claim_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of another DockerToken the claim and lease rules read; keeps a list of thousands
    of objects small in memory (managedFields and spec are dropped)."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    return {
        "metadata": {k: meta.get(k) for k in ("uid", "namespace", "name")},
        "status": {k: status[k] for k in ("uuid", "pendingRevocation", "creation") if k in status},
    }


def claimed_uuids(objects: Iterable[Mapping[str, Any]], *, except_uid: str) -> set[str]:
    """UUIDs other DockerTokens track (or are about to revoke): never adopt or revoke those."""
    out: set[str] = set()
    for obj in objects:
        if (obj.get("metadata") or {}).get("uid") == except_uid:
            continue
        st = Status.from_object(obj.get("status"))
        out.update(u for u in (st.uuid, *st.pending_revocation) if u)
    return out


def _rivals(objects: Iterable[Mapping[str, Any]], dt: DockerToken, ours: Creation,
            now: datetime.datetime) -> Iterator[tuple[bool, str]]:
    """(is older than ours, namespace/name) of every other fresh lease on the same title."""
    mine = (ours.since, dt.uid)
    for obj in objects:
        meta = obj.get("metadata") or {}
        if meta.get("uid") == dt.uid:
            continue
        other = Status.from_object(obj.get("status")).creation
        if other is None or other.title != ours.title or lease_state(other, now) is not Lease.FRESH:
            continue
        yield (other.since, str(meta.get("uid"))) < mine, f"{meta.get('namespace')}/{meta.get('name')}"


def yields_to(objects: Iterable[Mapping[str, Any]], dt: DockerToken, ours: Creation,
              now: datetime.datetime) -> str:
    """Name of another DockerToken creating a same-title token first, or "" if we go ahead.

    Both sides take their lease before looking, so at least one sees the other; the older
    (since, uid) lease wins, so they never both back off or both go.
    """
    return next((name for older, name in _rivals(objects, dt, ours, now) if older), "")


def waits_for(objects: Iterable[Mapping[str, Any]], dt: DockerToken, ours: Creation,
              now: datetime.datetime) -> str:
    """Name of another DockerToken with a younger fresh lease on the same title, or "".

    The younger side yields once it sees us, but it may have looked before our lease landed
    (clocks differ between pods, and ``since`` has one-second resolution): then it is POSTing
    now and its token is not claimed yet. The older side must wait for it to record its token
    before looking for one to adopt, or both objects would own the same token.
    """
    return next((name for older, name in _rivals(objects, dt, ours, now) if not older), "")


def pick_adoptable(tokens: Iterable[Token], *, title: str, claimed: set[str],
                   now: datetime.datetime) -> Token | None:
    """The newest unexpired token with this title that no other DockerToken claims."""
    candidates = [
        t for t in tokens
        if t.title == title and t.uuid not in claimed and not is_expired(t.expiration, now)
    ]
    candidates.sort(key=lambda t: parse_time(t.created) or datetime.datetime.min.replace(
        tzinfo=datetime.UTC))
    return candidates[-1] if candidates else None


def revocable(tokens: Iterable[Token], *, title: str, claimed: set[str]) -> list[str]:
    """Deleting an object adopted from the old operator (no UUID): its documented behaviour is to
    revoke every token with its title; we spare those another DockerToken tracks."""
    return [t.uuid for t in tokens if t.title == title and t.uuid not in claimed]
