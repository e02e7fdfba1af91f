"""Concurrent deliveries: the creation lease in status lets exactly one POST through.

Two function processes (two pods) share the API server and Quay, as in a cluster scaled to two.
Events are delivered the way ApiServerSource does (503 is retried with backoff).
"""

from __future__ import annotations

import datetime
import functools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from function import decide
from tests import checks, harness
from tests.controlplane import ControlPlane
from tests.env import Env, G, P, V

DELIVERIES = 16


@pytest.fixture(scope="module")
def second_proc(control_plane: ControlPlane) -> Iterator[harness.FunctionProcess]:
    """A second replica of the function, with the same identity as the first.

    It logs at DEBUG (every Quay call), which the secret-hygiene scan then covers too.
    """
    with harness.FunctionProcess(control_plane.kubeconfigs["dockertoken-reconciler"],
                                 env={"LOG_LEVEL": "DEBUG"}) as fn:
        # the first event builds the API client; pay for it here, not inside a race
        harness.post(fn.url, harness.resync_event("default", "warm-up"))
        yield fn


def _split(env: Env, second: harness.FunctionProcess, verb: str, name: str) -> list[Any]:
    urls = [env.fn.url if i % 2 == 0 else second.url for i in range(DELIVERIES)]
    return checks.run_concurrently(
        [functools.partial(checks.deliver, env, verb, name, url=url) for url in urls])


def test_sixteen_concurrent_adds_on_two_processes_create_one_token(
        env: Env, second_proc: harness.FunctionProcess) -> None:
    env.conn_secret()
    env.dockertoken()
    # a slow POST widens the window in which the other deliveries arrive
    env.quay.inject("create", delay=0.3)
    answers = _split(env, second_proc, "add", "dockertoken-sample")
    assert [r.status_code for r in answers] == [204] * DELIVERIES, [r.text for r in answers]
    assert env.quay_calls("create") == 1
    checks.assert_converged(env)


def test_concurrent_adds_after_a_revocation_replace_the_token_once(
        env: Env, second_proc: harness.FunctionProcess) -> None:
    """Resyncs and updates race on a token revoked by hand: one replacement, the old one gone."""
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    old = env.get()["status"]["uuid"]  # type: ignore[index]
    env.quay_revoke(old)
    env.quay.reset_counters()
    env.quay.inject("create", delay=0.3)
    obj = env.get()
    assert obj is not None
    events = [harness.resync_event(env.ns, "dockertoken-sample") if i % 2 else
              harness.apiserver_event("update", obj) for i in range(DELIVERIES)]
    urls = [env.fn.url, second_proc.url] * (DELIVERIES // 2)
    answers = checks.run_concurrently(
        [functools.partial(harness.deliver, u, e) for u, e in zip(urls, events, strict=True)])
    assert {r.status_code for r in answers} == {204}, [r.text for r in answers]
    # the resyncs notice the revocation; the plain updates must not clear their lease
    assert checks.deliver(env, "update").status_code == 204
    assert env.resync().status_code == 204
    assert env.quay_calls("create") == 1
    obj = checks.assert_converged(env)
    assert obj["status"]["uuid"] != old


def test_plain_update_during_a_slow_replacement_keeps_the_lease(env: Env) -> None:
    """An update that needs no token must not clear the lease a resync holds while it POSTs.

    Were the lease cleared, the second resync would take a new one and POST again: two tokens,
    and the first one, recorded then overwritten, leaked.
    """
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    env.quay_revoke(env.get()["status"]["uuid"])  # type: ignore[index]
    env.quay.reset_counters()
    env.quay.inject("create", delay=1.5)
    answers = checks.run_concurrently([
        env.resync,
        lambda: _later(0.4, lambda: env.send("update")),
        lambda: _later(0.8, env.resync),
    ])
    assert [r.status_code for r in answers] == [204] * 3, [r.text for r in answers]
    env.quay.clear_faults()
    assert env.resync().status_code == 204
    assert env.quay_calls("create") == 1
    checks.assert_converged(env)


def _later(seconds: float, job: Any) -> Any:
    time.sleep(seconds)
    return job()


def test_two_objects_with_one_title_never_share_a_token(
        env: Env, second_proc: harness.FunctionProcess) -> None:
    env.conn_secret()
    env.dockertoken("a", ret="a-pull")
    env.dockertoken("b", ret="b-pull")
    env.quay.inject("create", delay=0.2)
    jobs = [lambda n=n, u=u: checks.deliver(env, "add", n, url=u)
            for n in ("a", "b") for u in (env.fn.url, second_proc.url) * 4]
    answers = checks.run_concurrently(jobs)
    assert {r.status_code for r in answers} == {204}, [r.text for r in answers]
    a = checks.assert_converged(env, "a", ret="a-pull", others=1)
    b = checks.assert_converged(env, "b", ret="b-pull", others=1)
    assert a["status"]["uuid"] != b["status"]["uuid"]


def test_a_younger_lease_elsewhere_is_waited_for_before_adopting(env: Env) -> None:
    """Another object's holder (clock ahead, or the same second) is between POST and record.

    Its token is already in Quay but not yet claimed. This delivery sees that holder's lease and
    must not adopt the token, whichever lease looks older: adopting it would make two objects
    own one token, and deleting either would revoke the other's.
    """
    env.conn_secret()
    env.dockertoken("other", ret=None)
    # a holder is labelled (it took its lease on a pass that set its claim label first)
    env.custom.patch_namespaced_custom_object(G, V, env.ns, P, "other", {"metadata": {"labels": {
        decide.claim_label(env.quay.host, "mytoken"): "true"}}})
    ahead = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    env.custom.patch_namespaced_custom_object_status(G, V, env.ns, P, "other", {"status": {
        "creation": {"id": "f" * 32, "title": "mytoken", "since": ahead.strftime("%Y-%m-%dT%H:%M:%SZ")}}})
    theirs = env.quay_create("mytoken")
    env.dockertoken()

    def record_theirs() -> None:
        time.sleep(1.0)
        env.custom.patch_namespaced_custom_object_status(G, V, env.ns, P, "other", {"status": {
            "creation": None, "uuid": theirs, "tokenName": "mytoken", "existInQuay": True}})

    answer, _ = checks.run_concurrently([lambda: env.send("add"), record_theirs])
    assert answer.status_code in (204, 503), answer.text
    if answer.status_code == 503:  # it gave up waiting for the other holder: redelivered
        assert f"{env.ns}/other is creating a token" in answer.text, answer.text
        assert checks.deliver(env, "add").status_code == 204
    ours = checks.assert_converged(env, others=1)
    assert ours["status"]["uuid"] != theirs


def test_waits_for_names_only_younger_fresh_same_title_leases() -> None:
    from function import decide
    from function.model import DockerToken

    def obj(uid: str, since: str, title: str = "t") -> dict[str, Any]:
        return {"metadata": {"uid": uid, "namespace": "ns", "name": uid, "generation": 1},
                "spec": {"name": title, "connSecretRef": {"name": "c"}},
                "status": {"creation": {"id": uid, "title": title, "since": since}}}

    now = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)
    me = DockerToken.from_object(obj("m", "2026-11-26T11:59:58Z"))
    ours = me.status.creation
    assert ours is not None
    same_second_higher_uid = obj("z", "2026-11-26T11:59:58Z")
    later = obj("a", "2026-11-26T11:59:59Z")
    older = obj("b", "2026-11-26T11:59:50Z")
    stale = obj("c", "2026-11-26T11:50:00Z")
    other_title = obj("d", "2026-11-26T11:59:59Z", title="u")
    assert decide.waits_for([same_second_higher_uid], me, ours, now) == "ns/z"
    assert decide.waits_for([later], me, ours, now) == "ns/a"
    assert decide.waits_for([older, stale, other_title, obj("m", "2026-11-26T11:59:58Z")],
                            me, ours, now) == ""
    # exactly one side of any pair waits, the other yields
    assert decide.yields_to([older], me, ours, now) == "ns/b"
    assert decide.yields_to([later], me, ours, now) == ""


def test_logged_writes_and_quay_calls_are_each_events_own(env: Env) -> None:
    """Eight adds at once on one process: the per-event log figures add up to what the API server
    and Quay served (a shared counter diffed per event would count the others' writes too)."""
    env.conn_secret()
    names = [f"dt-{i}" for i in range(8)]
    for name in names:
        env.dockertoken(name, title=name, ret=f"{name}-pull")
    writes, calls = env.write_count(), env.quay_calls()
    answers = checks.run_concurrently([functools.partial(env.send, "add", n) for n in names])
    assert [r.status_code for r in answers] == [204] * len(names)
    lines = [json.loads(line) for line in env.fn.logs().splitlines()
             if line.startswith("{") and f'"namespace": "{env.ns}"' in line]
    logged = [line for line in lines if line.get("event") == "dev.knative.apiserver.ref.add"]
    assert len(logged) == len(names)
    assert sum(line["writes"] for line in logged) == env.write_count() - writes
    assert sum(line["quay_calls"] for line in logged) == env.quay_calls() - calls
    assert all(line["writes"] <= 6 for line in logged), [line["writes"] for line in logged]
