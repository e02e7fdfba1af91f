"""A short-lived, per-process cache of Quay token lists, one entry per connection.

A full resync sends one event per DockerToken; without this, checking that each token still
exists costs one Quay call per object (~255 ms of Quay CPU each with an OAuth token). With it,
the events of one resync that share a connection Secret share one list call (single flight).

Why a stale entry is harmless: it is only used to *confirm* that a recorded token is still
there. A token missing from a cached list is confirmed with a GET before anything is replaced,
and every create or revoke made by this process drops the entry of its connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Long enough to cover one resync wave, short enough that revocations show up on the next one.
TTL_SECONDS = 60.0


@dataclass(frozen=True)
class Listed:
    """What the list endpoint says about one token (it never returns the code)."""

    uuid: str
    title: str
    created: str
    expiration: str
    last_accessed: str


class TokenListCache:
    """Thread-safe; ``get`` calls ``fetch`` at most once per key per TTL, even when called concurrently."""

    def __init__(self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, dict[str, Listed]]] = {}
        self._key_locks: dict[str, threading.Lock] = {}

    def get(self, key: str, fetch: Callable[[], list[Listed]]) -> dict[str, Listed]:
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._entries.get(key)
                if entry and self._clock() - entry[0] < self._ttl:
                    return entry[1]
            tokens = {t.uuid: t for t in fetch()}
            with self._lock:
                self._entries[key] = (self._clock(), tokens)
            return tokens

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)
