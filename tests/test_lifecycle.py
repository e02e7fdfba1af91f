"""The pull credential's lifecycle (issue 12), on the real control plane and the Quay simulator:
rotation before expiry, ServiceAccounts, the registry self-check, Kubernetes Events, the Secret
template. Events are posted by hand here; tests/test_convergence.py closes the loop.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import pytest

from function import renewal
from tests import harness
from tests.controlplane import ControlPlane
from tests.env import Env, dockerconfig
from tests.quaysim import QuaySimulator

GRACE = 3  # seconds: ROTATION_GRACE_SECONDS of this module's function process


@pytest.fixture(scope="module")
def lifecycle_fn(control_plane: ControlPlane) -> Iterator[harness.FunctionProcess]:
    """The function with a short rotation grace, and a clock the tests move (no test waits)."""
    with harness.FunctionProcess(control_plane.kubeconfigs["dockertoken-reconciler"], movable_clock=True,
                                 env={"ROTATION_GRACE_SECONDS": str(GRACE), "RESYNC_PERIOD": "10m"}) as fn:
        yield fn


@pytest.fixture
def lenv(control_plane: ControlPlane, namespace: str, quay: QuaySimulator,
         lifecycle_fn: harness.FunctionProcess) -> Env:
    lifecycle_fn.reset_clock()
    return Env(control_plane, namespace, quay, lifecycle_fn)


def _pass_time(env: Env, seconds: float) -> None:
    """Time passes for the function and for Quay alike (both clocks move; nobody waits)."""
    env.fn.advance(seconds)
    env.quay.advance(seconds)


def _when(value: str) -> datetime.datetime:
    parsed = renewal.parse_time(value)
    assert parsed is not None, value
    return parsed


def _events(env: Env, name: str = "dockertoken-sample") -> list[tuple[str, str]]:
    from kubernetes import client

    events: Any = client.EventsV1Api(env.admin)
    found = [e for e in events.list_namespaced_event(env.ns).items
             if e.regarding and e.regarding.name == name]
    found.sort(key=lambda e: (e.event_time, e.metadata.name))
    return [(str(e.type), str(e.reason)) for e in found]


# -- rotation ---------------------------------------------------------------------------------------
def test_a_token_is_rotated_before_it_expires_and_the_old_one_revoked_after_the_grace(lenv: Env) -> None:
    lenv.quay.token_expiration = 60  # APP_SPECIFIC_TOKEN_EXPIRATION: 60-second tokens
    lenv.conn_secret()
    lenv.dockertoken(renewBefore="52s")  # renew 8 s after creation (more than the grace)
    assert lenv.send("add").status_code == 204
    first = lenv.secret_data()
    status = lenv.get()["status"]  # type: ignore[index]
    created, expires = _when(first["created"]), _when(first["expiration"])
    assert _when(status["renewalTime"]) == expires - datetime.timedelta(seconds=52)
    assert _when(status["renewalTime"]) - created == datetime.timedelta(seconds=8)

    # not due yet: a resync creates nothing
    assert lenv.resync().status_code == 204
    assert lenv.quay_calls("create") == 1 and lenv.secret_data()["uuid"] == first["uuid"]

    _pass_time(lenv, (_when(status["renewalTime"]) - datetime.datetime.now(datetime.UTC)).total_seconds() + 1)
    assert lenv.resync().status_code == 204
    second = lenv.secret_data()
    assert second["uuid"] != first["uuid"] and _when(second["created"]) < expires
    assert lenv.quay_calls("create") == 2
    status = lenv.get()["status"]  # type: ignore[index]
    assert status["pendingRevocation"] == [first["uuid"]]  # in-flight pulls keep working
    assert {t["uuid"] for t in lenv.tokens()} == {first["uuid"], second["uuid"]}
    assert _when(status["renewalTime"]) > _when(second["created"])

    # the echo of that write changes nothing; after the grace, the next resync revokes the old one
    calls = lenv.quay_calls()
    assert lenv.send("update").status_code == 204 and lenv.quay_calls() == calls
    _pass_time(lenv, GRACE)
    assert lenv.resync().status_code == 204
    assert [t["uuid"] for t in lenv.tokens()] == [second["uuid"]]
    assert "pendingRevocation" not in lenv.get()["status"]  # type: ignore[index]
    reasons = [reason for _, reason in _events(lenv)]
    assert reasons.count("TokenRotated") == 1 and reasons.count("TokenRevoked") == 1, reasons


def test_a_renewal_window_shorter_than_the_resync_period_is_reported(lenv: Env) -> None:
    lenv.quay.token_expiration = 300  # 5-minute tokens, a 10-minute resync
    lenv.conn_secret()
    lenv.dockertoken()
    assert lenv.send("add").status_code == 204
    assert lenv.send("update").status_code == 204  # the pass that reads the Secret it wrote
    ready = lenv.ready()
    assert ready["status"] == "True" and "may expire before a resync renews it" in ready["message"], ready
    assert "resync more often" in ready["message"]


# -- ServiceAccounts ----------------------------------------------------------------------------------
def _pull_secrets(env: Env, account: str) -> list[str]:
    found = env.core.read_namespaced_service_account(account, env.ns)
    return [ref.name for ref in found.image_pull_secrets or ()]


def test_service_accounts_get_the_pull_secret_and_lose_it_again(lenv: Env) -> None:
    lenv.conn_secret()
    lenv.core.create_namespaced_service_account(lenv.ns, {"metadata": {"name": "builder"},
                                                          "imagePullSecrets": [{"name": "other"}]})
    lenv.core.create_namespaced_service_account(lenv.ns, {"metadata": {"name": "deployer"}})
    lenv.dockertoken(serviceAccounts=["builder", "deployer", "later"])
    assert lenv.send("add").status_code == 204
    pull = "dockertoken-sample-ret-secret"
    assert _pull_secrets(lenv, "builder") == ["other", pull]  # others' entries kept
    assert _pull_secrets(lenv, "deployer") == [pull]
    assert lenv.get()["status"]["serviceAccounts"] == ["builder", "deployer"]  # type: ignore[index]
    assert lenv.ready()["status"] == "True"  # a missing ServiceAccount is no error

    lenv.core.create_namespaced_service_account(lenv.ns, {"metadata": {"name": "later"}})
    assert lenv.resync().status_code == 204
    assert _pull_secrets(lenv, "later") == [pull]
    assert lenv.get()["status"]["serviceAccounts"] == ["builder", "deployer", "later"]  # type: ignore[index]

    writes = lenv.write_count()
    assert lenv.send("update").status_code == 204 and lenv.write_count() == writes  # no-op echo

    lenv.patch_spec(serviceAccounts=["builder", "later"])
    assert lenv.send("update").status_code == 204
    assert _pull_secrets(lenv, "deployer") == []

    lenv.delete()
    assert lenv.send("update").status_code == 204
    assert lenv.get() is None
    assert _pull_secrets(lenv, "builder") == ["other"] and _pull_secrets(lenv, "later") == []


# -- the registry ---------------------------------------------------------------------------------------
def test_the_new_code_is_checked_at_the_registry_and_its_own_host_named(lenv: Env) -> None:
    lenv.quay.server_hostname = f"localhost:{lenv.quay.port}"  # SERVER_HOSTNAME other than the API host
    lenv.conn_secret()
    lenv.dockertoken()
    calls = lenv.quay_calls()
    assert lenv.send("add").status_code == 204
    assert lenv.quay_calls() - calls == 4  # list, POST, then GET /v2/ and the login at the realm
    obj = lenv.get()
    verified = next(c for c in obj["status"]["conditions"] if c["type"] == "CredentialVerified")  # type: ignore[index]
    assert verified["status"] == "True" and verified["reason"] == "RegistryAccepted", verified
    auths = dockerconfig(lenv.secret_data())["auths"]
    assert set(auths) == {lenv.quay.host, f"localhost:{lenv.quay.port}"}
    calls = lenv.quay_calls()
    assert lenv.send("update").status_code == 204 and lenv.resync().status_code == 204
    assert lenv.quay_calls() - calls <= 1  # never on no-op or resync passes (the resync's list only)


def test_a_code_the_registry_refuses_is_reported(lenv: Env) -> None:
    lenv.conn_secret()
    lenv.dockertoken()
    lenv.quay.inject("v2_auth", statuses=[403])
    assert lenv.send("add").status_code == 204
    obj = lenv.get()
    verified = next(c for c in obj["status"]["conditions"] if c["type"] == "CredentialVerified")  # type: ignore[index]
    assert verified["status"] == "False" and verified["reason"] == "RegistryRefused", verified
    assert "403" in verified["message"]
    assert lenv.ready()["status"] == "True"  # the token exists; the condition says what the registry said


# -- Events ------------------------------------------------------------------------------------------------
def test_one_event_per_transition_and_none_from_echoes(lenv: Env) -> None:
    lenv.conn_secret()
    lenv.dockertoken()
    assert lenv.send("add").status_code == 204
    assert _events(lenv) == [("Normal", "TokenCreated")]
    for _ in range(3):
        assert lenv.send("update").status_code == 204  # echoes
    assert lenv.resync().status_code == 204
    assert _events(lenv) == [("Normal", "TokenCreated")]

    lenv.core.delete_namespaced_secret("dockertoken-sample-ret-secret", lenv.ns)
    assert lenv.resync().status_code == 204
    assert _events(lenv)[-1] == ("Normal", "SecretRestored")

    lenv.core.patch_namespaced_secret("quay-credentials", lenv.ns, {"stringData": {"token": "x" * 40}})
    lenv.patch_spec(name="renamed")
    assert lenv.send("update").status_code == 204
    assert lenv.send("update").status_code == 204  # its echo: no second Warning
    warnings = [e for e in _events(lenv) if e[0] == "Warning"]
    assert warnings == [("Warning", "QuayAuthenticationFailed")]
    assert len(_events(lenv)) == 3


# -- the Secret template -------------------------------------------------------------------------------------
def test_secret_template_labels_and_annotations_never_replace_the_marks(lenv: Env) -> None:
    lenv.conn_secret()
    lenv.dockertoken(secretTemplate={
        "labels": {"team": "blue", "app.kubernetes.io/managed-by": "someone-else"},
        "annotations": {"reflector.v1.k8s.emberstack.com/reflection-allowed": "true"}})
    assert lenv.send("add").status_code == 204
    meta: dict[str, Any] = lenv.secret()["metadata"]  # type: ignore[index]
    assert meta["labels"]["team"] == "blue"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "quay-dockertoken"
    assert meta["annotations"]["reflector.v1.k8s.emberstack.com/reflection-allowed"] == "true"
    # someone drops the template's label: the next pass puts it back
    lenv.core.patch_namespaced_secret("dockertoken-sample-ret-secret", lenv.ns,
                                      {"metadata": {"labels": {"team": None}}})
    assert lenv.resync().status_code == 204
    assert lenv.secret()["metadata"]["labels"]["team"] == "blue"  # type: ignore[index]
    assert json.loads(lenv.secret_data()[".dockerconfigjson"])["auths"]
