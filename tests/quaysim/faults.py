"""Fault injection per endpoint name, consumed by ``server.py`` before (or after) the operation.

Per request at most one of hang, drop or status is consumed, in that order; ``delay`` applies
to every request of the endpoint until :meth:`Faults.clear`. The endpoint ``"*"`` matches all.

A hold is taken on top of that: the request waits, counted as held, until the test releases
it (:meth:`Faults.release`), then goes on with the rest of its plan. A test uses it to act while
a request is certainly in flight: :meth:`Faults.wait_held` returns once one is being held.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace


@dataclass
class _Armed:
    statuses: deque[int] = field(default_factory=deque)
    delay: float = 0.0
    drops: int = 0
    hang: float = 0.0
    hangs: int = 0
    after: int = 0
    holds: int = 0


@dataclass(frozen=True)
class Plan:
    """What to do with one request."""

    delay: float = 0.0
    hang: float | None = None
    drop: bool = False
    status: int | None = None
    drop_after: bool = False
    hold: bool = False


@dataclass(eq=False)
class _Held:
    endpoint: str
    released: bool = False


class Faults:
    """Thread-safe fault table; see ``QuaySimulator.inject`` for the meaning of each mode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._armed: dict[str, _Armed] = {}
        self._held: list[_Held] = []

    def inject(self, endpoint: str, *, statuses: Iterable[int] = (), delay: float | None = None,
               drop: int = 0, hang: float | None = None, times: int = 1,
               after: int = 0, hold: bool = False) -> None:
        with self._lock:
            armed = self._armed.setdefault(endpoint, _Armed())
            armed.statuses.extend(statuses)
            if delay is not None:
                armed.delay = delay
            armed.drops += drop
            if hang is not None:
                armed.hang, armed.hangs = hang, armed.hangs + times
            armed.after += int(after)
            if hold:
                armed.holds += times

    def clear(self) -> None:
        """Disarm everything, and let every held request go on."""
        with self._changed:
            self._armed.clear()
            self._release("*")

    def take(self, endpoint: str) -> Plan:
        with self._lock:
            hold = False
            for name in (endpoint, "*"):
                armed = self._armed.get(name)
                if armed is not None and armed.holds:
                    armed.holds -= 1
                    hold = True
                    break
            return replace(self._take(endpoint), hold=hold)

    def _take(self, endpoint: str) -> Plan:
        delay = 0.0
        for name in (endpoint, "*"):
            armed = self._armed.get(name)
            if armed is None:
                continue
            delay += armed.delay
            if armed.hangs:
                armed.hangs -= 1
                return Plan(delay=delay, hang=armed.hang)
            if armed.drops:
                armed.drops -= 1
                return Plan(delay=delay, drop=True)
            if armed.statuses:
                return Plan(delay=delay, status=armed.statuses.popleft())
            if armed.after:
                armed.after -= 1
                return Plan(delay=delay, drop_after=True)
        return Plan(delay=delay)

    # -- holds ------------------------------------------------------------------------------------

    def hold(self, endpoint: str, stopping: threading.Event) -> None:
        """Block the calling request (of ``endpoint``) until it is released or the server stops."""
        held = _Held(endpoint)
        with self._changed:
            self._held.append(held)
            self._changed.notify_all()
            try:
                while not held.released and not stopping.is_set():
                    self._changed.wait(0.1)
            finally:
                self._held.remove(held)
                self._changed.notify_all()

    def held(self, endpoint: str = "*") -> int:
        """How many requests of ``endpoint`` (any with ``"*"``) are being held now."""
        with self._lock:
            return self._count(endpoint)

    def wait_held(self, endpoint: str = "*", count: int = 1, timeout: float = 10.0) -> None:
        """Return once ``count`` requests of ``endpoint`` are being held; TimeoutError if not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._count(endpoint) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    held = sorted(h.endpoint for h in self._held if not h.released)
                    raise TimeoutError(f"{count} {endpoint!r} request(s) not held within "
                                       f"{timeout:g} s; held now: {held or 'none'}")
                self._changed.wait(left)

    def release(self, endpoint: str = "*") -> int:
        """Let the held requests of ``endpoint`` (all with ``"*"``) go on; returns how many.

        Holds armed but not yet taken stay armed."""
        with self._changed:
            return self._release(endpoint)

    def _release(self, endpoint: str) -> int:
        released = 0
        for held in self._held:
            if not held.released and endpoint in ("*", held.endpoint):
                held.released = True
                released += 1
        self._changed.notify_all()
        return released

    def _count(self, endpoint: str) -> int:
        return sum(1 for h in self._held if not h.released and endpoint in ("*", h.endpoint))
