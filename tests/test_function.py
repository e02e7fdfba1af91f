"""End to end: ApiServerSource-style events over HTTP to the running function, the real API
server, and the Quay simulator. Each test asserts what a user would see."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from tests import harness
from tests.env import FINALIZER, Env, dockerconfig
from tests.quaysim import PASSWORD, USERNAME


def _assert_pull_secret(env: Env, *, title: str = "mytoken") -> dict[str, str]:
    tokens = env.tokens(title)
    assert len(tokens) == 1, tokens
    data = env.secret_data()
    secret = env.secret()
    assert secret is not None and secret["type"] == "kubernetes.io/dockerconfigjson"
    assert set(data) == {".dockerconfigjson", "auth", "created", "expiration", "lastAccessed", "name",
                         "tokenCode", "username", "uuid"}
    assert data["uuid"] == tokens[0]["uuid"]
    assert data["name"] == title and data["username"] == "$app"
    assert data["tokenCode"] == tokens[0]["token_code"]
    assert data["expiration"] == "" and data["lastAccessed"] == ""  # Quay said null
    assert base64.b64decode(data["auth"]).decode() == f"$app:{data['tokenCode']}"
    assert dockerconfig(data) == {"auths": {env.quay.host: {"auth": data["auth"], "email": ""}}}
    return data


@pytest.mark.parametrize(
    ("mode", "content"),
    [("ref", "binary"), ("resource", "binary"), ("ref", "structured"), ("resource", "structured")],
)
def test_add_event_creates_token_and_pull_secret(env: Env, mode: str, content: str) -> None:
    env.conn_secret()
    env.dockertoken()
    resp = env.send("add", mode=mode, content=content)
    assert resp.status_code == 204 and resp.content == b""
    data = _assert_pull_secret(env)
    obj = env.get()
    assert obj is not None
    assert obj["metadata"]["finalizers"] == [FINALIZER]
    status = obj["status"]
    assert status["existInQuay"] is True and status["message"] == ""
    assert status["uuid"] == data["uuid"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    ready = env.ready()
    assert ready["status"] == "True" and ready["reason"] == "TokenReady"
    successful = next(c for c in status["conditions"] if c["type"] == "Successful")
    assert successful["status"] == "True"
    owner = env.secret()["metadata"]["ownerReferences"][0]  # type: ignore[index]
    assert owner["kind"] == "DockerToken" and owner["uid"] == obj["metadata"]["uid"]


def test_second_identical_event_writes_nothing_and_calls_quay_never(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    # the function's own status write comes back as an update event
    assert env.send("update").status_code == 204
    rv = env.get()["metadata"]["resourceVersion"]  # type: ignore[index]
    secret_rv = env.secret()["metadata"]["resourceVersion"]  # type: ignore[index]
    writes, calls = env.write_count(), env.quay_calls()
    for mode in ("ref", "resource"):
        assert env.send("update", mode=mode).status_code == 204
    assert env.write_count() == writes
    assert env.quay_calls() == calls
    assert env.get()["metadata"]["resourceVersion"] == rv  # type: ignore[index]
    assert env.secret()["metadata"]["resourceVersion"] == secret_rv  # type: ignore[index]


def test_missing_connection_secret_is_reported_in_status(env: Env) -> None:
    env.dockertoken()
    resp = env.send("add")
    assert resp.status_code == 204
    obj = env.get()
    assert obj["status"]["message"] == "connSecretRef: quay-credentials: secret not found"  # type: ignore[index]
    ready = env.ready()
    assert ready["status"] == "False" and ready["reason"] == "ConnectionSecretNotFound"
    assert env.secret() is None
    env.conn_secret()  # the resync brings it in line once the Secret exists
    assert env.resync().status_code == 204
    _assert_pull_secret(env)
    assert env.get()["status"]["message"] == ""  # type: ignore[index]


def test_token_revoked_in_quay_is_replaced_on_resync(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    env.send("add")
    old = env.get()["status"]["uuid"]  # type: ignore[index]
    env.quay_revoke(old)
    assert env.resync().status_code == 204
    data = _assert_pull_secret(env)
    assert data["uuid"] != old
    ready = env.ready()
    assert ready["status"] == "True" and ready["reason"] == "TokenReplaced" and old in ready["message"]


def test_renaming_creates_new_token_then_revokes_old(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    env.send("add")
    old = env.get()["status"]["uuid"]  # type: ignore[index]
    env.patch_spec("dockertoken-sample", name="renamed")
    assert env.send("update").status_code == 204
    data = _assert_pull_secret(env, title="renamed")
    assert data["uuid"] != old
    assert env.tokens("mytoken") == []
    assert env.get()["status"].get("pendingRevocation") is None  # type: ignore[index]


def test_deleted_or_edited_return_secret_is_restored(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    env.send("add")
    # lastAccessed moves on its own (the registry check after creation used the token)
    first = {k: v for k, v in env.secret_data().items() if k != "lastAccessed"}
    env.core.delete_namespaced_secret("dockertoken-sample-ret-secret", env.ns)
    assert env.send("update").status_code == 204
    assert {k: v for k, v in env.secret_data().items() if k != "lastAccessed"} == first
    env.core.patch_namespaced_secret("dockertoken-sample-ret-secret", env.ns,
                                     {"stringData": {"tokenCode": "tampered"}})
    assert env.resync().status_code == 204
    assert {k: v for k, v in env.secret_data().items() if k != "lastAccessed"} == first
    assert len(env.tokens()) == 1


def test_foreign_secret_is_never_overwritten(env: Env) -> None:
    env.conn_secret()
    env.core.create_namespaced_secret(
        env.ns, {"metadata": {"name": "dockertoken-sample-ret-secret"}, "stringData": {"mine": "1"}})
    env.dockertoken()
    assert env.send("add").status_code == 204
    assert env.secret_data() == {"mine": "1"}
    ready = env.ready()
    assert ready["status"] == "False" and ready["reason"] == "ReturnSecretConflict"
    assert "retSecretRef" in ready["message"]
    assert env.tokens() == []


def test_secret_in_other_namespace_is_marked_and_cleaned_up(env: Env, namespace: str) -> None:
    other = f"{namespace}-pull"
    env.core.create_namespace({"metadata": {"name": other, "annotations": {
        "quay.herve4m.github.io/allowed-namespaces": f"someone-else, {namespace}"}}})
    env.conn_secret()
    env.dockertoken(retSecretRef={"name": "pull", "namespace": other}, ret=None)
    assert env.send("add").status_code == 204
    secret = env.secret("pull", other)
    assert secret is not None
    meta = secret["metadata"]
    assert "ownerReferences" not in meta or not meta["ownerReferences"]
    assert meta["annotations"]["quay.herve4m.github.io/owner"] == f"{env.ns}/dockertoken-sample"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "quay-dockertoken"
    env.delete()
    assert env.send("update").status_code == 204
    assert env.secret("pull", other) is None
    assert env.get() is None


def test_deletion_revokes_token_removes_secret_and_only_our_finalizer(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    env.custom.patch_namespaced_custom_object(
        "quay.herve4m.github.io", "v1alpha1", env.ns, "dockertokens", "dockertoken-sample",
        {"metadata": {"finalizers": ["example.com/keep"]}})
    env.send("add")
    assert env.get()["metadata"]["finalizers"] == ["example.com/keep", FINALIZER]  # type: ignore[index]
    env.delete()
    assert env.send("update").status_code == 204
    assert env.tokens() == []
    assert env.secret() is None
    assert env.get()["metadata"]["finalizers"] == ["example.com/keep"]  # type: ignore[index]
    assert env.send("delete").status_code == 204


def test_preserve_in_quay_keeps_the_token(env: Env) -> None:
    env.conn_secret()
    env.dockertoken(preserveInQuayOnDeletion=True)
    env.send("add")
    env.delete()
    assert env.send("update").status_code == 204
    assert env.get() is None
    assert len(env.tokens("mytoken")) == 1


def test_object_from_the_ansible_operator_adopts_its_token(env: Env) -> None:
    existing = env.quay_create("mytoken")
    env.conn_secret()
    body = env.dockertoken()
    env.custom.patch_namespaced_custom_object(
        "quay.herve4m.github.io", "v1alpha1", env.ns, "dockertokens", "dockertoken-sample",
        {"metadata": {"finalizers": [FINALIZER], "resourceVersion": body["metadata"]["resourceVersion"]}})
    env.custom.patch_namespaced_custom_object_status(
        "quay.herve4m.github.io", "v1alpha1", env.ns, "dockertokens", "dockertoken-sample",
        {"status": {"existInQuay": True, "message": ""}})
    env.quay.reset_counters()
    assert env.send("update").status_code == 204
    assert env.quay_calls("create") == 0
    data = _assert_pull_secret(env)
    assert data["uuid"] == existing


def test_cleanup_blocked_then_preserve_lets_it_go(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    env.send("add")
    env.delete_conn_secret_unprotected()
    env.delete()
    assert env.send("update").status_code == 204
    ready = env.ready()
    assert ready["status"] == "False" and ready["reason"] == "CleanupBlocked"
    assert "preserveInQuayOnDeletion" in ready["message"] and "finalizer" in ready["message"]
    assert env.get() is not None
    env.patch_spec("dockertoken-sample", preserveInQuayOnDeletion=True)
    assert env.send("update").status_code == 204
    assert env.get() is None


def test_quay_down_during_deletion_is_recorded_then_a_retry_completes(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    env.send("add")
    env.delete()
    env.quay.inject("revoke", statuses=[503])
    assert env.send("update").status_code == 204
    assert env.ready()["reason"] == "CleanupBlocked"
    calls = env.quay_calls()
    assert env.send("update").status_code == 204  # the echo of that status write
    assert env.quay_calls() == calls and env.get() is not None
    assert env.request_reconcile().status_code == 204
    assert env.get() is None and env.tokens() == []


def test_rejected_oauth_token_is_permanent_and_reported(env: Env) -> None:
    env.conn_secret(host=env.quay.base_url, token="wrongwrongwrongwrongwrongwrongwrongwrong")
    env.dockertoken()
    resp = env.send("add")
    assert resp.status_code == 204
    ready = env.ready()
    assert ready["status"] == "False" and ready["reason"] == "QuayAuthenticationFailed"
    assert "wrongwrong" not in str(env.get())


def test_quay_unavailable_is_recorded_and_retried_after_the_backoff(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    env.quay.inject("list", statuses=[503])
    assert env.send("add").status_code == 204
    status = env.get()["status"]  # type: ignore[index]
    assert env.ready()["reason"] == "QuayUnavailable"
    assert status["retry"]["attempts"] == 1 and status["retry"]["temporary"] is True
    calls = env.quay_calls()
    assert env.send("update").status_code == 204  # the echo: nothing to do before notBefore
    # a resync inside the backoff costs nothing, and tells the CronJob the object still fails
    # (counted by reason, issue 20: a job done, not a delivery to retry)
    resp = env.resync()
    assert resp.status_code == 204, resp.text
    assert resp.headers["Quay-Dockertoken-Outcome"] == "backoff"
    assert resp.headers["Quay-Dockertoken-Reason"] == "QuayUnavailable"
    assert env.quay_calls() == calls
    assert env.request_reconcile().status_code == 204
    _assert_pull_secret(env)
    assert "retry" not in env.get()["status"]  # type: ignore[index]


def test_username_and_password_sign_in(env: Env) -> None:
    env.conn_secret(host=env.quay.base_url, username=USERNAME, password=PASSWORD)
    env.dockertoken()
    assert env.send("add").status_code == 204
    _assert_pull_secret(env)
    assert env.quay_calls("signout") >= 1


def test_other_kinds_and_gone_objects_are_acknowledged(env: Env) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": env.ns}}
    resp = harness.post(env.fn.url, harness.apiserver_event("add", pod, mode="resource"))
    assert resp.status_code == 204 and resp.content == b""
    assert env.send("delete", name="never-existed").status_code == 204
    assert env.resync("never-existed").status_code == 204


def test_health_route_and_malformed_event(env: Env) -> None:
    assert httpx.get(f"{env.fn.url}/healthz").status_code == 200
    resp = harness.post(env.fn.url, ({"Content-Type": "application/json"}, b"{}"))
    assert resp.status_code == 400 and "ce-id" in resp.text
    headers, _ = harness.resync_event(env.ns, "x")
    resp = harness.post(env.fn.url, (headers, b'{"namespace": "Not_Valid", "name": "x"}'))
    assert resp.status_code == 400 and "namespace" in resp.text



def test_last_accessed_is_recorded_at_first_use_then_at_most_once_a_day(env: Env) -> None:
    """Quay's lastAccessed moves on every pull, and our own registry check moved it right after
    the creation: the check is never worth a write, the first real use is (however short the
    token's life), and after it one write per LAST_ACCESSED_REFRESH at most (24 h by default;
    issue 22)."""
    env.conn_secret()
    env.dockertoken()
    env.send("add")
    uuid = env.get()["status"]["uuid"]  # type: ignore[index]
    env.quay.touch(uuid)  # as the registry check does, seconds after the creation
    writes = env.write_count()
    assert env.send("update").status_code == 204
    assert env.resync().status_code == 204
    assert env.secret_data()["lastAccessed"] == "" and env.write_count() == writes

    def resync_records() -> str:
        assert env.resync().status_code == 204
        listed = next(t for t in env.tokens() if t["uuid"] == uuid)
        assert env.secret_data()["lastAccessed"] == listed["last_accessed"] != ""
        return str(listed["last_accessed"])

    env.quay.advance(600)
    env.quay.touch(uuid)  # the first pull, 10 minutes on
    first = resync_records()
    # the Secret and status.lastAccessedTime, in one pass
    assert (env.get() or {})["status"]["lastAccessedTime"]
    assert env.write_count() == writes + 2
    env.quay.advance(3600)
    env.quay.touch(uuid)  # an hour after that: not yet
    assert env.resync().status_code == 204
    assert env.secret_data()["lastAccessed"] == first and env.write_count() == writes + 2
    env.quay.advance(24 * 3600)
    env.quay.touch(uuid)  # a day after the value the Secret holds
    assert resync_records() != first
    assert env.write_count() == writes + 4


def test_expired_token_is_replaced(control_plane: Any, namespace: str, function_proc: Any) -> None:
    from tests.env import Env
    from tests.quaysim import QuaySimulator

    with QuaySimulator(token_expiration=2) as sim:
        env = Env(control_plane, namespace, sim, function_proc)
        sim.advance(-10)  # Quay issues tokens as of 10 s ago: expired by the time an event comes
        env.conn_secret()
        env.dockertoken()
        env.send("add")
        first = env.secret_data()
        assert first["expiration"] != ""
        assert env.get()["status"]["expiration"] == first["expiration"]  # type: ignore[index]
        sim.advance(1)  # the replacement is issued a second later
        assert env.send("update").status_code == 204  # any event sees the date has passed
        data = env.secret_data()
        assert data["uuid"] != first["uuid"] and data["expiration"] != first["expiration"]
        ready = env.ready()
        assert ready["reason"] == "TokenReplaced" and "expired" in ready["message"]
        assert [t["uuid"] for t in env.tokens()] == [data["uuid"]]  # the expired one is revoked
