"""In-use protection of connection Secrets and adoption behind a warm cache (issue 20).

A connection Secret carries the function's finalizer while a DockerToken holds a token made with
it, so deleting it (or its namespace) never strands a token; tests/test_namespace_deletion.py
plays the namespace controller through Knative's real adapter. Here: the rules as a table, and
what a user sees, one event at a time.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from function import decide, protection
from function.errors import (
    BadEvent,
    ConfigError,
    Conflict,
    Handling,
    KubeTransient,
    PermanentError,
    QuayAuthError,
    QuayTransient,
    TemporaryError,
    classify,
)
from function.model import FINALIZER, Ref, Status
from tests.env import FINALIZER as DT_FINALIZER
from tests.env import Env, G, P, V

NOW = decide.parse_time("2026-12-07T10:00:00Z")
S = Ref("ns", "conn")
OTHER = Ref("ns", "other")


# -- the rules -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("current", "want", "state", "release", "register", "protect"),
    [
        pytest.param(None, S, protection.SecretState(), None, True, S, id="first-use"),
        pytest.param(None, S, protection.SecretState(protected=True), None, True, None,
                     id="first-use-already-protected-by-another"),
        pytest.param(S, S, protection.SecretState(protected=True), None, False, None, id="in-order"),
        pytest.param(S, S, protection.SecretState(), None, False, S, id="finalizer-removed-by-hand"),
        pytest.param(S, None, protection.SecretState(protected=True), S, True, None, id="preserved"),
        pytest.param(S, OTHER, protection.SecretState(), S, True, OTHER, id="moved-to-another"),
        pytest.param(None, None, protection.SecretState(), None, False, None, id="preserved-from-start"),
    ],
)
def test_steps_of_a_pass_that_keeps_the_object(current: Ref | None, want: Ref | None,
                                                state: protection.SecretState, release: Ref | None,
                                                register: bool, protect: Ref | None) -> None:
    steps = protection.for_use(current, want, state)
    assert steps.release == release and steps.protect == protect
    assert (steps.labels is not None) is register and (steps.annotations is not None) is register
    if register:
        assert steps.annotations == {protection.CONNECTION_ANNOTATION: str(want) if want else None}


def test_a_secret_being_deleted_gets_no_new_user() -> None:
    deleting = protection.SecretState(protected=True, deleting=True)
    assert protection.starts_using_deleted(None, S, deleting)
    assert not protection.starts_using_deleted(S, S, deleting)  # its user keeps it until it goes
    assert not protection.starts_using_deleted(None, None, deleting)  # preserved: needs nothing
    assert not protection.starts_using_deleted(None, S, protection.SecretState(protected=True))


def _listed(uid: str, *, finalizer: bool = True, deleting: bool = False, preserve: bool = False,
            **status: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"uid": uid, "namespace": "ns", "finalizers": [FINALIZER] if finalizer else []}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T10:00:00Z"
    return {"metadata": meta, "spec": {"connSecretRef": {"name": "conn"}, "preserveInQuayOnDeletion": preserve},
            "status": status}


@pytest.mark.parametrize(
    ("obj", "holds"),
    [
        pytest.param(_listed("a"), True, id="live-brand-new"),
        pytest.param(_listed("a", uuid="u"), True, id="live-with-token"),
        pytest.param(_listed("a", preserve=True, uuid="u"), False, id="preserved"),
        pytest.param(_listed("a", finalizer=False), False, id="finalized"),
        pytest.param(_listed("a", deleting=True, uuid="u"), True, id="deleting-not-yet-revoked"),
        pytest.param(_listed("a", deleting=True, existInQuay=True), True, id="deleting-migrated"),
        pytest.param(_listed("a", deleting=True, creation={"id": "x"}), True, id="deleting-mid-creation"),
        pytest.param(_listed("a", deleting=True, existInQuay=False), False, id="deleting-revoked"),
        pytest.param({**_listed("a", uuid="u"), "spec": {"connSecretRef": {"name": "other"}}}, False,
                     id="moved-to-another-secret"),
        pytest.param({**_listed("a", uuid="u"), "spec": {"connSecretRef": {"name": "conn", "namespace": "x"}}},
                     False, id="same-name-in-another-namespace"),
    ],
)
def test_which_listed_objects_still_need_the_secret(obj: dict[str, Any], holds: bool) -> None:
    assert protection.holds(obj, S) is holds
    assert protection.in_use([obj], S, except_uid="b") is holds
    assert protection.in_use([obj], S, except_uid="a") is False  # never counts itself


def test_forgotten_status_needs_no_connection_to_finish() -> None:
    status = protection.forgotten({"uuid": "u", "pendingRevocation": ["p"], "existInQuay": True,
                                   "revokeAfter": "t", "creation": {"id": "x"}, "message": ""})
    assert not protection.holds({**_listed("a", deleting=True), "status": status}, S)
    assert status["message"] == ""


def test_registration_names_the_secret_in_a_label_value_and_an_annotation() -> None:
    long = Ref("a" * 63, "b" * 253)
    assert len(protection.key(long)) <= 63 and protection.key(long) != protection.key(S)
    obj = {"metadata": {"annotations": {protection.CONNECTION_ANNOTATION: str(long)}}}
    assert protection.registered(obj) == long
    assert protection.registered({"metadata": {}}) is None


@pytest.mark.parametrize(
    ("status", "fresh"),
    [
        pytest.param({}, False, id="brand-new"),
        pytest.param({"uuid": "u", "existInQuay": True}, False, id="replacing-a-known-token"),
        pytest.param({"existInQuay": True}, True, id="migrated-from-the-original-operator"),
        pytest.param({"retry": {"inputs": "x", "attempts": 1, "notBefore": "t"}}, True,
                     id="after-a-failed-attempt"),
        pytest.param({"creation": {"id": "x", "title": "t", "since": "2026-12-07T09:00:00Z"}}, True,
                     id="stale-lease"),
        pytest.param({"creation": {"id": "x", "title": "t", "since": "2026-12-07T10:00:00Z"}}, False,
                     id="fresh-lease-held-by-another-delivery"),
    ],
)
def test_a_fresh_list_only_when_a_token_may_already_exist(status: dict[str, Any], fresh: bool) -> None:
    assert NOW is not None
    assert decide.fresh_list_needed(Status.from_object(status), NOW) is fresh


@pytest.mark.parametrize(
    ("exc", "handling"),
    [
        (Conflict("409"), Handling.RESTART),
        (PermanentError("403 on the connection Secret"), Handling.RECORD),
        (ConfigError("spec.name"), Handling.RECORD),
        (QuayAuthError("401"), Handling.RECORD),
        (QuayTransient("503"), Handling.RECORD),
        (KubeTransient("API server unreachable"), Handling.RAISE),
        (TemporaryError("another delivery is creating the token"), Handling.RAISE),
        (BadEvent("no ce-type"), Handling.RAISE),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_one_classifier_for_every_phase(exc: Any, handling: Handling) -> None:
    assert classify(exc) is handling


# -- what a user sees ----------------------------------------------------------------------------
def _finalizers(env: Env, name: str = "quay-credentials", namespace: str | None = None) -> list[str]:
    found = env.secret(name, namespace)
    assert found is not None, f"Secret {name} is gone"
    return list(found["metadata"].get("finalizers") or [])


def _events(env: Env, reason: str) -> list[Any]:
    from kubernetes import client

    events: Any = client.EventsV1Api(env.admin)
    return [e for e in events.list_namespaced_event(env.ns).items if e.reason == reason]


def test_a_connection_secret_is_protected_while_a_token_made_with_it_lives(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    assert _finalizers(env) == [protection.IN_USE_FINALIZER]
    meta = env.get()["metadata"]  # type: ignore[index]
    assert meta["annotations"][protection.CONNECTION_ANNOTATION] == f"{env.ns}/quay-credentials"
    # a second user costs no write to the Secret, and one user leaving does not release it
    env.dockertoken("second", title="second", ret="second-pull")
    assert env.send("add", "second").status_code == 204
    env.delete()
    assert env.send("update").status_code == 204
    assert env.get() is None and _finalizers(env) == [protection.IN_USE_FINALIZER]
    # preserving its token in Quay: the last user no longer needs the Secret
    env.patch_spec("second", preserveInQuayOnDeletion=True)
    assert env.send("update", "second").status_code == 204
    assert _finalizers(env) == []
    assert protection.CONNECTION_ANNOTATION not in (env.get("second")["metadata"].get("annotations") or {})  # type: ignore[index]


def test_deleting_an_in_use_connection_secret_keeps_it_until_its_dockertokens_go(env: Env) -> None:
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    uuid = env.get()["status"]["uuid"]  # type: ignore[index]
    env.core.delete_namespaced_secret("quay-credentials", env.ns)
    assert env.secret("quay-credentials")["metadata"]["deletionTimestamp"]  # type: ignore[index]
    # the next resync tells the owner, once: a condition and a Warning Event; the token still works
    assert env.resync().status_code == 204
    obj = env.get()
    conds = {c["type"]: c for c in obj["status"]["conditions"]}  # type: ignore[index]
    assert conds["Ready"]["status"] == "True"
    deleting = conds[protection.DELETING]
    assert deleting["status"] == "True" and f"{env.ns}/quay-credentials" in deleting["message"]
    assert "edit the Secret in place" in deleting["message"]
    writes = env.write_count()
    assert env.resync().status_code == 204
    assert env.write_count() == writes and len(_events(env, protection.DELETING)) == 1
    # no new user: a DockerToken that would start using it is told why, and makes no token
    env.dockertoken("late", title="late", ret="late-pull")
    assert env.send("add", "late").status_code == 204
    late = env.ready("late")
    assert late["status"] == "False" and late["reason"] == protection.DELETING, late
    assert env.tokens("late") == []
    # the user goes: its token is revoked, then the Secret goes too
    env.delete()
    assert env.send("update").status_code == 204
    assert env.get() is None and uuid not in [t["uuid"] for t in env.tokens()] and env.tokens() == []
    assert env.secret("quay-credentials") is None


def test_a_migrated_object_adopts_a_token_made_after_the_cache_was_filled(env: Env) -> None:
    env.conn_secret()
    env.dockertoken("first", title="first", ret="first-pull")
    assert env.send("add", "first").status_code == 204  # fills this connection's cached list
    assert env.quay_calls("list") == 1
    existing = env.quay_create("mytoken")  # the original operator's token, unseen by that list
    body = env.dockertoken()
    env.custom.patch_namespaced_custom_object(G, V, env.ns, P, "dockertoken-sample", {"metadata": {
        "finalizers": [DT_FINALIZER], "resourceVersion": body["metadata"]["resourceVersion"]}})
    env.custom.patch_namespaced_custom_object_status(G, V, env.ns, P, "dockertoken-sample",
                                                     {"status": {"existInQuay": True, "message": ""}})
    assert env.send("update").status_code == 204
    assert [t["uuid"] for t in env.tokens("mytoken")] == [existing]
    assert env.get()["status"]["uuid"] == existing  # type: ignore[index]
    assert env.quay_calls("list") == 2 and env.quay_calls("create") == 1  # "first" only
    # brand-new objects keep the cached list: N creations on one connection, N POSTs and no list
    env.quay.reset_counters()
    for i in range(5):
        env.dockertoken(f"bulk-{i}", title=f"bulk-{i}", ret=f"bulk-{i}-pull")
        assert env.send("add", f"bulk-{i}").status_code == 204
    print(f"\n5 creations behind a warm cache: {env.quay_calls('create')} POSTs, "
          f"{env.quay_calls('list')} lists")
    assert env.quay_calls("create") == 5 and env.quay_calls("list") == 0


def test_bulk_creation_on_a_cold_cache_costs_n_plus_c(env: Env) -> None:
    env.conn_secret()
    env.conn_secret("second-credentials", host=env.quay.base_url,
                    token=env.quay.add_oauth_token("devtable"))
    for i in range(6):
        env.dockertoken(f"bulk-{i}", title=f"bulk-{i}", ret=f"bulk-{i}-pull",
                        connSecretRef={"name": ("quay-credentials", "second-credentials")[i % 2]})
    for i in range(6):
        assert env.send("add", f"bulk-{i}").status_code == 204
    lines = [json.loads(line) for line in env.fn.logs().splitlines()
             if line.startswith("{") and f'"namespace": "{env.ns}"' in line and '"outcome"' in line]
    print(f"\n6 creations on 2 connection Secrets: {env.quay_calls('create')} POSTs, "
          f"{env.quay_calls('list')} lists; Secret writes for protection: "
          f"{sum('protect-connection-secret' in line['actions'] for line in lines)}")
    assert env.quay_calls("create") == 6 and env.quay_calls("list") == 2  # N + C
    assert sum("protect-connection-secret" in line["actions"] for line in lines) == 2  # one per Secret


# -- the plan ------------------------------------------------------------------------------------
def _observed(*, status: dict[str, Any] | None = None, deleting: bool = False, registered: Ref | None = None,
              secret_finalizers: tuple[str, ...] = (), secret_deleting: bool = False,
              preserve: bool = False) -> decide.Observed:
    from function.connection import parse_connection
    from function.model import DockerToken

    meta: dict[str, Any] = {"namespace": "ns", "name": "dt", "uid": "me", "generation": 1,
                            "finalizers": [FINALIZER]}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T09:59:00Z"
    dt = DockerToken.from_object({"metadata": meta, "status": status or {}, "spec": {
        "connSecretRef": {"name": "conn"}, "name": "t", "preserveInQuayOnDeletion": preserve}})
    secret_meta: dict[str, Any] = {"namespace": "ns", "name": "conn", "finalizers": list(secret_finalizers)}
    if secret_deleting:
        secret_meta["deletionTimestamp"] = "2026-12-07T09:59:00Z"
    assert NOW is not None
    return decide.Observed(
        dt=dt, now=NOW, verify=False, wave="", conn=parse_connection(
            {"host": "https://quay.example", "token": "t" * 40}, secret_name="conn"),
        conn_error=None, conn_version="v", ret_secret=None, old_ret_secret=None,
        conn_secret={"metadata": secret_meta}, registered=registered)


def test_plans_register_protect_and_release() -> None:
    first = decide.plan(_observed())
    assert first.in_use.protect == S and first.in_use.annotations == {protection.CONNECTION_ANNOTATION: "ns/conn"}
    refused = decide.plan(_observed(secret_deleting=True, secret_finalizers=(protection.IN_USE_FINALIZER,)))
    assert refused.failure is not None and refused.failure.reason == protection.DELETING
    assert refused.token is None  # no token made with a Secret on its way out
    user = decide.plan(_observed(registered=S, secret_deleting=True, status={"uuid": "u", "tokenName": "t"},
                                 secret_finalizers=(protection.IN_USE_FINALIZER,)))
    assert user.failure is None and user.in_use == protection.Steps()  # keeps working, nothing to do
    revoking = decide.plan(_observed(registered=S, deleting=True, status={"uuid": "u", "existInQuay": True}))
    assert revoking.revoke == ("u",) and revoking.in_use == protection.Steps(release=S, forget=True)
    preserved = decide.plan(_observed(registered=S, deleting=True, preserve=True, status={"uuid": "u"}))
    assert preserved.revoke == () and preserved.in_use == protection.Steps(release=S)
    old = decide.plan(_observed(deleting=True, status={"uuid": "u"}))  # made before the protection
    assert old.revoke == ("u",) and old.in_use == protection.Steps()
