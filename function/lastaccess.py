"""When Quay's ``lastAccessed`` is worth a pull Secret write: at most once per interval.

The pull Secret carries the token's ``lastAccessed`` (a key of the original operator's Secret).
Quay moves it on every pull, so copying it whenever it changed rewrote the Secret of every token
in use at every resync (N writes per resync with every token pulling), and the function's own
registry check right after a creation moved it too, so the next resync rewrote the Secret it had
just written. The rule here: the Secret's value is replaced only when Quay's is at least
``LAST_ACCESSED_REFRESH`` (a day by default) later than it, or than the token's creation while
the Secret holds none; the self-check, seconds after the creation, never qualifies.
"""

from __future__ import annotations

import datetime
import email.utils
import os

from function import renewal

ENV = "LAST_ACCESSED_REFRESH"
DEFAULT = datetime.timedelta(hours=24)


def interval_from_env(value: str | None = None) -> datetime.timedelta:
    """``LAST_ACCESSED_REFRESH`` (a duration such as ``24h`` or ``30m``); ConfigError naming it."""
    raw = os.environ.get(ENV, "") if value is None else value
    return renewal.parse_duration(raw, ENV) if raw.strip() else DEFAULT


INTERVAL = interval_from_env()


def to_record(held: str, listed: str, created: str,
              interval: datetime.timedelta = INTERVAL) -> str:
    """The ``lastAccessed`` the Secret should hold, given the one it holds and Quay's (``listed``)."""
    new = _parse(listed)
    if new is None:
        return held
    base = _parse(held) or _parse(created)
    return listed if base is None or new - base >= interval else held


def _parse(value: str) -> datetime.datetime | None:
    """Quay's RFC 2822 dates; None when absent or unparsable."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)
