"""The fleet audit's decisions, pure: which Quay token is whose, which are orphans, which to revoke.

``audit.py`` lists the DockerTokens (once) and each connection's tokens (once per connection);
these functions classify what it found. No I/O and no clock: ``now`` is a parameter.

A token is *tracked* when a DockerToken records its UUID (``status.uuid``), *pending* when one
is to revoke it (``status.pendingRevocation``), *adoptable* when a DockerToken that has no token
yet (or is creating one) may adopt it by title, and an *orphan* otherwise: made by hand, left by
the original operator, or left by an object whose finalizer was removed. UUIDs are unique across
Quay, so a token tracked by any DockerToken of the cluster is never an orphan, whatever the
connection Secret it was made through. Only orphans can be revoked (:func:`revocable`).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from function.claims import LEASE_TTL, Lease, lease_state
from function.errors import ConfigError
from function.model import DockerToken, Ref, Token
from function.renewal import is_expired, parse_time, rfc3339

TRACKED, PENDING, ADOPTABLE, ORPHAN = "tracked", "pending", "adoptable", "orphan"
_AGE = re.compile(r"^([0-9]+)(d|h|m)$")
_AGE_UNITS = {"d": 86400, "h": 3600, "m": 60}


@dataclass(frozen=True)
class Claim:
    """What one DockerToken says about Quay tokens."""

    owner: str                      # namespace/name
    conn: Ref                       # its connection Secret
    uuid: str                       # status.uuid
    pending: tuple[str, ...]        # status.pendingRevocation
    revoke_after: str               # when pending ones are revoked
    adopts: str                     # the title it may adopt a token of ("" when it has a token)

    @classmethod
    def of(cls, obj: Mapping[str, Any], now: datetime.datetime) -> Claim:
        dt = DockerToken.from_object(obj)
        st = dt.status
        # no token yet, a creation in flight, or adopted from the old operator (no UUID, whose
        # deletion revokes by title): tokens with its title are its to take
        creating = lease_state(st.creation, now) is Lease.FRESH
        adopts = dt.title if (not st.uuid or creating) else ""
        return cls(f"{dt.namespace}/{dt.name}", dt.conn_secret, st.uuid, st.pending_revocation,
                   st.revoke_after, adopts)


@dataclass(frozen=True)
class Row:
    """One Quay token, as the audit reports it. Dates RFC 3339, "" when Quay has none."""

    state: str        # tracked | pending | adoptable | orphan
    uuid: str
    title: str
    created: str
    expiration: str
    last_accessed: str
    owner: str        # namespace/name of the DockerToken (tracked, pending, adoptable), else ""
    expired: bool
    unused_days: int | None  # days without use (since creation when never used), if over the limit

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Missing:
    """A DockerToken whose recorded token is not in its connection's Quay list."""

    owner: str
    uuid: str


def parse_age(text: str, field: str = "--older-than") -> datetime.timedelta:
    """``30d``, ``12h`` or ``90m``; ConfigError naming ``field`` otherwise."""
    match = _AGE.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise ConfigError(f"{field}: {text!r} is not a positive age such as 30d, 12h or 90m")
    return datetime.timedelta(seconds=int(match[1]) * _AGE_UNITS[match[2]])


def claims(objects: Iterable[Mapping[str, Any]], now: datetime.datetime) -> list[Claim]:
    return [Claim.of(obj, now) for obj in objects]


def classify(tokens: Iterable[Token], every_claim: Iterable[Claim], *, now: datetime.datetime,
             unused_after: datetime.timedelta) -> list[Row]:
    """A row per token, in Quay's order; ``every_claim`` holds every DockerToken of the cluster."""
    tracked: dict[str, str] = {}
    pending: dict[str, str] = {}
    adopting: dict[str, str] = {}
    for claim in every_claim:
        if claim.uuid:
            tracked[claim.uuid] = claim.owner
        for uid in claim.pending:
            pending[uid] = claim.owner
        if claim.adopts:
            adopting.setdefault(claim.adopts, claim.owner)
    rows = []
    for t in tokens:
        if t.uuid in tracked:
            state, owner = TRACKED, tracked[t.uuid]
        elif t.uuid in pending:
            state, owner = PENDING, pending[t.uuid]
        elif t.title in adopting and not is_expired(t.expiration, now):
            state, owner = ADOPTABLE, adopting[t.title]
        else:
            state, owner = ORPHAN, ""
        rows.append(Row(state, t.uuid, t.title, _iso(t.created), _iso(t.expiration),
                        _iso(t.last_accessed), owner, is_expired(t.expiration, now),
                        _unused_days(t, now, unused_after)))
    return rows


def missing(tokens: Iterable[Token], mine: Iterable[Claim]) -> list[Missing]:
    """The DockerTokens of this connection whose token Quay no longer lists (revoked or purged);
    the next resync replaces it."""
    listed = {t.uuid for t in tokens}
    return [Missing(c.owner, c.uuid) for c in mine if c.uuid and c.uuid not in listed]


def revocable(rows: Iterable[Row], *, older_than: datetime.timedelta,
              now: datetime.datetime) -> list[Row]:
    """The orphans created more than ``older_than`` ago; a token of unknown age is kept."""
    if older_than < LEASE_TTL:
        raise ConfigError(f"--older-than: at least {int(LEASE_TTL.total_seconds() // 60)}m: a younger "
                          "token may be a creation whose DockerToken has not recorded it yet")
    out = []
    for row in rows:
        created = parse_time(row.created)
        if row.state == ORPHAN and created is not None and now - created > older_than:
            out.append(row)
    return out


def _unused_days(t: Token, now: datetime.datetime, limit: datetime.timedelta) -> int | None:
    since = parse_time(t.last_accessed) or parse_time(t.created)
    if since is None or now - since <= limit:
        return None
    return (now - since).days


def _iso(value: str) -> str:
    when = parse_time(value)
    return rfc3339(when) if when is not None else ""
