"""When Quay's ``lastAccessed`` is worth a pull Secret write: the first real use, then at most
once per interval.

The pull Secret carries the token's ``lastAccessed`` (a key of the original operator's Secret).
Quay moves it on every pull, so copying it whenever it changed rewrote the Secret of every token
in use at every resync (N writes per resync with every token pulling), and the function's own
registry check right after a creation moved it too, so the next resync rewrote the Secret it had
just written. The rule here:

* while the Secret holds no ``lastAccessed``, Quay's is recorded once it is more than
  :data:`SELF_CHECK_WINDOW` after the token's creation: the registry check is made in the pass
  that created the token, and every Quay request of a pass ends within its 60 s budget
  (``quay.PASS_BUDGET_SECONDS``), so the check never qualifies, while the first real use does,
  however short the token's life;
* once one is held, it is replaced only when Quay's is at least the interval
  (``LAST_ACCESSED_REFRESH``, a day by default; ``main.py`` reads it) later.

A use within the window is not told from the check: it shows with the next use after it.
"""

from __future__ import annotations

import datetime

from function import renewal

ENV = "LAST_ACCESSED_REFRESH"
DEFAULT = datetime.timedelta(hours=24)
#: Quay's lastAccessed this close to the token's creation may be the function's own registry
#: check (twice the pass budget of 60 s): never recorded while the Secret holds none.
SELF_CHECK_WINDOW = datetime.timedelta(minutes=2)


def parse_interval(raw: str) -> datetime.timedelta:
    """``LAST_ACCESSED_REFRESH`` as set (a duration such as ``24h`` or ``30m``; empty: the
    default); ConfigError naming it."""
    return renewal.parse_duration(raw, ENV) if raw.strip() else DEFAULT


def to_record(held: str, listed: str, created: str, interval: datetime.timedelta = DEFAULT) -> str:
    """The ``lastAccessed`` the Secret should hold, given the one it holds and Quay's (``listed``)."""
    new = renewal.parse_time(listed)
    if new is None:
        return held
    old = renewal.parse_time(held)
    if old is not None:
        return listed if new - old >= interval else held
    born = renewal.parse_time(created)
    return listed if born is None or new - born > SELF_CHECK_WINDOW else held

