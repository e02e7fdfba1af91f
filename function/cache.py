"""A short-lived, per-process cache of Quay token lists, one entry per connection.

A full resync sends one event per DockerToken; without this, checking that each token still
exists costs one Quay call per object (~255 ms of Quay CPU each with an OAuth token). With it,
the events of one resync run (its wave id) that share a connection Secret share one list call
(single flight), and a bulk creation on one connection costs one list plus one POST per token.

Why a stale entry is harmless (docs: README "Design notes"): it is used to confirm that a
recorded token is still there (a token missing from it is confirmed with a GET before anything
is replaced) and to find an unclaimed token to adopt (a token created by another process
since is either recorded in its DockerToken's status, so never needed from the list, or an
orphan whose creator died at least LEASE_TTL ago, longer than TTL_SECONDS plus a Quay timeout,
so it is in any entry young enough to be used; and an object for which a token may exist that
an entry has not seen lists afresh: one of the original operator, a stale lease, a failed attempt
(``decide.fresh_list_needed``). A token made by hand for a brand-new object is seen once the
entry is renewed, within TTL_SECONDS). This process keeps its entries current with what it
creates and revokes itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from function.model import Token

# Long enough to cover one resync wave, short enough that revocations show up on the next one.
TTL_SECONDS = 60.0


class TokenListCache:
    """Thread-safe; ``get`` calls ``fetch`` at most once per key per TTL, even when called concurrently."""

    def __init__(self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, str, dict[str, Token]]] = {}
        self._key_locks: dict[str, threading.Lock] = {}

    def get(self, key: str, fetch: Callable[[], list[Token]], *, wave: str = "",
            fresh: bool = False) -> Mapping[str, Token]:
        """The tokens by UUID; a copy, so callers never see another thread's update half-made.

        With ``wave`` (a resync run's id), only a list fetched for that same run will do: a
        resync confirms tokens against Quay as it is now, not as a creation saw it a minute ago.
        ``fresh`` always fetches (and keeps the result for the others).
        """
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._live(key)
                if entry is not None and not fresh and (not wave or self._entries[key][1] == wave):
                    return dict(entry)
            tokens = {t.uuid: t for t in fetch()}
            with self._lock:
                self._entries[key] = (self._clock(), wave, tokens)
            return dict(tokens)

    def add(self, key: str, token: Token) -> None:
        """This process created (or adopted) ``token``: keep the entry, with it (codes are not kept)."""
        with self._lock:
            entry = self._live(key)
            if entry is not None:
                entry[token.uuid] = Token(token.uuid, token.title, token.created, token.expiration,
                                          token.last_accessed)

    def discard(self, key: str, uuid: str) -> None:
        """This process revoked ``uuid`` (or Quay said it is gone)."""
        with self._lock:
            entry = self._live(key)
            if entry is not None:
                entry.pop(uuid, None)

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def _live(self, key: str) -> dict[str, Token] | None:
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry[0] >= self._ttl:
            return None
        return entry[2]
