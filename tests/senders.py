"""The senders the function trusts, as the test control plane has them (issue 18).

With Knative Eventing's ``authentication-oidc`` feature on, the ApiServerSource controller makes
an OIDC ServiceAccount for the source, a Role letting the adapter's own ServiceAccount request
tokens for it (``<source>-create-oidc-token``, eventing ``resources/oidc_rolebinding.go``), and
gives the adapter ``K_AUDIENCE`` and ``K_OIDC_SERVICE_ACCOUNT``: the adapter then sends
``Authorization: Bearer`` with a token for the sink's audience (``sink.audience`` in
knative/base/apiserversource.yaml). :func:`install_oidc_identity` makes the same objects here, so
the real adapter sends real tokens. Tests mint tokens with the API server's TokenRequest API.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.controlplane import SA_NAMESPACE, ControlPlane

AUDIENCE = "quay-dockertoken"
SOURCE = "dockertoken-source"
# auth.GetOIDCServiceAccountNameForResource(ApiServerSource, dockertoken-source), lower-cased
SOURCE_OIDC_SA = f"{SOURCE}-oidc-sources.knative.dev-apiserversource"
RESYNC_SA = "dockertoken-resync"
IDENTITIES = (f"system:serviceaccount:{SA_NAMESPACE}:{SOURCE_OIDC_SA}",
              f"system:serviceaccount:{SA_NAMESPACE}:{RESYNC_SA}")
# What the function's environment says in knative/base/service.yaml, for the test control plane.
FUNCTION_ENV = {"SENDER_AUTH": "tokenreview", "SENDER_AUDIENCE": AUDIENCE,
                "SENDER_IDENTITIES": ",".join(IDENTITIES)}


def _admin(cp: ControlPlane) -> httpx.Client:
    return httpx.Client(base_url=cp.url, verify=str(cp.ca_file), timeout=30,
                        headers={"Authorization": f"Bearer {cp.tokens['admin']}"})


def install_oidc_identity(cp: ControlPlane) -> None:
    """The OIDC ServiceAccount of the source and the Role Knative's controller gives the adapter."""
    objects: list[tuple[str, dict[str, Any]]] = [
        (f"/api/v1/namespaces/{SA_NAMESPACE}/serviceaccounts",
         {"metadata": {"name": SOURCE_OIDC_SA}}),
        (f"/apis/rbac.authorization.k8s.io/v1/namespaces/{SA_NAMESPACE}/roles",
         {"metadata": {"name": f"{SOURCE}-create-oidc-token"},
          "rules": [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                     "resourceNames": [SOURCE_OIDC_SA], "verbs": ["create"]}]}),
        (f"/apis/rbac.authorization.k8s.io/v1/namespaces/{SA_NAMESPACE}/rolebindings",
         {"metadata": {"name": f"{SOURCE}-create-oidc-token"},
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                      "name": f"{SOURCE}-create-oidc-token"},
          "subjects": [{"kind": "ServiceAccount", "name": SOURCE, "namespace": SA_NAMESPACE}]}),
    ]
    with _admin(cp) as http:
        for path, body in objects:
            resp = http.post(path, json=body)
            assert resp.status_code in (201, 409), resp.text


def mint(cp: ControlPlane, service_account: str, *, audience: str = AUDIENCE,
         seconds: int = 3600, namespace: str = SA_NAMESPACE) -> str:
    """A real token of ``service_account`` for ``audience``, from the TokenRequest API."""
    with _admin(cp) as http:
        resp = http.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
                         json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                               "spec": {"audiences": [audience], "expirationSeconds": seconds}})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["status"]["token"])
