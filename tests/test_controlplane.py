"""The control plane is the real thing: schema validation, conflicts, finalizers and RBAC."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.controlplane import ControlPlane

G, V, P = "quay.herve4m.github.io", "v1alpha1", "dockertokens"


def _token(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "DockerToken",
        "metadata": {"name": name},
        "spec": {"connSecretRef": {"name": "quay-credentials"}, "name": "mytoken", **spec},
    }


def test_version_is_the_pinned_release(admin_api: Any) -> None:
    info = client.VersionApi(admin_api).get_code()
    assert info.git_version == "v1.36.3"
    assert (info.major, info.minor) == ("1", "36")


def test_schema_rejects_a_dockertoken_without_connsecretref(admin_api: Any, namespace: str) -> None:
    body = _token("no-conn")
    del body["spec"]["connSecretRef"]
    with pytest.raises(ApiException) as err:
        client.CustomObjectsApi(admin_api).create_namespaced_custom_object(G, V, namespace, P, body)
    assert err.value.status == 422
    assert "spec.connSecretRef" in str(err.value.body)


def test_schema_defaults_preserve_in_quay_on_deletion(admin_api: Any, namespace: str) -> None:
    api: Any = client.CustomObjectsApi(admin_api)
    obj = api.create_namespaced_custom_object(G, V, namespace, P, _token("defaults"))
    assert obj["spec"]["preserveInQuayOnDeletion"] is False


def test_stale_resource_version_gets_409(admin_api: Any, namespace: str) -> None:
    api: Any = client.CustomObjectsApi(admin_api)
    obj = api.create_namespaced_custom_object(G, V, namespace, P, _token("stale"))
    stale = obj["metadata"]["resourceVersion"]
    api.patch_namespaced_custom_object(G, V, namespace, P, "stale", {"metadata": {"labels": {"a": "1"}}})
    with pytest.raises(ApiException) as err:
        api.patch_namespaced_custom_object(
            G, V, namespace, P, "stale", {"metadata": {"resourceVersion": stale, "labels": {"a": "2"}}}
        )
    assert err.value.status == 409


def test_finalizer_holds_deletion_until_removed(admin_api: Any, namespace: str) -> None:
    api: Any = client.CustomObjectsApi(admin_api)
    body = _token("held")
    body["metadata"]["finalizers"] = ["quay.herve4m.github.io/finalizer"]
    api.create_namespaced_custom_object(G, V, namespace, P, body)
    api.delete_namespaced_custom_object(G, V, namespace, P, "held")
    obj = api.get_namespaced_custom_object(G, V, namespace, P, "held")
    assert obj["metadata"]["deletionTimestamp"]
    api.patch_namespaced_custom_object(G, V, namespace, P, "held", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as err:
        api.get_namespaced_custom_object(G, V, namespace, P, "held")
    assert err.value.status == 404


def test_function_identity_has_exactly_its_role(control_plane: ControlPlane, namespace: str) -> None:
    fn = control_plane.api_client("dockertoken-reconciler")
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(fn).list_namespaced_pod(namespace)
    assert err.value.status == 403
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(fn).list_namespaced_config_map(namespace)  # nothing but its own kinds
    assert err.value.status == 403
    # Secrets: listed too, since the resync plans a page's pull Secrets from one labelled list
    assert client.CoreV1Api(fn).list_namespaced_secret(namespace).items == []
    created = client.CoreV1Api(fn).create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="ret"), string_data={"k": "v"})
    )
    assert created.metadata and created.metadata.name == "ret"
    api: Any = client.CustomObjectsApi(fn)  # custom objects come back as plain dicts
    assert api.list_cluster_custom_object(G, V, P)["kind"] == "DockerTokenList"
    with pytest.raises(ApiException) as err:  # creating DockerTokens is the user's job
        api.create_namespaced_custom_object(G, V, namespace, P, _token("x"))
    assert err.value.status == 403
