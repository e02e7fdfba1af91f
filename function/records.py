"""What a pass records in status: after success, after a failure (with its retry schedule), the
moment a token is obtained, and the creation lease. Pure functions of the typed ``model.Status``;
``decide.py`` and ``creation.py`` call them, ``model.Status.merge_patch`` writes the difference.
"""

from __future__ import annotations

import datetime

from function import claims, conditions, renewal
from function.claims import Lease
from function.model import Creation, DockerToken, Retry, Status, Token
from function.renewal import parse_time, rfc3339
from function.result import Failure

# Failure retry schedule: the first retry is due 5 minutes after the failure (so the next
# resync of the default 10-minute schedule makes it), then 10, 20, 40 min ... up to 6 hours.
RETRY_BASE = datetime.timedelta(minutes=5)
RETRY_MAX = datetime.timedelta(hours=6)
# A resync that arrives this much before the retry time still retries (CronJob start jitter).
RETRY_SLACK = datetime.timedelta(minutes=1)


def token_times(token: Token) -> dict[str, str]:
    """The token's dates as RFC 3339 (``status.expiration`` keeps Quay's RFC 2822 text): what
    metrics, alerts and ``kubectl dockertoken status`` read; "" for a date Quay does not give."""
    return {field: rfc3339(when) if (when := parse_time(value)) is not None else ""
            for field, value in (("created_time", token.created), ("expiration_time", token.expiration),
                                 ("last_accessed_time", token.last_accessed))}


def renewal_time(dt: DockerToken, token: Token) -> str:
    """``status.renewalTime`` for ``token`` ("" when it does not expire)."""
    at = renewal.renewal_time(parse_time(token.created), parse_time(token.expiration), renew_before(dt))
    return rfc3339(at) if at is not None else ""


def renewal_note(dt: DockerToken, token: Token | None, resync_period: datetime.timedelta) -> str:
    """The Ready message when ``token`` may expire before a resync comes to rotate it; "" if fine."""
    if token is None:
        return ""
    return renewal.resync_window_problem(parse_time(token.created), parse_time(token.expiration),
                                         renew_before(dt), resync_period) or ""


def renew_before(dt: DockerToken) -> datetime.timedelta | None:
    """spec.renewBefore, parsed (ConfigError naming the field); None when unset."""
    return renewal.parse_duration(dt.renew_before) if dt.renew_before else None


def retry_record(status: Status, inputs: str, failure: Failure, now: datetime.datetime) -> Retry:
    """The ``status.retry`` of a failure: attempts count up while the inputs stay the same."""
    old = status.retry
    attempts = old.attempts + 1 if old is not None and old.inputs == inputs else 1
    delay = min(RETRY_BASE * 2 ** min(attempts - 1, 16), RETRY_MAX)
    return Retry(inputs, attempts, rfc3339(now + delay), failure.temporary)


def failed_status(dt: DockerToken, status: Status, failure: Failure, inputs: str,
                  now: datetime.datetime) -> Status:
    """Status after a failure: Ready=False, the message, the retry record, no abandoned lease."""
    st = status.with_(message=failure.message, observed_generation=dt.generation,
                      retry=retry_record(dt.status, inputs, failure, now))
    if claims.lease_state(dt.status.creation, now) is not Lease.FRESH:
        st = st.with_(creation=None)
    return st.with_(conditions=tuple(conditions.set_ready(
        st.conditions, ready=False, reason=failure.reason, message=failure.message,
        generation=dt.generation, now=rfc3339(now))))


def ready_status(dt: DockerToken, status: Status, *, replaced: str, now: datetime.datetime,
                 note: str = "") -> tuple[Status, str, str]:
    """Status after a successful pass, and the Ready (reason, message)."""
    st = status.with_(exist_in_quay=status.exist_in_quay or bool(status.uuid), message="",
                      observed_generation=dt.generation, retry=None)
    # a lease is freed by its holder, which may be POSTing right now; drop only an abandoned one
    if claims.lease_state(st.creation, now) is Lease.STALE:
        st = st.with_(creation=None)
    old = dt.status.condition(conditions.READY)
    if replaced:
        reason, message = conditions.TOKEN_REPLACED, replaced
    elif old is not None and old.get("status") == "True" and old.get("reason") == conditions.TOKEN_REPLACED:
        reason, message = conditions.TOKEN_REPLACED, str(old.get("message", ""))
    else:
        reason, message = conditions.TOKEN_READY, ""
    message = replaced or note or message
    st = st.with_(conditions=tuple(conditions.set_ready(
        st.conditions, ready=True, reason=reason, message=message, generation=dt.generation,
        now=rfc3339(now))))
    return st, reason, message


def recorded(status: Status, dt: DockerToken, token: Token, *, revoke_old: bool,
             grace_until: str = "") -> Status:
    """What is written the moment a token is obtained, before anything else can fail: the token,
    no lease, and the old token to revoke once the Secret holds the new one (after
    ``grace_until``, a rotation's grace for pulls in flight)."""
    old = dt.status.uuid
    keep = [u for u in status.pending_revocation if u not in (token.uuid, old)]
    if revoke_old and old and old != token.uuid:
        keep.append(old)
    return status.with_(uuid=token.uuid, token_name=dt.title, expiration=token.expiration,
                        exist_in_quay=True, creation=None, pending_revocation=tuple(keep),
                        revoke_after=(grace_until or dt.status.revoke_after) if keep else "",
                        renewal_time=renewal_time(dt, token), renew_request=dt.renew_request,
                        **token_times(token))


def revocation_due(revoke_after: str, now: datetime.datetime) -> bool:
    """Whether pendingRevocation may be revoked now (a rotation's grace period is over)."""
    after = parse_time(revoke_after)
    return after is None or after <= now


def lease(dt: DockerToken, *, id_: str, now: datetime.datetime, account: str) -> Creation:
    """The creation lease a pass of ``dt`` takes at ``now`` with the Quay ``account``
    (``Connection.account``): leases of other accounts never make it yield or wait."""
    return Creation(id=id_, title=dt.title, since=rfc3339(now), account=account)
