"""The issue-12 fields of the DockerToken schema, on the real API server.

spec.renewBefore, spec.serviceAccounts and spec.secretTemplate are accepted when well-formed and
refused with a message naming the field otherwise; status.renewalTime, status.serviceAccounts
and a CredentialVerified condition can be written; ``kubectl get -o wide`` (the Table API)
shows the Renewal column. Objects of the original operator, without any of these fields, keep
working (test_controlplane.py creates such objects too).
"""

from __future__ import annotations

# mypy: disable-error-code="arg-type,union-attr,operator,index,assignment,misc"
# (kubernetes 37's models type every field Optional and every body as a model class; these tests
# pass plain dicts and read fields the API server always fills in)
import json
import shutil
import subprocess
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.controlplane import ControlPlane

G, V, P = "quay.herve4m.github.io", "v1alpha1", "dockertokens"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def _token(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "DockerToken",
        "metadata": {"name": name},
        "spec": {"connSecretRef": {"name": "quay-credentials"}, "name": "mytoken", **spec},
    }


def _create(api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        G, V, namespace, P, body)
    return created


def _refusal(api: Any, namespace: str, body: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as err:
        _create(api, namespace, body)
    assert err.value.status == 422, err.value.body
    message: str = json.loads(err.value.body)["message"]
    return message


@pytest.mark.parametrize("spec", [
    pytest.param({"renewBefore": "10m"}, id="renew-before-minutes"),
    pytest.param({"renewBefore": "1h30m"}, id="renew-before-compound"),
    pytest.param({"renewBefore": "1.5h"}, id="renew-before-fraction"),
    pytest.param({"renewBefore": "87600h"}, id="renew-before-maximum"),
    pytest.param({"serviceAccounts": ["default", "builder", "ci.bot-1"]}, id="service-accounts"),
    pytest.param({"serviceAccounts": [f"sa-{i}" for i in range(50)]}, id="fifty-accounts"),
    pytest.param({"serviceAccounts": []}, id="no-accounts"),
    pytest.param({"secretTemplate": {"labels": {"team": "a", "example.com/tier": "1"},
                                      "annotations": {"note": "any text, even: spaces"}}},
                 id="secret-template"),
    pytest.param({"secretTemplate": {}}, id="empty-secret-template"),
    pytest.param({"renewBefore": "12h", "serviceAccounts": ["default"],
                  "secretTemplate": {"labels": {"a": "b"}}}, id="all-together"),
])
def test_schema_accepts(admin_api: Any, namespace: str, spec: dict[str, Any]) -> None:
    obj = _create(admin_api, namespace, _token("good", **spec))
    for key, value in spec.items():
        assert obj["spec"][key] == value


@pytest.mark.parametrize(("spec", "field", "fragment"), [
    pytest.param({"renewBefore": "1d"}, "spec.renewBefore", "should match", id="days"),
    pytest.param({"renewBefore": "500ms"}, "spec.renewBefore", "should match", id="ms"),
    pytest.param({"renewBefore": "-5m"}, "spec.renewBefore", "should match", id="negative"),
    pytest.param({"renewBefore": "10"}, "spec.renewBefore", "should match", id="no-unit"),
    pytest.param({"renewBefore": 600}, "spec.renewBefore", "must be of type string",
                 id="number"),
    pytest.param({"renewBefore": "0s"}, "spec.renewBefore", "must be a positive duration",
                 id="zero"),
    pytest.param({"renewBefore": "87600h1s"}, "spec.renewBefore", "at most 87600h",
                 id="too-long"),
    pytest.param({"renewBefore": "1" * 40 + "h"}, "spec.renewBefore", "may not be more than 32",
                 id="too-many-characters"),
    pytest.param({"serviceAccounts": ["Default"]}, "spec.serviceAccounts[0]", "should match",
                 id="upper-case"),
    pytest.param({"serviceAccounts": ["ok", "under_score"]}, "spec.serviceAccounts[1]",
                 "should match", id="underscore"),
    pytest.param({"serviceAccounts": ["-leading"]}, "spec.serviceAccounts[0]", "should match",
                 id="leading-dash"),
    pytest.param({"serviceAccounts": [""]}, "spec.serviceAccounts[0]", "at least 1",
                 id="empty-name"),
    pytest.param({"serviceAccounts": ["a" * 254]}, "spec.serviceAccounts[0]", "may not be more than 253",
                 id="too-long-name"),
    pytest.param({"serviceAccounts": ["default", "default"]}, "spec.serviceAccounts[1]",
                 "Duplicate value", id="duplicate"),
    pytest.param({"serviceAccounts": [f"sa-{i}" for i in range(51)]}, "spec.serviceAccounts",
                 "must have at most 50 items", id="fifty-one"),
    pytest.param({"serviceAccounts": "default"}, "spec.serviceAccounts", "must be of type array",
                 id="not-a-list"),
    pytest.param({"secretTemplate": {"labels": {"a": 1}}}, "spec.secretTemplate.labels.a",
                 "must be of type string", id="label-not-a-string"),
    pytest.param({"secretTemplate": {"annotations": ["a"]}}, "spec.secretTemplate.annotations",
                 "must be of type object", id="annotations-not-a-map"),
])
def test_schema_refuses_naming_the_field(admin_api: Any, namespace: str, spec: dict[str, Any],
                                         field: str, fragment: str) -> None:
    message = _refusal(admin_api, namespace, _token("bad", **spec))
    assert field in message and fragment in message, message


def test_status_fields_and_the_renewal_column(control_plane: ControlPlane, admin_api: Any,
                                              namespace: str) -> None:
    api = client.CustomObjectsApi(admin_api)
    _create(admin_api, namespace, _token("shown", renewBefore="10m", serviceAccounts=["default"]))
    status = {
        "expiration": "Fri, 27 Nov 2026 17:22:43 -0000",
        "renewalTime": "2026-11-27T17:12:43Z",
        "expirationTime": "2026-11-27T17:22:43Z",
        "createdTime": "2026-11-26T17:22:43Z",
        "lastAccessedTime": "2026-11-26T18:00:00Z",
        "registryHost": "quay.example.com",
        "renewRequest": "2026-11-26T17:30:00Z",
        "serviceAccounts": ["default"],
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "",
             "lastTransitionTime": "2026-11-26T17:22:43Z"},
            {"type": "CredentialVerified", "status": "False", "reason": "RegistryRefused",
             "message": "GET http://q/v2/auth: the registry refused the token (401 UNAUTHORIZED: "
                        "Invalid token)", "lastTransitionTime": "2026-11-26T17:22:43Z"},
        ],
    }
    patched = api.patch_namespaced_custom_object_status(G, V, namespace, P, "shown",
                                                        {"status": status})
    assert patched["status"] == status

    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object_status(G, V, namespace, P, "shown",
                                                  {"status": {"renewalTime": "tomorrow"}})
    assert err.value.status == 422 and "status.renewalTime" in err.value.body
    for key in ("expirationTime", "createdTime", "lastAccessedTime"):
        with pytest.raises(ApiException) as err:
            api.patch_namespaced_custom_object_status(G, V, namespace, P, "shown",
                                                      {"status": {key: "Fri, 27 Nov 2026 17:22:43 -0000"}})
        assert err.value.status == 422 and f"status.{key}" in err.value.body

    # The Table API, as kubectl asks for it.
    answer = httpx.get(f"{control_plane.url}/apis/{G}/{V}/namespaces/{namespace}/{P}",
                       headers={"Accept": TABLE,
                                "Authorization": f"Bearer {control_plane.tokens['admin']}"},
                       verify=str(control_plane.ca_file), timeout=30)
    assert answer.status_code == 200, answer.text
    table = answer.json()
    columns = {c["name"]: c for c in table["columnDefinitions"]}
    assert columns["Renewal"]["priority"] == 1  # only in -o wide
    assert columns["Renewal"]["type"] == "string"
    (row,) = table["rows"]
    names = [c["name"] for c in table["columnDefinitions"]]
    assert row["cells"][names.index("Renewal")] == "2026-11-27T17:12:43Z"

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed; it is needed to check `kubectl get -o wide`")
    kubeconfig = str(control_plane.kubeconfigs["admin"])
    plain, wide = (subprocess.run([kubectl, "--kubeconfig", kubeconfig, "-n", namespace, "get",
                                   P, *extra], capture_output=True, text=True, timeout=60,
                                  check=True).stdout.splitlines()
                   for extra in ([], ["-o", "wide"]))
    assert "RENEWAL" not in plain[0] and "EXPIRATION" in plain[0]
    assert "2026-11-27T17:22:43Z" in plain[1]  # the expiry, RFC 3339, without -o wide
    assert wide[0].split()[-5:] == ["EXPIRATION", "RENEWAL", "LAST", "ACCESSED", "AGE"]
    assert "2026-11-27T17:12:43Z" in wide[1] and "2026-11-26T18:00:00Z" in wide[1]


def test_an_original_operator_object_needs_none_of_the_new_fields(admin_api: Any,
                                                                  namespace: str) -> None:
    obj = _create(admin_api, namespace, _token("legacy", retSecretRef={"name": "pull"}))
    assert set(obj["spec"]) == {"connSecretRef", "name", "retSecretRef",
                                "preserveInQuayOnDeletion"}
