"""Fault injection per endpoint name, consumed by ``server.py`` before (or after) the operation.

Per request at most one of hang, drop or status is consumed, in that order; ``delay`` applies
to every request of the endpoint until :meth:`Faults.clear`. The endpoint ``"*"`` matches all.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class _Armed:
    statuses: deque[int] = field(default_factory=deque)
    delay: float = 0.0
    drops: int = 0
    hang: float = 0.0
    hangs: int = 0
    after: int = 0


@dataclass(frozen=True)
class Plan:
    """What to do with one request."""

    delay: float = 0.0
    hang: float | None = None
    drop: bool = False
    status: int | None = None
    drop_after: bool = False


class Faults:
    """Thread-safe fault table; see ``QuaySimulator.inject`` for the meaning of each mode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[str, _Armed] = {}

    def inject(self, endpoint: str, *, statuses: Iterable[int] = (), delay: float | None = None,
               drop: int = 0, hang: float | None = None, times: int = 1,
               after: int = 0) -> None:
        with self._lock:
            armed = self._armed.setdefault(endpoint, _Armed())
            armed.statuses.extend(statuses)
            if delay is not None:
                armed.delay = delay
            armed.drops += drop
            if hang is not None:
                armed.hang, armed.hangs = hang, armed.hangs + times
            armed.after += int(after)

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def take(self, endpoint: str) -> Plan:
        with self._lock:
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
