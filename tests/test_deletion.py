"""Deletion never hangs silently: whatever blocks the cleanup is in status with the way out,
and once the way out is taken (or Quay is back and the retry is due) the object goes.

tests/test_function.py covers the basic cases (connection Secret deleted then
preserveInQuayOnDeletion, a 503 on revoke); these are the other ways cleanup can fail.
tests/test_convergence.py proves that a blocked deletion does not feed itself events.
"""

from __future__ import annotations

import time

import pytest

from tests import checks
from tests.controlplane import free_port
from tests.env import Env
from tests.quaysim import ADMIN_TOKEN


def _created(env: Env, **conn: str) -> str:
    env.conn_secret(**(conn or {"host": env.quay.base_url, "token": ADMIN_TOKEN}))
    env.dockertoken()
    assert env.send("add").status_code == 204
    uuid = env.get()["status"]["uuid"]  # type: ignore[index]
    assert isinstance(uuid, str)
    return uuid


def _assert_blocked(env: Env, *words: str) -> str:
    ready = env.ready()
    assert ready["status"] == "False" and ready["reason"] == "CleanupBlocked", ready
    message = str(ready["message"])
    # the way out is always spelled out
    assert "preserveInQuayOnDeletion: true" in message and "quay.herve4m.github.io/finalizer" in message
    for word in words:
        assert word in message, message
    assert env.get() is not None
    return message


def test_connection_secret_restored_lets_the_deletion_finish(env: Env) -> None:
    _created(env)
    env.delete_conn_secret_unprotected()
    env.delete()
    assert env.send("update").status_code == 204
    _assert_blocked(env, "secret not found")
    env.conn_secret()
    assert env.resync().status_code == 204
    assert env.get() is None and env.tokens() == [] and env.secret() is None


def test_broken_connection_secret_blocks_with_the_key_to_fix(env: Env) -> None:
    _created(env)
    env.core.patch_namespaced_secret("quay-credentials", env.ns, {"stringData": {"timeout": "x"}})
    env.delete()
    assert env.send("update").status_code == 204
    _assert_blocked(env, '"timeout"')
    env.core.patch_namespaced_secret("quay-credentials", env.ns, {"stringData": {"timeout": "5"}})
    assert env.send("update").status_code == 204
    assert env.get() is None and env.tokens() == []


def test_rejected_credentials_block_then_preserve_keeps_the_token(env: Env) -> None:
    uuid = _created(env)
    env.core.patch_namespaced_secret("quay-credentials", env.ns,
                                     {"stringData": {"token": "revoked0000000000000000000000000000000"}})
    env.delete()
    assert env.send("update").status_code == 204
    _assert_blocked(env, "not accepted")
    env.patch_spec(preserveInQuayOnDeletion=True)
    assert env.send("update").status_code == 204
    assert env.get() is None
    assert [t["uuid"] for t in env.tokens()] == [uuid]  # kept in Quay, as asked


@pytest.mark.parametrize("arm", [{"hang": 1.6}, {"drop": 1}, {"statuses": [429]}, {"delay": 1.6}],
                         ids=["hang", "reset", "429", "slow"])
def test_quay_failing_during_deletion_is_blocked_then_a_retry_completes(
        env: Env, arm: dict[str, object]) -> None:
    _created(env, host=env.quay.base_url, token=ADMIN_TOKEN, timeout="1")
    env.quay.inject("revoke", **arm)  # type: ignore[arg-type]
    env.delete()
    started = time.monotonic()
    assert env.send("update").status_code == 204
    assert time.monotonic() - started < 5, "a hanging Quay must not hang the deletion"
    _assert_blocked(env, "/api/v1/user/apptoken/")
    env.quay.clear_faults()
    # with "slow", the server revokes after the client gave up: before or after the retry's
    # own revocation, which then succeeds or finds it gone; both complete the deletion
    assert env.request_reconcile().status_code == 204
    assert env.get() is None and env.tokens() == [] and env.secret() is None


def test_quay_unreachable_during_deletion_names_the_host(env: Env) -> None:
    _created(env)
    closed = f"127.0.0.1:{free_port()}"
    env.core.patch_namespaced_secret("quay-credentials", env.ns,
                                     {"stringData": {"host": f"http://{closed}"}})
    env.delete()
    assert env.send("update").status_code == 204
    _assert_blocked(env, closed, '"host"')
    env.core.patch_namespaced_secret("quay-credentials", env.ns,
                                     {"stringData": {"host": env.quay.base_url}})
    assert checks.deliver(env, "update").status_code == 204
    assert env.get() is None and env.tokens() == []


def test_token_revoked_by_hand_does_not_block_deletion(env: Env) -> None:
    env.quay_revoke(_created(env))
    env.delete()
    assert env.send("update").status_code == 204
    assert env.get() is None and env.secret() is None


def test_deletion_also_revokes_a_replaced_token_still_pending(env: Env) -> None:
    old = _created(env)
    env.patch_spec(name="renamed")
    env.quay.inject("revoke", statuses=[503])
    assert env.send("update").status_code == 204
    status = env.get()["status"]  # type: ignore[index]
    assert status["pendingRevocation"] == [old] and status["uuid"] != old
    env.quay.clear_faults()
    env.delete()
    assert env.send("update").status_code == 204
    assert env.get() is None and env.tokens() == []


def test_quay_down_for_a_while_the_first_resync_after_the_backoff_completes(env: Env) -> None:
    _created(env)
    env.quay.inject("revoke", statuses=[503] * 10)
    env.delete()
    assert checks.deliver(env, "update", attempts=3).status_code == 204
    _assert_blocked(env, "503")
    env.quay.clear_faults()
    assert env.resync().status_code == 503  # inside the backoff: no Quay call, still failing
    assert env.get() is not None
    env.expire_backoff()
    assert env.resync().status_code == 204
    assert env.get() is None and env.tokens() == []


def test_deleting_an_object_that_never_made_a_token_needs_no_connection(env: Env) -> None:
    """Its connection Secret never existed, so nothing was made in Quay: the deletion just completes."""
    env.dockertoken()
    assert env.send("add").status_code == 204
    assert env.ready()["reason"] == "ConnectionSecretNotFound"
    assert env.get()["metadata"]["finalizers"] == ["quay.herve4m.github.io/finalizer"]  # type: ignore[index]
    env.delete()
    assert env.send("update").status_code == 204
    assert env.get() is None and env.quay_calls() == 0


def test_deleting_a_refused_cross_namespace_object_needs_no_quay(env: Env) -> None:
    env.conn_secret(namespace="default", name=f"shared-{env.ns}")
    env.dockertoken(connSecretRef={"name": f"shared-{env.ns}", "namespace": "default"})
    assert env.send("add").status_code == 204
    assert env.ready()["reason"] == "CrossNamespaceRefDenied"
    env.delete()
    assert env.send("update").status_code == 204
    assert env.get() is None and env.quay_calls() == 0
