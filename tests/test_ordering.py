"""Events out of order, stale, or about objects already gone: the function works from the
object's current state, so every order converges and none creates or revokes the wrong token."""

from __future__ import annotations

from typing import Any

from tests import checks, harness
from tests.env import FINALIZER, Env, G, P, V


def _stale(env: Env, verb: str, obj: dict[str, Any], mode: str = "resource") -> int:
    """Deliver an event carrying an old copy of the object."""
    return harness.post(env.fn.url, harness.apiserver_event(verb, obj, mode=mode)).status_code


def test_delete_event_before_add_event_creates_nothing(env: Env) -> None:
    """Created and deleted before the function saw it: both events arrive, in the wrong order."""
    env.conn_secret()
    obj = env.dockertoken()
    env.delete()
    assert env.get() is None
    assert _stale(env, "delete", obj) == 204
    assert _stale(env, "add", obj) == 204
    assert _stale(env, "add", obj, mode="ref") == 204
    assert env.tokens() == [] and env.secret() is None
    assert env.quay_calls() == 0


def test_stale_add_after_deletion_started_finalizes_instead(env: Env) -> None:
    env.conn_secret()
    obj = env.dockertoken()
    assert env.send("add").status_code == 204
    env.delete()  # our finalizer holds it; the delete arrives as an update
    assert _stale(env, "add", obj) == 204  # redelivered add, carrying the pre-deletion body
    assert env.get() is None and env.tokens() == [] and env.secret() is None


def test_stale_update_after_delete_recreates_nothing(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    before = env.get()
    assert before is not None
    env.delete()
    assert env.send("update").status_code == 204
    assert env.get() is None
    for verb, mode in (("update", "resource"), ("update", "ref"), ("add", "resource")):
        assert _stale(env, verb, before, mode) == 204
    assert env.resync().status_code == 204  # the CronJob listed it before it went
    assert env.tokens() == [] and env.secret() is None


def test_recreated_object_with_the_same_name_gets_its_own_token(env: Env) -> None:
    env.conn_secret()
    first = env.dockertoken()
    assert env.send("add").status_code == 204
    old_uuid = env.get()["status"]["uuid"]  # type: ignore[index]
    env.delete()
    assert env.send("update").status_code == 204
    env.dockertoken()
    # the old object's events arrive late, after the new object exists
    assert _stale(env, "delete", first) == 204
    assert _stale(env, "update", first) == 204
    obj = checks.assert_converged(env)
    assert obj["status"]["uuid"] != old_uuid
    secret = env.secret()
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]


def test_deletion_during_a_creation_waits_for_it_and_leaks_no_token(env: Env) -> None:
    """The object is deleted while its token is being POSTed: the finalizer must wait for the
    creation to be recorded, then revoke it; otherwise the token lands on a gone object.

    Quay holds the POST; the deletion's delivery is sent then, and is released only once it has
    read the object again while waiting for the lease.
    """
    env.conn_secret()
    env.dockertoken()
    env.quay.inject("create", hold=True)
    add_event = harness.apiserver_event("add", env.get())  # type: ignore[arg-type]
    add = checks.Background(lambda: harness.post(env.fn.url, add_event))
    env.quay.wait_held("create")
    lease = env.get()["status"]["creation"]  # type: ignore[index]
    assert lease, "the POST is in flight without a lease"
    env.delete()
    deleting = env.get()
    assert deleting is not None and deleting["metadata"]["deletionTimestamp"]
    api = checks.ApiRequests(env)
    delete_event = harness.apiserver_event("update", deleting)
    delete = checks.Background(lambda: harness.post(env.fn.url, delete_event))
    # its pass read the object, then reads it again while it waits for the lease to go
    api.wait(2, "get", name="dockertoken-sample", what="the deletion waiting for the lease")
    assert api.passes() == 1 and not delete.done() and not add.done()
    assert env.get()["status"]["creation"] == lease  # type: ignore[index]
    assert env.tokens() == [] and env.quay.held("create") == 1
    env.quay.release("create")
    assert add.result().status_code == 204, add.result().text
    assert delete.result().status_code == 204, delete.result().text
    assert env.get() is None
    assert env.tokens() == [], "the token created during deletion leaked"
    assert env.secret() is None
    # the token was recorded on the object, then revoked by its finalization, once
    added, deleted = checks.logged(add_event, env.fn), checks.logged(delete_event, env.fn)
    assert "create-token" in added["actions"], added
    actions = added["actions"] + deleted["actions"]
    assert actions.count("revoke-token") == 1 and "revoke-unrecorded-token" not in actions, actions
    assert env.quay_calls("create") == 1


def test_same_title_objects_never_revoke_each_others_token(env: Env) -> None:
    env.conn_secret()
    env.dockertoken("a", ret="a-pull")
    env.dockertoken("b", ret="b-pull")
    answers = checks.run_concurrently([lambda: checks.deliver(env, "add", "a"),
                                       lambda: checks.deliver(env, "add", "b")])
    assert [r.status_code for r in answers] == [204, 204]
    a = checks.assert_converged(env, "a", ret="a-pull", others=1)["status"]["uuid"]
    b = checks.assert_converged(env, "b", ret="b-pull", others=1)["status"]["uuid"]
    assert a != b
    b_secret = env.secret_data("b-pull")
    env.delete("a")
    assert checks.deliver(env, "update", "a").status_code == 204
    assert env.get("a") is None
    assert [t["uuid"] for t in env.tokens()] == [b]
    assert env.resync("b").status_code == 204
    checks.assert_converged(env, "b", ret="b-pull")
    # the same token; only lastAccessed moves (the registry check after creation used it)
    assert env.secret_data("b-pull")["uuid"] == b_secret["uuid"]
    assert env.secret_data("b-pull")["tokenCode"] == b_secret["tokenCode"]


def test_deleting_an_adopted_object_spares_the_same_title_token_of_another(env: Env) -> None:
    """An object from the Ansible operator has no UUID, so its deletion revokes by title; a
    token with that title another object tracks is not its to revoke."""
    env.conn_secret()
    env.dockertoken("tracked", ret="tracked-pull")
    assert env.send("add", "tracked").status_code == 204
    tracked = env.get("tracked")["status"]["uuid"]  # type: ignore[index]
    legacy = env.quay_create("mytoken")
    body = env.dockertoken("legacy", ret=None)
    env.custom.patch_namespaced_custom_object(G, V, env.ns, P, "legacy", {"metadata": {
        "finalizers": [FINALIZER], "resourceVersion": body["metadata"]["resourceVersion"]}})
    env.custom.patch_namespaced_custom_object_status(G, V, env.ns, P, "legacy", {
        "status": {"existInQuay": True, "message": ""}})
    env.delete("legacy")
    assert env.send("update", "legacy").status_code == 204
    assert env.get("legacy") is None
    remaining = [t["uuid"] for t in env.tokens()]
    assert remaining == [tracked], f"revoked {tracked} or kept {legacy}: {remaining}"
    checks.assert_converged(env, "tracked", ret="tracked-pull")


def test_events_in_reverse_order_converge_to_the_latest_spec(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    v1 = env.get()
    env.patch_spec(name="second")
    v2 = env.get()
    env.patch_spec(name="third")
    assert v1 is not None and v2 is not None
    for old in (v2, v1):
        assert _stale(env, "update", old) == 204
    assert _stale(env, "add", v1) == 204
    checks.assert_converged(env, title="third")
    assert env.quay_calls("create") == 1
