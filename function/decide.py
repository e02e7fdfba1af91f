"""Pure decisions: no I/O, no clock (``now`` is a parameter), never the CloudEvent type.

``reconcile.py`` gathers the observed state, asks these functions what to do, and does it.
"""

from __future__ import annotations

import datetime
import email.utils
import enum
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from function.cache import Listed
from function.model import Creation, DockerToken, Status
from function.secret import TokenData

# A creation lease older than this is abandoned (its holder died between POST and recording
# the UUID). Far above the longest Quay call a holder can make (timeout <= 60 s in practice).
LEASE_TTL = datetime.timedelta(seconds=120)


class TokenPlan(enum.StrEnum):
    """How to obtain the token the Secret must hold."""

    KEEP = "keep"          # status UUID stands and the Secret holds its code: no Quay call
    VERIFY = "verify"      # as KEEP, but confirm the UUID is still listed in Quay (resync)
    FETCH = "fetch"        # status UUID stands but the Secret lost its code: GET it
    ACQUIRE = "acquire"    # no usable UUID: adopt an unclaimed same-title token, else create


class Lease(enum.StrEnum):
    NONE = "none"
    FRESH = "fresh"
    STALE = "stale"


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


def plan_token(dt: DockerToken, held: TokenData | None, *, verify: bool,
               now: datetime.datetime) -> tuple[TokenPlan, str]:
    """What to do about the token, and (for ACQUIRE) why, for the status message.

    ``held`` is the token the return Secret holds, if it is ours and matches the status UUID.
    """
    st = dt.status
    if not st.uuid:
        return TokenPlan.ACQUIRE, ""
    if st.token_name and st.token_name != dt.title:
        return TokenPlan.ACQUIRE, f"spec.name changed from {st.token_name!r}; replaced the token"
    if is_expired(st.expiration, now):
        return TokenPlan.ACQUIRE, f"token {st.uuid} expired on {st.expiration}; created a replacement"
    if dt.ret_secret is not None and held is None:
        return TokenPlan.FETCH, ""
    return (TokenPlan.VERIFY if verify else TokenPlan.KEEP), ""


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


def pick_adoptable(tokens: Iterable[Listed], *, title: str, claimed: set[str],
                   now: datetime.datetime) -> Listed | None:
    """The newest unexpired token with this title that no other DockerToken claims."""
    candidates = [
        t for t in tokens
        if t.title == title and t.uuid not in claimed and not is_expired(t.expiration, now)
    ]
    candidates.sort(key=lambda t: parse_time(t.created) or datetime.datetime.min.replace(
        tzinfo=datetime.UTC))
    return candidates[-1] if candidates else None


def revocable(tokens: Iterable[Listed], *, title: str, claimed: set[str]) -> list[str]:
    """Deleting an object adopted from the old operator (no UUID): its documented behaviour is to
    revoke every token with its title; we spare those another DockerToken tracks."""
    return [t.uuid for t in tokens if t.title == title and t.uuid not in claimed]


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch turning ``current`` status into ``desired``; empty when equal."""
    patch: dict[str, Any] = {}
    for key in set(current) | set(desired):
        want = desired.get(key)
        if current.get(key) != want:
            patch[key] = want  # None removes the key
    return patch
