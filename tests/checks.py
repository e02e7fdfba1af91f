"""Assertions and helpers shared by the reliability tests (issue 6).

``assert_converged`` is the one definition of "nothing duplicated, nothing leaked": Quay holds
exactly the tokens the DockerTokens reference, and each return Secret holds its object's token.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from tests import harness
from tests.env import Env, dockerconfig

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


def apiserver_answers(env: Env, *, code: str, resource: str = "dockertokens") -> int:
    """How many requests on ``resource`` the API server answered with ``code`` (its own metrics)."""
    return sum(n for labels, n in env.cp.request_totals()
               if labels.get("code") == code and labels.get("resource") == resource)
