"""Figure 1: event -> Secret latency, and the direct-work and bare-function baselines.

An add event is answered only after the reconcile finished (the pull Secret and the status are
written by then), so the HTTP round trip of the event is the event -> Secret latency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from benchmarks.world import Obj, World
from function.connection import parse_connection
from function.kube import Kube, http_client, load_config
from function.pullsecret import MANAGED_BY, MANAGED_BY_LABEL, SECRET_TYPE, string_data
from function.quay import QuayClient
from tests import harness

DIRECT_USER = "benchdirect"


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    wall: float = 0.0


class Poster:
    """POSTs events over keep-alive connections (one client per thread), as ApiServerSource does."""

    total_retries = 0  # every Poster's, for the table's notes

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()
        self.retries = 0  # deliveries sent again after a broken connection

    def _client(self) -> httpx.Client:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = httpx.Client(timeout=120)
            with self._lock:
                self._clients.append(c)
        return c

    def post(self, event: tuple[dict[str, str], bytes]) -> tuple[float, int]:
        """One delivery; sent again (at most twice) when the connection breaks, as a kept-alive
        connection that gunicorn closed meanwhile does under load. The time includes the retries."""
        headers, body = event
        started = time.perf_counter()
        for attempt in range(3):
            try:
                resp = self._client().post(self.url, headers=headers, content=body)
                break
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
                if attempt == 2:
                    raise
                with self._lock:
                    self.retries += 1
                    Poster.total_retries += 1
        return time.perf_counter() - started, resp.status_code

    def close(self) -> None:
        for c in self._clients:
            c.close()


def event(verb: str, o: Obj) -> tuple[dict[str, str], bytes]:
    return harness.apiserver_event(verb, o.body())


def post_all(poster: Poster, verb: str, objs: list[Obj], concurrency: int = 1) -> Samples:
    out = Samples()

    def one(o: Obj) -> None:
        seconds, status = poster.post(event(verb, o))
        out.seconds.append(seconds)
        if not 200 <= status < 300:
            out.failures.append(f"{o.namespace}/{o.name}: HTTP {status}")

    started = time.perf_counter()
    if concurrency == 1:
        for o in objs:
            one(o)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, objs))
    out.wall = time.perf_counter() - started
    return out


class Direct:
    """The irreducible work of an add, done directly: one Quay create, one Secret create.

    Same client code the function uses (function.quay, function.kube), same identity, same
    Quay cost; no framework, no reads, no status, no adoption check, no lease.
    """

    def __init__(self, world: World) -> None:
        world.quay.add_user(DIRECT_USER)
        token = world.quay.add_oauth_token(DIRECT_USER, "user:admin")
        self.conn = parse_connection({"host": world.quay.base_url, "token": token},
                                     secret_name="direct")
        self.kube = Kube(http_client(load_config(str(world.cp.kubeconfigs["dockertoken-reconciler"]))))

    def once(self, n: int) -> float:
        started = time.perf_counter()
        with QuayClient(self.conn) as quay:
            token = quay.create_token(f"direct-{n:04d}")
        self.kube.create_secret({
            "apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
            "metadata": {"name": f"direct-{n:04d}", "namespace": "bench-direct",
                         "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
            "stringData": string_data(token, self.conn.registry),
        })
        return time.perf_counter() - started


def interleaved(first: Callable[[int], float], second: Callable[[int], float],
                n: int) -> tuple[list[float], list[float]]:
    """Alternate the two measurements so both see the same noise."""
    a, b = [], []
    for i in range(n):
        a.append(first(i))
        b.append(second(i))
    return a, b


def _timed(poster: Poster, verb: str, objs: list[Obj], ours: Samples) -> Callable[[int], float]:
    """Post ``verb`` for object i and return the round trip; a non-2xx answer is a failure."""

    def post(i: int) -> float:
        seconds, status = poster.post(event(verb, objs[i]))
        if not 200 <= status < 300:
            ours.failures.append(f"{objs[i].name}: HTTP {status}")
        return seconds

    return post


def adds_vs_direct(poster: Poster, objs: list[Obj], direct: Direct) -> tuple[Samples, list[float]]:
    ours = Samples()
    add = _timed(poster, "add", objs, ours)

    started = time.perf_counter()
    ours.seconds, base = interleaved(add, direct.once, len(objs))
    ours.wall = time.perf_counter() - started
    return ours, base


def noops_vs_bare(poster: Poster, bare: Poster, objs: list[Obj]) -> tuple[Samples, list[float]]:
    ours = Samples()
    update = _timed(poster, "update", objs, ours)

    def bare_update(i: int) -> float:
        return bare.post(event("update", objs[i]))[0]

    ours.seconds, base = interleaved(update, bare_update, len(objs))
    return ours, base
