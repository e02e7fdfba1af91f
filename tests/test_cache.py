"""function.cache.TokenListCache: one Quay list call per connection per TTL, shared by concurrent
events (single flight), dropped on invalidation. The clock is injected; no test sleeps."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import pytest

from function.cache import TTL_SECONDS, TokenListCache
from function.model import Token as Listed

WAIT = 10.0  # seconds a test waits for a thread before calling it stuck


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Quay:
    """A list endpoint that counts its calls and answers the current tokens."""

    def __init__(self, *uuids: str) -> None:
        self.uuids = list(uuids)
        self.calls = 0

    def fetch(self) -> list[Listed]:
        self.calls += 1
        return [Listed(u, f"title-{u}", "created", "", "") for u in self.uuids]


def test_a_second_get_within_the_ttl_is_served_without_calling_quay() -> None:
    clock, quay = Clock(), Quay("a", "b")
    cache = TokenListCache(ttl=60, clock=clock)
    first = cache.get("conn", quay.fetch)
    assert set(first) == {"a", "b"} and first["a"].title == "title-a"
    quay.uuids.append("c")  # Quay changed; the cache does not know yet
    clock.now += 59.9
    assert set(cache.get("conn", quay.fetch)) == {"a", "b"}
    assert quay.calls == 1


def test_an_entry_expires_after_the_ttl() -> None:
    clock, quay = Clock(), Quay("a")
    cache = TokenListCache(ttl=60, clock=clock)
    cache.get("conn", quay.fetch)
    quay.uuids = ["b"]
    clock.now += 60
    assert set(cache.get("conn", quay.fetch)) == {"b"}
    assert quay.calls == 2
    clock.now += 30  # the new entry lives from its own fetch
    assert set(cache.get("conn", quay.fetch)) == {"b"} and quay.calls == 2


def test_the_ttl_counts_from_when_the_list_arrived() -> None:
    clock, quay = Clock(), Quay("a")
    cache = TokenListCache(ttl=60, clock=clock)

    def slow_fetch() -> list[Listed]:
        clock.now += 45  # a slow Quay: the answer is 45 s old only once it has arrived
        return quay.fetch()

    cache.get("conn", slow_fetch)
    clock.now += 59
    cache.get("conn", slow_fetch)
    assert quay.calls == 1


def test_the_default_ttl_covers_a_resync_wave_and_no_more() -> None:
    clock, quay = Clock(), Quay("a")
    cache = TokenListCache(clock=clock)
    cache.get("conn", quay.fetch)
    clock.now += TTL_SECONDS - 1
    cache.get("conn", quay.fetch)
    assert quay.calls == 1
    clock.now += 1
    cache.get("conn", quay.fetch)
    assert quay.calls == 2


def test_invalidate_drops_only_that_connection() -> None:
    clock, one, two = Clock(), Quay("a"), Quay("x")
    cache = TokenListCache(ttl=60, clock=clock)
    cache.get("one", one.fetch)
    cache.get("two", two.fetch)
    one.uuids.append("b")  # this process created a token through connection "one"
    cache.invalidate("one")
    assert set(cache.get("one", one.fetch)) == {"a", "b"} and one.calls == 2
    assert set(cache.get("two", two.fetch)) == {"x"} and two.calls == 1
    cache.invalidate("never-listed")  # nothing to drop is not an error


def test_connections_do_not_share_entries() -> None:
    clock, one, two = Clock(), Quay("a"), Quay("x")
    cache = TokenListCache(ttl=60, clock=clock)
    assert set(cache.get("one", one.fetch)) == {"a"}
    assert set(cache.get("two", two.fetch)) == {"x"}
    assert (one.calls, two.calls) == (1, 1)


def test_a_failed_list_is_not_remembered() -> None:
    clock, quay = Clock(), Quay("a")
    cache = TokenListCache(ttl=60, clock=clock)

    def failing() -> list[Listed]:
        raise ConnectionError("Quay is down")

    with pytest.raises(ConnectionError):
        cache.get("conn", failing)
    assert set(cache.get("conn", quay.fetch)) == {"a"} and quay.calls == 1


# -- single flight ------------------------------------------------------------------------------

class CountingLock:
    """The per-connection lock of a cache, counting the threads that have reached it: the proof
    that a latecomer waits inside ``get`` comes from the lock, not from timing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition()
        self.arrivals = 0

    def __enter__(self) -> None:
        with self._arrived:
            self.arrivals += 1
            self._arrived.notify_all()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def wait_for(self, arrivals: int) -> bool:
        with self._arrived:
            return self._arrived.wait_for(lambda: self.arrivals >= arrivals, WAIT)


def test_concurrent_gets_for_one_connection_share_one_list_call() -> None:
    quay = Quay("a", "b")
    cache = TokenListCache(ttl=60, clock=Clock())
    lock = CountingLock()
    cache._key_locks["conn"] = lock  # type: ignore[assignment]
    entered, release = threading.Event(), threading.Event()

    def blocking_fetch() -> list[Listed]:
        entered.set()
        assert release.wait(WAIT)
        return quay.fetch()

    results: list[Mapping[str, Listed]] = []
    first = threading.Thread(target=lambda: results.append(cache.get("conn", blocking_fetch)))
    first.start()
    assert entered.wait(WAIT)
    # The first list call is in flight; nine more events for the same connection arrive.
    others = [threading.Thread(target=lambda: results.append(cache.get("conn", blocking_fetch)))
              for _ in range(9)]
    for thread in others:
        thread.start()
    # Proof of the interleaving: every latecomer is inside get before the first list returns
    # (without single flight each would be in a fetch of its own, and Quay would count ten calls).
    assert lock.wait_for(10), f"only {lock.arrivals} of 10 reached the connection's lock"
    assert quay.calls == 0 and not results
    release.set()
    for thread in (first, *others):
        thread.join(WAIT)
    assert len(results) == 10 and quay.calls == 1
    assert all(set(r) == {"a", "b"} for r in results)


def test_a_slow_list_for_one_connection_does_not_hold_up_another() -> None:
    slow, fast = Quay("a"), Quay("x")
    cache = TokenListCache(ttl=60, clock=Clock())
    entered, release = threading.Event(), threading.Event()

    def blocking_fetch() -> list[Listed]:
        entered.set()
        assert release.wait(WAIT)
        return slow.fetch()

    thread = threading.Thread(target=cache.get, args=("slow", blocking_fetch))
    thread.start()
    try:
        assert entered.wait(WAIT)
        assert set(cache.get("fast", fast.fetch)) == {"x"}  # served while "slow" is in flight
        assert slow.calls == 0 and thread.is_alive()
    finally:
        release.set()
        thread.join(WAIT)
    assert slow.calls == 1
