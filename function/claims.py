"""Who may claim which Quay token, and the creation lease's rules. Pure functions, no clock.

Used by ``decide.py`` (the claim labels, deletion by title) and ``creation.py`` (the lease and
the rivals, adopt-or-create). A token is claimed by the DockerToken whose status tracks it or
awaits revoking it; one no DockerToken claims may be adopted (or, by an object migrated from
the old operator, revoked on deletion).
"""

from __future__ import annotations

import datetime
import enum
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from function.model import CLAIM_LABEL_PREFIX, Creation, DockerToken, Status, Token
from function.renewal import is_expired, parse_time

# A creation lease older than this is abandoned (its holder died between POST and recording
# the UUID). Far above the longest Quay call a holder can make (timeout <= 60 s in practice).
LEASE_TTL = datetime.timedelta(seconds=120)


class Lease(enum.StrEnum):
    NONE = "none"
    FRESH = "fresh"
    STALE = "stale"


def claim_label(registry: str, title: str) -> str:
    """The label of the objects that may claim tokens titled ``title`` on this Quay (hashed: no
    title in clear). The Quay account is not in it (with an OAuth token only another Quay call
    would tell it), so objects of other accounts with that title on that Quay are read too; their
    leases carry another ``account`` and are ignored (:func:`yields_to`, :func:`waits_for`)."""
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


def lease_state(creation: Creation | None, now: datetime.datetime) -> Lease:
    if creation is None:
        return Lease.NONE
    since = parse_time(creation.since)
    if since is None or now - since >= LEASE_TTL:
        return Lease.STALE
    return Lease.FRESH


def fresh_list_needed(status: Status, now: datetime.datetime) -> bool:
    """Whether a token may already exist in Quay for this object, unseen by a cached list: one
    the original operator made (existInQuay, no UUID), one a holder that died may have made (a
    stale lease), or one a failed attempt may have made (a POST whose answer was lost). A
    brand-new object keeps the cached list: N creations on a connection cost N POSTs and 1 list."""
    return (status.retry is not None or (status.exist_in_quay and not status.uuid)
            or lease_state(status.creation, now) is Lease.STALE)


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
        if other.account and ours.account and other.account != ours.account:
            continue  # another Quay account: its tokens are not ours to adopt, it cannot make us wait
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
