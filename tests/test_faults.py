"""Fault matrix: every Quay call the function makes, under every kind of failure.

Each case builds a state in which the faulted endpoint is really called, injects one fault in
the simulator, and checks: the function records what happened in status and answers 204 (the
echo of that write costs nothing), and once the fault is gone the retry (the user's reconcile
request here; the first resync after the backoff in a cluster) converges with no leaked token. Then the
API server's own failures: write conflicts (409) and a Secret write that fails half-way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from function.model import CLAIM_LABEL_PREFIX
from function.protection import CONNECTION_LABEL
from tests import checks, harness
from tests.env import Env, G, P, V, wait_for
from tests.quaysim import ADMIN_TOKEN

# The connection Secret's timeout: hangs and slow answers cost one second each.
TIMEOUT = 1.0
# Longer than TIMEOUT, so the client gives up first.
SLOW = 1.4


@dataclass(frozen=True)
class Fault:
    name: str
    arm: dict[str, Any]
    # the server still performs the operation after the client gave up
    completes_late: bool = False


FAULTS = [
    Fault("503", {"statuses": [503]}),
    Fault("502", {"statuses": [502]}),
    Fault("429", {"statuses": [429]}),
    Fault("hang", {"hang": SLOW}),
    Fault("reset", {"drop": 1}),
    Fault("slow", {"delay": SLOW}, completes_late=True),
]


@dataclass(frozen=True)
class Scenario:
    """How to make the function call ``endpoint``, and what converged looks like."""

    endpoint: str
    prepare: Callable[[Env], str]  # returns the event verb to send
    title: str = "mytoken"


def _fresh(env: Env) -> str:
    env.dockertoken()
    return "add"


def _secret_lost(env: Env) -> str:
    """The Secret is gone: the token's code must be fetched again (GET)."""
    env.dockertoken()
    assert env.send("add").status_code == 204
    env.core.delete_namespaced_secret("dockertoken-sample-ret-secret", env.ns)
    return "update"


def _renamed(env: Env) -> str:
    """spec.name changed: a new token, then the old one is revoked (DELETE)."""
    env.dockertoken()
    assert env.send("add").status_code == 204
    env.patch_spec(name="renamed")
    return "update"


SCENARIOS = [
    Scenario("list", _fresh),
    Scenario("create", _fresh),
    Scenario("get", _secret_lost),
    Scenario("revoke", _renamed, title="renamed"),
]


def _connection(env: Env) -> None:
    env.conn_secret(host=env.quay.base_url, token=ADMIN_TOKEN, timeout=str(TIMEOUT))


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.endpoint for s in SCENARIOS])
def test_quay_fault_is_recorded_then_converges(env: Env, scenario: Scenario, fault: Fault) -> None:
    _connection(env)
    verb = scenario.prepare(env)
    calls = env.quay_calls(scenario.endpoint)
    if scenario.endpoint == "create" and fault.completes_late:
        _post_completed_after_the_client_gave_up(env, verb)
        return
    env.quay.inject(scenario.endpoint, **fault.arm)
    started = time.monotonic()
    resp = env.send(verb)
    assert resp.status_code == 204, resp.text
    assert time.monotonic() - started < 3 * TIMEOUT + 2, "the client timeout was not honoured"
    assert env.quay_calls(scenario.endpoint) > calls, "the faulted endpoint was never called"
    ready = env.ready()
    assert ready["status"] == "False" and ready["reason"] == "QuayUnavailable", ready
    assert "/api/v1/user/apptoken" in ready["message"]
    assert not env.get()["status"].get("creation"), "a failed pass must not leave its lease"  # type: ignore[index]
    env.quay.clear_faults()
    assert env.request_reconcile().status_code == 204
    checks.assert_converged(env, title=scenario.title)  # exactly one token: none leaked


def _post_completed_after_the_client_gave_up(env: Env, verb: str) -> None:
    """A slow POST: Quay makes the token after the client gave up on it, before the function
    looks for it once more; the token is found and adopted at once.

    Quay holds the POST past the client's timeout, then holds the function's second look (the
    list) while it carries the POST out: the token is certainly made between the two.
    """
    env.quay.inject("create", hold=True)
    event = harness.apiserver_event(verb, env.get())  # type: ignore[arg-type]
    delivery = checks.Background(lambda: harness.post(env.fn.url, event))
    env.quay.wait_held("create")
    env.quay.inject("list", hold=True)
    env.quay.wait_held("list", timeout=5 * TIMEOUT)  # the client gave up: it looks again
    assert env.tokens() == [] and not delivery.done()
    env.quay.release("create")
    made = wait_for(env.tokens, timeout=5, what="Quay to carry out the POST")
    env.quay.release("list")
    resp = delivery.result()
    assert resp.status_code == 204, resp.text
    actions = checks.logged(event, env.fn)["actions"]
    assert "adopt-lost-token" in actions and "create-token" not in actions, actions
    obj = checks.assert_converged(env)
    assert obj["status"]["uuid"] == made[0]["uuid"] and env.quay_calls("create") == 1


def test_created_then_connection_dropped_adopts_the_orphan(env: Env) -> None:
    """Quay created the token but the answer was lost: the same delivery finds and adopts it."""
    _connection(env)
    env.dockertoken()
    env.quay.inject("create", after=1)
    assert env.send("add").status_code == 204
    obj = checks.assert_converged(env)
    assert env.quay_calls("create") == 1
    assert obj["status"]["uuid"] == env.tokens()[0]["uuid"]


def test_created_then_dropped_and_quay_gone_the_next_delivery_adopts(env: Env) -> None:
    """The answer was lost and Quay went down before the token could be looked for again."""
    _connection(env)
    env.dockertoken()
    env.quay.inject("create", after=1)
    env.quay.inject("get", statuses=[503])  # the look for it after the lost answer fails
    assert env.send("add").status_code == 204
    assert env.ready()["reason"] == "QuayUnavailable"
    orphan = env.tokens()
    assert len(orphan) == 1
    status = env.get()["status"]  # type: ignore[index]
    assert not status.get("uuid") and not status.get("creation"), status
    assert env.request_reconcile().status_code == 204
    obj = checks.assert_converged(env)
    assert obj["status"]["uuid"] == orphan[0]["uuid"]
    assert env.quay_calls("create") == 1


def test_holder_died_between_post_and_record_its_token_is_adopted(env: Env) -> None:
    """A lease older than its TTL: the holder died after POST; the token is adopted, not doubled."""
    _connection(env)
    env.dockertoken()
    orphan = env.quay_create("mytoken")
    env.custom.patch_namespaced_custom_object_status(G, V, env.ns, P, "dockertoken-sample", {
        "status": {"creation": {"id": "d" * 32, "title": "mytoken", "since": "2020-01-01T00:00:00Z"}}})
    env.quay.reset_counters()
    assert env.send("add").status_code == 204
    obj = checks.assert_converged(env)
    assert obj["status"]["uuid"] == orphan and env.quay_calls("create") == 0


def test_created_then_dropped_under_apiserversource_retries(env: Env) -> None:
    _connection(env)
    env.dockertoken()
    env.quay.inject("create", after=1)
    assert checks.deliver(env, "add").status_code == 204
    checks.assert_converged(env)
    assert env.quay_calls("create") == 1


def test_quay_down_for_every_call_then_back(env: Env) -> None:
    """Everything fails; the first resync after the backoff repairs."""
    _connection(env)
    env.dockertoken()
    env.quay.inject("*", statuses=[503] * 20)
    assert checks.deliver(env, "add", attempts=3).status_code == 204
    assert env.ready()["reason"] == "QuayUnavailable"
    env.quay.clear_faults()
    assert env.resync().status_code == 503  # not due yet: no Quay call
    env.expire_backoff()
    assert env.resync().status_code == 204
    checks.assert_converged(env)


def test_object_changed_while_its_pass_lists_tokens_gets_409_and_restarts(env: Env) -> None:
    """The lease is a compare-and-swap: an edit between the pass's read and its lease write makes
    that write fail (409), and the pass starts again from a fresh read.

    The edit is made while Quay holds the pass's list call: after the pass read the object,
    before it writes the lease.
    """
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    env.quay_revoke(env.get()["status"]["uuid"])  # type: ignore[index]
    api = checks.ApiRequests(env)
    env.quay.inject("list", hold=True)
    event = harness.resync_event(env.ns, "dockertoken-sample")
    resync = checks.Background(lambda: harness.post(env.fn.url, event))
    env.quay.wait_held("list")
    assert api.passes() == 1  # it has read the object
    read = env.get()["metadata"]["resourceVersion"]  # type: ignore[index]
    env.custom.patch_namespaced_custom_object(
        G, V, env.ns, P, "dockertoken-sample", {"metadata": {"labels": {"touched": "yes"}}})
    assert env.get()["metadata"]["resourceVersion"] != read  # type: ignore[index]
    assert not resync.done() and api.count("patch", subresource="status") == 0
    env.quay.release("list")
    resp = resync.result()
    assert resp.status_code == 204, resp.text
    # the lease write was refused once, then made on a fresh read: one lease, one token
    assert api.count("patch", subresource="status", code=409) == 1
    assert api.passes() == 2
    actions = checks.logged(event, env.fn)["actions"]
    assert actions.count("take-lease") == 1 and actions.count("create-token") == 1, actions
    checks.assert_converged(env)
    labels = env.get()["metadata"]["labels"]  # type: ignore[index]
    # the edit is kept; beside it only the labels the function sets: the claim label and the
    # connection Secret it uses (README "Design notes", "Deleting a connection Secret")
    assert labels.pop("touched") == "yes" and labels.pop(CONNECTION_LABEL)
    assert all(k.startswith(CLAIM_LABEL_PREFIX) for k in labels), labels


def test_secret_edited_while_its_code_is_fetched_gets_409_and_keeps_the_edit(env: Env) -> None:
    """The Secret is replaced with the resourceVersion the pass read: an edit made while Quay
    holds the pass's GET of the code makes the replace fail (409); the next pass keeps the edit."""
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    env.core.patch_namespaced_secret("dockertoken-sample-ret-secret", env.ns,
                                     {"stringData": {"tokenCode": "tampered"}})
    api = checks.ApiRequests(env)
    env.quay.inject("get", hold=True)  # the edited code is fetched again
    event = harness.resync_event(env.ns, "dockertoken-sample")
    resync = checks.Background(lambda: harness.post(env.fn.url, event))
    env.quay.wait_held("get")
    assert api.passes() == 1  # it has read the Secret
    env.core.patch_namespaced_secret("dockertoken-sample-ret-secret", env.ns,
                                     {"metadata": {"annotations": {"team": "blue"}}})
    assert env.secret_data()["tokenCode"] == "tampered"  # not repaired yet
    assert not resync.done()
    env.quay.release("get")
    resp = resync.result()
    assert resp.status_code == 204, resp.text
    secret = "dockertoken-sample-ret-secret"
    assert api.count("update", "secrets", name=secret, code=409) == 1
    assert api.count("update", "secrets", name=secret, code=200) == 1
    assert api.passes() == 2
    actions = checks.logged(event, env.fn)["actions"]
    assert actions.count("fetch-token") == 2 and actions.count("update-secret") == 1, actions
    checks.assert_converged(env)
    assert env.secret()["metadata"]["annotations"]["team"] == "blue"  # type: ignore[index]


def test_secret_write_failing_half_way_converges_without_a_second_token(env: Env) -> None:
    """A namespace that does not exist yet gave no consent: nothing is made until it does."""
    env.conn_secret()
    missing = f"{env.ns}-later"
    env.dockertoken(retSecretRef={"name": "pull", "namespace": missing}, ret=None)
    assert env.send("add").status_code == 204
    ready = env.ready()
    assert ready["status"] == "False" and ready["reason"] == "CrossNamespaceRefDenied", ready
    assert "retSecretRef.namespace" in ready["message"] and missing in ready["message"], ready
    assert env.quay_calls() == 0 and env.tokens() == []
    env.core.create_namespace({"metadata": {"name": missing, "annotations": {
        "quay.herve4m.github.io/allowed-namespaces": env.ns}}})
    assert env.resync().status_code == 204
    checks.assert_converged(env, ret="pull", ret_namespace=missing)
    assert env.quay_calls("create") == 1
