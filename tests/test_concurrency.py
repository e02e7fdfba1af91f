"""Concurrent deliveries: the creation lease in status lets exactly one POST through.

Two function processes (two pods) share the API server and Quay, as in a cluster scaled to two.
No race is left to timing: the Quay simulator holds the lease holder's POST while the other
deliveries are made, and the API server's audit log shows where they are (a pass begun, the
lease polled) before the POST is let go. Each event's log line says what it did.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from function import decide
from tests import checks, harness
from tests.controlplane import ControlPlane
from tests.env import Env, G, P, V, wait_for

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


def _lease(env: Env, name: str = "dockertoken-sample") -> dict[str, Any]:
    """The creation lease the object carries now (asserted present)."""
    lease: dict[str, Any] | None = (env.get(name) or {}).get("status", {}).get("creation")
    assert lease, f"{name} carries no creation lease"
    return lease


def _actions(lines: list[dict[str, Any]], action: str) -> int:
    return sum(line["actions"].count(action) for line in lines)


def test_sixteen_concurrent_adds_on_two_processes_create_one_token(
        env: Env, second_proc: harness.FunctionProcess) -> None:
    """One add holds the lease while Quay holds its POST; fifteen more, split over both
    processes, all begin inside that window (each read the object with the lease on it) and
    wait for it: when the POST is let go, one token, and all sixteen answer 204 at once."""
    env.conn_secret()
    env.dockertoken()
    env.quay.inject("create", hold=True)
    obj = env.get()
    assert obj is not None
    events = [harness.apiserver_event("add", obj) for _ in range(DELIVERIES)]
    first = checks.Background(functools.partial(harness.post, env.fn.url, events[0]))
    env.quay.wait_held("create")
    lease = _lease(env)
    api = checks.ApiRequests(env)
    urls = [second_proc.url, env.fn.url] * (DELIVERIES // 2)
    others = [checks.Background(functools.partial(harness.post, url, event))
              for url, event in zip(urls, events[1:], strict=False)]
    api.wait(DELIVERIES - 1, "get", "secrets", name="quay-credentials",
             what="every other delivery to begin its pass")
    # inside the window: nobody else took the lease or POSTed, nobody has answered
    assert _lease(env) == lease and env.quay_calls("create") == 1
    assert not first.done() and not any(d.done() for d in others)
    env.quay.release("create")
    answers = [d.result() for d in (first, *others)]
    assert [r.status_code for r in answers] == [204] * DELIVERIES, [r.text for r in answers]
    lines = [checks.logged(e, env.fn, second_proc) for e in events]
    assert lines[0]["actions"].count("create-token") == 1, lines[0]
    assert _actions(lines, "take-lease") == 1 and _actions(lines, "create-token") == 1
    assert env.quay_calls("create") == 1
    checks.assert_converged(env)


def test_concurrent_adds_after_a_revocation_replace_the_token_once(
        env: Env, second_proc: harness.FunctionProcess) -> None:
    """Resyncs and updates race on a token revoked by hand: one replacement, the old one gone.

    A resync holds the lease while Quay holds its POST; fifteen more deliveries (resyncs and
    plain updates, both processes) begin inside that window. The updates need no token: they
    are answered at once and leave the lease alone; the resyncs wait for it.
    """
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    old = env.get()["status"]["uuid"]  # type: ignore[index]
    env.quay_revoke(old)
    env.quay.reset_counters()
    env.quay.inject("create", hold=True)
    holder_event = harness.resync_event(env.ns, "dockertoken-sample")
    holder = checks.Background(functools.partial(harness.post, env.fn.url, holder_event))
    env.quay.wait_held("create")
    lease = _lease(env)
    obj = env.get()
    assert obj is not None
    api = checks.ApiRequests(env)
    events = [harness.resync_event(env.ns, "dockertoken-sample") if i % 2 else
              harness.apiserver_event("update", obj) for i in range(1, DELIVERIES)]
    urls = [second_proc.url, env.fn.url] * (DELIVERIES // 2)
    racers = [checks.Background(functools.partial(harness.post, u, e))
              for u, e in zip(urls, events, strict=False)]
    api.wait(DELIVERIES - 1, "get", "secrets", name="quay-credentials",
             what="every other delivery to begin its pass")
    updates = [r for r, e in zip(racers, events, strict=True) if "update" in checks.event_type(e)]
    resyncs = [r for r in racers if r not in updates]
    assert len(updates) == 7 and len(resyncs) == 8
    # the plain updates are answered while the POST is held, and the lease is still there
    assert [u.result().status_code for u in updates] == [204] * len(updates)
    assert _lease(env) == lease, "a plain update cleared the lease"
    assert not holder.done() and not any(r.done() for r in resyncs)
    assert env.quay_calls("create") == 1
    env.quay.release("create")
    answers = [r.result() for r in (holder, *resyncs)]
    assert {r.status_code for r in answers} == {204}, [r.text for r in answers]
    lines = [checks.logged(e, env.fn, second_proc) for e in (holder_event, *events)]
    assert lines[0]["actions"].count("create-token") == 1, lines[0]
    assert _actions(lines, "take-lease") == 1 and _actions(lines, "create-token") == 1
    # the resyncs notice the revocation; the plain updates must not clear their lease
    assert checks.deliver(env, "update").status_code == 204
    assert env.resync().status_code == 204
    assert env.quay_calls("create") == 1
    obj = checks.assert_converged(env)
    assert obj["status"]["uuid"] != old


def test_plain_update_during_a_replacement_keeps_the_lease(env: Env) -> None:
    """An update that needs no token must not clear the lease a resync holds while it POSTs.

    Were the lease cleared, the second resync would take a new one and POST again: two tokens,
    and the first one, recorded then overwritten, leaked. Quay holds the first resync's POST
    while the update is answered and while the second resync waits for the lease.
    """
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    env.quay_revoke(env.get()["status"]["uuid"])  # type: ignore[index]
    env.quay.reset_counters()
    env.quay.inject("create", hold=True)
    first_event = harness.resync_event(env.ns, "dockertoken-sample")
    first = checks.Background(functools.partial(harness.post, env.fn.url, first_event))
    env.quay.wait_held("create")
    lease = _lease(env)
    obj = env.get()
    assert obj is not None
    update_event = harness.apiserver_event("update", obj)
    update = harness.post(env.fn.url, update_event)
    assert update.status_code == 204, update.text
    assert checks.logged(update_event, env.fn)["quay_calls"] == 0
    assert _lease(env) == lease, "the update cleared the lease"
    api = checks.ApiRequests(env)
    second_event = harness.resync_event(env.ns, "dockertoken-sample")
    second = checks.Background(functools.partial(harness.post, env.fn.url, second_event))
    # its pass read the object, lease and all, and reads it again while it waits for the lease
    api.wait(2, "get", name="dockertoken-sample", what="the second resync waiting for the lease")
    assert api.passes() == 1 and not second.done() and not first.done()
    assert _lease(env) == lease and env.quay_calls("create") == 1
    env.quay.release("create")
    assert first.result().status_code == 204, first.result().text
    assert second.result().status_code == 204, second.result().text
    took = checks.logged(first_event, env.fn)["actions"]
    waited = checks.logged(second_event, env.fn)["actions"]
    assert took.count("take-lease") == 1 and took.count("create-token") == 1, took
    assert "take-lease" not in waited and "create-token" not in waited, waited
    env.quay.clear_faults()
    assert env.resync().status_code == 204
    assert env.quay_calls("create") == 1
    checks.assert_converged(env)


def test_two_objects_with_one_title_never_share_a_token(
        env: Env, second_proc: harness.FunctionProcess) -> None:
    """b's add, on the other process, arrives while a's POST is held: a's token is about to
    exist and is not claimed yet. b must neither create alongside nor later adopt it: its lease
    is the younger, so it steps back (503 naming a) and, redelivered once a has recorded its
    token, creates its own. Then eight deliveries per object on both processes change nothing."""
    env.conn_secret()
    env.dockertoken("a", ret="a-pull")
    env.dockertoken("b", ret="b-pull")
    env.quay.inject("create", hold=True)
    a_event = harness.apiserver_event("add", env.get("a"))  # type: ignore[arg-type]
    a = checks.Background(functools.partial(harness.post, env.fn.url, a_event))
    env.quay.wait_held("create")
    since = _lease(env, "a")["since"]
    # leases count whole seconds (a tie goes by uid): let the clock pass a's, so b's is younger
    wait_for(lambda: decide.rfc3339(datetime.datetime.now(datetime.UTC)) > since, timeout=5,
             what="the next second")
    b = harness.post(second_proc.url, harness.apiserver_event("add", env.get("b")))  # type: ignore[arg-type]
    assert b.status_code == 503, b.text
    assert f"DockerToken {env.ns}/a is creating a token titled 'mytoken'" in b.text, b.text
    assert not (env.get("b") or {})["status"].get("creation"), "b left its lease"
    assert env.quay_calls("create") == 1 and not a.done()
    env.quay.release("create")
    assert a.result().status_code == 204, a.result().text
    assert checks.deliver(env, "add", "b", url=second_proc.url).status_code == 204
    jobs = [lambda n=n, u=u: checks.deliver(env, "add", n, url=u)
            for n in ("a", "b") for u in (env.fn.url, second_proc.url) * 4]
    answers = checks.run_concurrently(jobs)
    assert {r.status_code for r in answers} == {204}, [r.text for r in answers]
    a_obj = checks.assert_converged(env, "a", ret="a-pull", others=1)
    b_obj = checks.assert_converged(env, "b", ret="b-pull", others=1)
    assert a_obj["status"]["uuid"] != b_obj["status"]["uuid"]
    assert env.quay_calls("create") == 2


def test_a_younger_lease_elsewhere_is_waited_for_before_adopting(env: Env) -> None:
    """Another object's holder (clock ahead, or the same second) is between POST and record.

    Its token is already in Quay but not yet claimed. This delivery sees that holder's lease and
    must not adopt the token, whichever lease looks older: adopting it would make two objects
    own one token, and deleting either would revoke the other's. The other holder records its
    token only once this delivery is seen waiting (it looks at the same-title objects again).
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
    env.quay.reset_counters()
    api = checks.ApiRequests(env)
    event = harness.apiserver_event("add", env.get())  # type: ignore[arg-type]
    add = checks.Background(functools.partial(harness.post, env.fn.url, event))
    api.wait(2, "list", uri="labelSelector=", what="the delivery looking again at the other holder")
    _lease(env)  # it holds its own lease meanwhile
    assert env.quay_calls("create") == 0 and not add.done()
    assert env.quay_calls("get") == 0, "it fetched the unclaimed token to adopt it"
    env.custom.patch_namespaced_custom_object_status(G, V, env.ns, P, "other", {"status": {
        "creation": None, "uuid": theirs, "tokenName": "mytoken", "existInQuay": True}})
    answer = add.result()
    assert answer.status_code == 204, answer.text
    actions = checks.logged(event, env.fn)["actions"]
    assert "create-token" in actions and "adopt-token" not in actions, actions
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
    # 6, and 1 more for those that lost the race to put the in-use finalizer on the connection
    # Secret (their PUT answers 409, and the winner's finalizer is enough)
    assert all(line["writes"] <= 7 for line in logged), [line["writes"] for line in logged]
