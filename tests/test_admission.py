"""Tenant isolation at admission (issue 11): the ValidatingAdmissionPolicy of knative/base.

On the real kube-apiserver, with the policy installed from knative/base/admission.yaml by the
control plane's bootstrap. Each test gets two fresh namespaces, "team-a" and "team-b":

* ``tenant-a`` may do anything with DockerTokens (and their status) and Secrets in team-a,
  and nothing in team-b;
* ``gitops`` (a ServiceAccount of another namespace, as a GitOps tool's) has the same rights in
  team-a and, in team-b, ``get`` on the Secret ``quay-admin`` only and ``create`` on Secrets.

A DockerToken may name another namespace's connection Secret only if the requesting user may
read it, and another namespace as the place of its pull Secret only if the user may create
Secrets there. Nothing here runs the function: these are answers of the API server.
"""

from __future__ import annotations

# mypy: disable-error-code="arg-type,union-attr,operator,index,assignment,misc"
# (kubernetes 37's models type every field Optional and every body as a model class; these tests
# pass plain dicts and read fields the API server always fills in)
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests import waiting
from tests.controlplane import TENANTS, ControlPlane

G, V, P = "quay.herve4m.github.io", "v1alpha1", "dockertokens"
POLICY = "dockertoken-tenant-isolation"
FINALIZER = "quay.herve4m.github.io/finalizer"  # the function's
CONN = "quay-admin"  # the connection Secret gitops may read in team-b


def dockertoken(
    name: str,
    conn: tuple[str | None, str] = (None, "quay-credentials"),
    ret: tuple[str | None, str] | None = None,
) -> dict[str, Any]:
    """A DockerToken; ``conn`` and ``ret`` are (namespace or None for "unset", Secret name)."""

    def ref(target: tuple[str | None, str]) -> dict[str, str]:
        ns, secret = target
        return {"name": secret} if ns is None else {"name": secret, "namespace": ns}

    spec: dict[str, Any] = {"name": f"{name}-token", "connSecretRef": ref(conn)}
    if ret is not None:
        spec["retSecretRef"] = ref(ret)
    return {"apiVersion": f"{G}/{V}", "kind": "DockerToken", "metadata": {"name": name}, "spec": spec}


def denied(call: Callable[[], object]) -> dict[str, Any]:
    """Run ``call``, expect the policy's 403, return the Status body the user gets."""
    with pytest.raises(ApiException) as err:
        call()
    body: dict[str, Any] = json.loads(err.value.body)
    assert err.value.status == 403, body
    assert body["reason"] == "Forbidden"
    # Refused by the policy, not by RBAC (RBAC says 'User "x" cannot create resource ...').
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in body["message"], body["message"]
    return body


@dataclass
class Teams:
    cp: ControlPlane
    a: str
    b: str

    def api(self, identity: str) -> Any:
        return client.CustomObjectsApi(self.cp.api_client(identity))

    def create(self, identity: str, body: dict[str, Any], namespace: str | None = None) -> Any:
        return self.api(identity).create_namespaced_custom_object(G, V, namespace or self.a, P, body)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.api("admin").get_namespaced_custom_object(G, V, self.a, P, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return obj


def _subject(identity: str) -> dict[str, str]:
    user = TENANTS[identity][0]
    if user.startswith("system:serviceaccount:"):
        ns, name = user.split(":")[2:]
        return {"kind": "ServiceAccount", "name": name, "namespace": ns}
    return {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}


def _grant(rbac: Any, namespace: str, role: str, rules: list[dict[str, Any]], identities: list[str]) -> None:
    rbac.create_namespaced_role(namespace, {"metadata": {"name": role}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [_subject(i) for i in identities],
        },
    )


def _allowed(admin: Any, identity: str, namespace: str, verb: str, resource: str, name: str = "") -> bool:
    user, groups = TENANTS[identity]
    review = client.AuthorizationV1Api(admin).create_subject_access_review(
        {
            "spec": {
                "user": user,
                "groups": [*groups, "system:authenticated"],
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": "",
                    "resource": resource,
                    "name": name,
                },
            }
        }
    )
    return bool(review.status.allowed)


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout} s: {what}")
        waiting.pause(0.1)


_policy_enforced = False


@pytest.fixture
def teams(control_plane: ControlPlane, admin_api: Any) -> Iterator[Teams]:
    global _policy_enforced
    suffix = uuid.uuid4().hex[:8]
    t = Teams(control_plane, f"team-a-{suffix}", f"team-b-{suffix}")
    core, rbac = client.CoreV1Api(admin_api), client.RbacAuthorizationV1Api(admin_api)
    for ns in (t.a, t.b):
        core.create_namespace({"metadata": {"name": ns}})
    everything = ["get", "list", "watch", "create", "update", "patch", "delete"]
    _grant(
        rbac,
        t.a,
        "tenant",
        [
            {"apiGroups": [G], "resources": ["dockertokens", "dockertokens/status"], "verbs": everything},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": everything},
        ],
        ["tenant-a", "gitops"],
    )
    _grant(
        rbac,
        t.b,
        "read-quay-admin",
        [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [CONN], "verbs": ["get"]}],
        ["gitops"],
    )
    _grant(
        rbac,
        t.b,
        "create-secrets",
        [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}],
        ["gitops"],
    )
    # RBAC reaches the authorizer through an informer: wait until every binding counts.
    for identity in ("tenant-a", "gitops"):
        _wait_until(
            lambda i=identity: _allowed(admin_api, i, t.a, "create", "secrets"),
            f"{identity} may create Secrets in {t.a}",
        )
    _wait_until(lambda: _allowed(admin_api, "gitops", t.b, "get", "secrets", CONN), f"gitops reads {CONN}")
    _wait_until(lambda: _allowed(admin_api, "gitops", t.b, "create", "secrets"), "gitops creates in team-b")
    assert not _allowed(admin_api, "tenant-a", t.b, "get", "secrets", CONN)
    assert not _allowed(admin_api, "tenant-a", t.b, "create", "secrets")
    if not _policy_enforced:
        # The policy was created at bootstrap; the admission plugin picks it up asynchronously.
        def enforced() -> bool:
            try:
                t.api("tenant-a").create_namespaced_custom_object(
                    G, V, t.a, P, dockertoken("probe", conn=(t.b, CONN)), dry_run="All"
                )
            except ApiException as e:
                if e.status == 403 and POLICY in e.body:
                    return True
                raise
            return False

        _wait_until(enforced, f"ValidatingAdmissionPolicy {POLICY} is enforced")
        _policy_enforced = True
    yield t


# --- connSecretRef ------------------------------------------------------------------------------


def test_tenant_cannot_use_another_namespaces_connection_secret(teams: Teams) -> None:
    body = denied(lambda: teams.create("tenant-a", dockertoken("pull", conn=(teams.b, CONN))))
    message = body["message"]
    assert "spec.connSecretRef.namespace:" in message
    assert f"{teams.b}/{CONN} is not readable by you (tenant-a)" in message
    assert "leave connSecretRef.namespace unset" in message  # the fix
    assert teams.get("pull") is None
    # The same object with the tenant's own connection Secret is fine: the 403 was the reference.
    created = teams.create("tenant-a", dockertoken("pull", conn=(None, CONN)))
    assert created["spec"]["connSecretRef"] == {"name": CONN}


def test_user_who_may_read_the_connection_secret_can_use_it(teams: Teams) -> None:
    created = teams.create("gitops", dockertoken("pull", conn=(teams.b, CONN)))
    assert created["spec"]["connSecretRef"] == {"name": CONN, "namespace": teams.b}
    assert teams.get("pull") is not None
    # The right is per Secret: another Secret of team-b is refused, although gitops may create
    # Secrets there.
    body = denied(lambda: teams.create("gitops", dockertoken("other", conn=(teams.b, "other-admin"))))
    gitops = TENANTS["gitops"][0]
    assert f"{teams.b}/other-admin is not readable by you ({gitops})" in body["message"]


def test_existing_and_missing_secret_get_the_same_answer(teams: Teams, admin_api: Any) -> None:
    attempt = dockertoken("pull", conn=(teams.b, "team-b-quay"))
    missing = denied(lambda: teams.create("tenant-a", attempt))
    client.CoreV1Api(admin_api).create_namespaced_secret(
        teams.b, {"metadata": {"name": "team-b-quay"}, "stringData": {"host": "quay.example.com"}}
    )
    existing = denied(lambda: teams.create("tenant-a", attempt))
    assert existing == missing
    assert "spec.connSecretRef.namespace:" in existing["message"]


# --- retSecretRef ---------------------------------------------------------------------------------


def test_tenant_cannot_write_the_pull_secret_into_another_namespace(teams: Teams) -> None:
    body = denied(lambda: teams.create("tenant-a", dockertoken("pull", ret=(teams.b, "pull-secret"))))
    message = body["message"]
    assert "spec.retSecretRef.namespace:" in message
    assert f"you (tenant-a) may not create Secrets in namespace {teams.b}" in message
    assert "Leave retSecretRef.namespace unset" in message
    assert "connSecretRef" not in message  # only the rule that failed
    assert teams.get("pull") is None


def test_user_who_may_create_secrets_there_can_write_the_pull_secret_there(teams: Teams) -> None:
    created = teams.create("gitops", dockertoken("pull", ret=(teams.b, "pull-secret")))
    assert created["spec"]["retSecretRef"] == {"name": "pull-secret", "namespace": teams.b}
    # Both references into team-b at once, each backed by its right.
    teams.create("gitops", dockertoken("both", conn=(teams.b, CONN), ret=(teams.b, "pull-secret")))
    assert teams.get("both") is not None


def test_same_namespace_references_need_no_extra_right(teams: Teams) -> None:
    for name, ns in (("unset", None), ("explicit", teams.a), ("empty", "")):
        teams.create("tenant-a", dockertoken(name, conn=(ns, "quay-credentials"), ret=(ns, "pull")))
        assert teams.get(name) is not None, name


# --- UPDATE ----------------------------------------------------------------------------------------


def test_update_that_points_a_reference_at_another_namespace_is_denied(teams: Teams) -> None:
    api = teams.api("tenant-a")
    teams.create("tenant-a", dockertoken("pull", conn=(None, CONN), ret=(None, "pull")))
    before = teams.get("pull")
    assert before is not None
    body = denied(
        lambda: api.patch_namespaced_custom_object(
            G, V, teams.a, P, "pull", {"spec": {"connSecretRef": {"namespace": teams.b}}}
        )
    )
    assert "spec.connSecretRef.namespace:" in body["message"]
    replaced = json.loads(json.dumps(before))
    replaced["spec"]["retSecretRef"]["namespace"] = teams.b
    body = denied(lambda: api.replace_namespaced_custom_object(G, V, teams.a, P, "pull", replaced))
    assert "spec.retSecretRef.namespace:" in body["message"]
    after = teams.get("pull")
    assert after is not None and after["spec"] == before["spec"]
    # gitops holds the rights, so the same change is accepted from it.
    teams.api("gitops").patch_namespaced_custom_object(
        G, V, teams.a, P, "pull", {"spec": {"connSecretRef": {"namespace": teams.b}}}
    )
    after = teams.get("pull")
    assert after is not None and after["spec"]["connSecretRef"] == {"name": CONN, "namespace": teams.b}


def test_writes_that_leave_the_spec_alone_are_not_blocked(teams: Teams) -> None:
    """A DockerToken in team-a pointing into team-b that the policy let through for its creator
    (here an admin; in a cluster also any object older than the policy). The function and
    tenant-a, who has no right in team-b, can still write its status, labels and finalizers,
    and tenant-a can delete it; changing its spec is checked like any other change."""
    obj = dockertoken("legacy", conn=(teams.b, CONN), ret=(teams.b, "pull"))
    obj["metadata"]["finalizers"] = [FINALIZER, "example.com/backup"]
    teams.create("admin", obj)
    tenant, fn = teams.api("tenant-a"), teams.api("dockertoken-reconciler")

    # The function's writes: the status subresource, then (below) its finalizer.
    fn.patch_namespaced_custom_object_status(G, V, teams.a, P, "legacy", {"status": {"message": "working"}})
    # tenant-a: the status, labels, a finalizer of its own and the deletion itself.
    tenant.patch_namespaced_custom_object_status(G, V, teams.a, P, "legacy", {"status": {"uuid": "u-1"}})
    tenant.patch_namespaced_custom_object(G, V, teams.a, P, "legacy", {"metadata": {"labels": {"team": "a"}}})
    denied(
        lambda: tenant.patch_namespaced_custom_object(
            G, V, teams.a, P, "legacy", {"spec": {"name": "renamed"}}
        )
    )
    tenant.delete_namespaced_custom_object(G, V, teams.a, P, "legacy")
    tenant.patch_namespaced_custom_object(
        G, V, teams.a, P, "legacy", {"metadata": {"finalizers": [FINALIZER]}}
    )
    held = teams.get("legacy")
    assert held is not None
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == [FINALIZER]
    assert held["metadata"]["labels"] == {"team": "a"}
    assert held["status"] == {"message": "working", "uuid": "u-1"}
    assert held["spec"]["name"] == "legacy-token"

    # The function removes its finalizer the way it does (merge patch with the resourceVersion).
    fn.patch_namespaced_custom_object(
        G,
        V,
        teams.a,
        P,
        "legacy",
        {"metadata": {"finalizers": [], "resourceVersion": held["metadata"]["resourceVersion"]}},
    )
    assert teams.get("legacy") is None
