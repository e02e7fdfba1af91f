"""Assertions and helpers shared by the reliability tests (issue 6).

``assert_converged`` is the one definition of "nothing duplicated, nothing leaked": Quay holds
exactly the tokens the DockerTokens reference, and each return Secret holds its object's token.

For races (issue 15), nothing is synchronised by sleeping: a test has the Quay simulator hold a
request (``inject(endpoint, hold=True)``, ``wait_held``, ``release``), runs deliveries in the
background (:class:`Background`), learns where they are from the API server's audit log
(:class:`ApiRequests`) and what each did from its log line (:func:`logged`).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import httpx

from tests import harness
from tests.env import Env, dockerconfig, wait_for

T = TypeVar("T")
RECONCILER = "system:serviceaccount:quay-system:dockertoken-reconciler"

RETRIED = (404, 413, 425, 429, 502, 503, 504)


def assert_converged(env: Env, name: str = "dockertoken-sample", *, title: str = "mytoken",
                     ret: str | None = "dockertoken-sample-ret-secret",
                     ret_namespace: str | None = None, others: int = 0) -> dict[str, Any]:
    """Ready=True, status.uuid is a live token with the right title, and the Secret holds it.

    ``others``: how many tokens other objects of the test own (they are checked by their own
    call); every token beyond those and this object's one is a leak.
    """
    obj = env.get(name)
    assert obj is not None, f"{name} is gone"
    status = obj.get("status") or {}
    ready = env.ready(name)
    assert ready.get("status") == "True", status
    assert not status.get("creation"), f"lease left behind: {status}"
    assert not status.get("pendingRevocation"), status
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    tokens = {t["uuid"]: t for t in env.tokens()}
    assert len(tokens) == 1 + others, f"leaked or missing tokens: {sorted(tokens)} vs {status}"
    token = tokens.get(status.get("uuid", ""))
    assert token is not None, f"status.uuid {status.get('uuid')} is not in Quay"
    assert token["title"] == title
    if ret is not None:
        data = env.secret_data(ret, ret_namespace)
        assert data["uuid"] == token["uuid"]
        assert data["tokenCode"] == token["token_code"]
        assert base64.b64decode(data["auth"]).decode() == f"$app:{token['token_code']}"
        assert dockerconfig(data)["auths"][env.quay.host]["auth"] == data["auth"]
    return obj


def deliver(env: Env, verb: str = "add", name: str = "dockertoken-sample", *,
            url: str | None = None, attempts: int = 6) -> httpx.Response:
    """One event delivered as ApiServerSource does (retries on 503 with backoff)."""
    obj = env.get(name) or {"apiVersion": "quay.herve4m.github.io/v1alpha1", "kind": "DockerToken",
                            "metadata": {"name": name, "namespace": env.ns}}
    return harness.deliver(url or env.fn.url, harness.apiserver_event(verb, obj), attempts=attempts)


def run_concurrently(jobs: Iterable[Callable[[], Any]]) -> list[Any]:
    """Start every job at once (a barrier), wait for all, re-raise the first failure."""
    jobs = list(jobs)
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int, job: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[i] = job()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


class Background(Generic[T]):
    """``job`` running in a thread of its own, started at once; ``result()`` waits for it."""

    def __init__(self, job: Callable[[], T]) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(job,), daemon=True)
        self._thread.start()

    def _run(self, job: Callable[[], T]) -> None:
        try:
            self._value = job()
        except BaseException as exc:  # re-raised by result(), in the test's thread
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 120) -> T:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class ApiRequests:
    """The function's API requests from now on, as the API server's audit log records them.

    The log is written in blocking mode (tests/controlplane): a request is on disk before its
    answer is sent. So a count read here is exact for what the function has been answered, and
    ``wait`` shows where a delivery is (e.g. that it has read the object again while waiting
    for a lease). Requests on this test's namespace, or cluster-wide (a labelled list).
    """

    def __init__(self, env: Env, user: str = RECONCILER) -> None:
        self._path, self._ns, self._user = env.cp.audit_log, env.ns, user
        self._offset = self._path.stat().st_size
        self.events: list[dict[str, Any]] = []

    def _read(self) -> None:
        with self._path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            if (event.get("user") or {}).get("username") == self._user \
                    and ref.get("namespace") in (self._ns, None):
                self.events.append(event)

    def count(self, verb: str, resource: str = "dockertokens", *, name: str | None = None,
              subresource: str | None = None, code: int | None = None, uri: str = "") -> int:
        """Requests with this verb on ``resource`` (``name``, ``subresource``, answer ``code``,
        ``uri`` a part of the request URI)."""
        self._read()
        found = 0
        for event in self.events:
            ref = event.get("objectRef") or {}
            if (event.get("verb"), ref.get("resource")) != (verb, resource) \
                    or (name is not None and ref.get("name") != name) \
                    or ref.get("subresource") != subresource \
                    or (code is not None and (event.get("responseStatus") or {}).get("code") != code) \
                    or uri not in event.get("requestURI", ""):
                continue
            found += 1
        return found

    def wait(self, at_least: int, verb: str, resource: str = "dockertokens", *,
             what: str, timeout: float = 20, **match: Any) -> int:
        """Wait until ``count(verb, resource, **match)`` reaches ``at_least``; returns it."""
        wait_for(lambda: self.count(verb, resource, **match) >= at_least, timeout=timeout, what=what)
        return self.count(verb, resource, **match)

    def passes(self) -> int:
        """Reconcile passes begun: each one reads the connection Secret once (observe.py)."""
        return self.count("get", "secrets", name="quay-credentials")


def event_id(event: tuple[dict[str, str], bytes]) -> str:
    return next(v for k, v in event[0].items() if k.lower() == "ce-id")


def event_type(event: tuple[dict[str, str], bytes]) -> str:
    return next(v for k, v in event[0].items() if k.lower() == "ce-type")


def logged(event: tuple[dict[str, str], bytes], *functions: harness.FunctionProcess) -> dict[str, Any]:
    """The function's log line for ``event`` (its outcome, actions, figures), from any of
    ``functions``; it is written before the answer is sent."""
    ident = event_id(event)
    for fn in functions:
        for line in fn.logs().splitlines():
            if line.startswith("{"):
                fields: dict[str, Any] = json.loads(line)
                if fields.get("id") == ident and "outcome" in fields:
                    return fields
    raise AssertionError(f"no log line for event {ident}")
