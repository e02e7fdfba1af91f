"""Tenant isolation in the function itself (issue 11 point 2): objects created by an admin (the
admission policy lets admins through, as it would objects made before the policy) that reference
another namespace without its consent are refused with no Quay call and no Secret written, with
one message whether or not the referenced Secret exists; the consent annotation lets them work.
"""

from __future__ import annotations

from typing import Any

from tests import checks
from tests.env import Env
from tests.quaysim import ADMIN_TOKEN

CONSENT = "quay.herve4m.github.io/allowed-namespaces"


def _other_namespace(env: Env, suffix: str, annotations: dict[str, str] | None = None) -> str:
    name = f"{env.ns}-{suffix}"
    body: dict[str, Any] = {"metadata": {"name": name, "annotations": annotations or {}}}
    env.core.create_namespace(body)
    return name


def _refusal(env: Env, name: str) -> str:
    assert env.send("add", name).status_code == 204
    ready = env.ready(name)
    assert ready["status"] == "False" and ready["reason"] == "CrossNamespaceRefDenied", ready
    return str(ready["message"])


def test_another_namespaces_connection_secret_needs_its_consent(env: Env) -> None:
    team_b = _other_namespace(env, "b")
    env.conn_secret("quay-admin", namespace=team_b)
    env.dockertoken("uses-existing", ret="existing-pull", connSecretRef={"name": "quay-admin", "namespace": team_b})
    env.dockertoken("uses-missing", ret="missing-pull", connSecretRef={"name": "quay-admin", "namespace": f"{team_b}x"})
    existing, missing = _refusal(env, "uses-existing"), _refusal(env, "uses-missing")
    # the same words, apart from the names the user wrote: no oracle for what exists over there
    assert existing.replace(team_b, "NS") == missing.replace(f"{team_b}x", "NS")
    assert "spec.connSecretRef.namespace" in existing and f"kubectl annotate secret -n {team_b} quay-admin" in existing
    assert env.quay_calls() == 0 and env.secret("existing-pull") is None

    env.core.patch_namespaced_secret("quay-admin", team_b, {"metadata": {"annotations": {CONSENT: f"other,{env.ns}"}}})
    assert env.resync("uses-existing").status_code == 204  # the consent changed: retried at once
    checks.assert_converged(env, "uses-existing", ret="existing-pull")


def test_writing_the_pull_secret_into_another_namespace_needs_its_consent(env: Env) -> None:
    env.conn_secret()
    target = _other_namespace(env, "pull")
    env.dockertoken(ret=None, retSecretRef={"name": "pull", "namespace": target})
    message = _refusal(env, "dockertoken-sample")
    assert "spec.retSecretRef.namespace" in message and f"kubectl annotate namespace {target}" in message
    assert env.quay_calls() == 0 and env.secret("pull", target) is None
    env.core.patch_namespace(target, {"metadata": {"annotations": {CONSENT: "*"}}})
    assert env.resync().status_code == 204
    checks.assert_converged(env, ret="pull", ret_namespace=target)


def test_same_namespace_references_need_no_consent(env: Env) -> None:
    env.conn_secret(host=env.quay.base_url, token=ADMIN_TOKEN)
    env.dockertoken(connSecretRef={"name": "quay-credentials", "namespace": env.ns})
    assert env.send("add").status_code == 204
    checks.assert_converged(env)
