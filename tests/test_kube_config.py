"""function.kube finds the API server and its credentials the ways a user runs the function:
in a pod (ServiceAccount files), or with a kubeconfig (token, token file, inline CA data)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from function import kube
from function.errors import PermanentError
from tests.controlplane import ControlPlane
from tests.env import G, P, V


def _kubeconfig(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": cluster}], "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return path


def _create_dockertokens(admin_api: Any, namespace: str, names: list[str]) -> None:
    from kubernetes import client

    custom = client.CustomObjectsApi(admin_api)
    for name in names:
        custom.create_namespaced_custom_object(G, V, namespace, P, {
            "apiVersion": f"{G}/{V}", "kind": "DockerToken", "metadata": {"name": name},
            "spec": {"connSecretRef": {"name": "quay-credentials"}, "name": name}})


def test_token_file_and_inline_ca_reach_the_real_api_server_and_list_every_page(
        control_plane: ControlPlane, admin_api: Any, namespace: str, tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    _create_dockertokens(admin_api, namespace, names)
    (tmp_path / "token").write_text(control_plane.tokens["dockertoken-reconciler"] + "\n")
    ca = base64.b64encode(control_plane.ca_file.read_bytes()).decode()
    path = _kubeconfig(tmp_path, {"server": control_plane.url, "certificate-authority-data": ca},
                       {"tokenFile": "token"})
    http = kube.http_client(kube.load_config(str(path)))
    pages: list[httpx.Request] = []
    http.event_hooks["request"].append(pages.append)
    with http:
        listed = list(kube.Kube(http).iter_dockertokens(namespace, page_size=2))
    assert sorted(o["metadata"]["name"] for o in listed) == names
    # two pages of at most two objects: the second asked for with the first page's continue token
    assert len(pages) == 2
    assert "continue" not in pages[0].url.params and pages[1].url.params["continue"]
    assert all(r.url.params["limit"] == "2" for r in pages)


def test_a_wrong_token_is_a_permanent_error_naming_the_call(control_plane: ControlPlane, tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, {"server": control_plane.url, "certificate-authority": str(control_plane.ca_file)},
                       {"token": "not-a-token"})
    with pytest.raises(PermanentError, match="get dockertoken ns/x: API server answered 401"):
        kube.Kube.from_kubeconfig(path).get_dockertoken("ns", "x")


def test_an_unreachable_api_server_is_transient(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}, {"token": "t"})
    with pytest.raises(kube.KubeTransient, match="unreachable"):
        kube.Kube.from_kubeconfig(path).get_secret("ns", "x")


def test_in_cluster_uses_the_service_account_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   control_plane: ControlPlane) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_bytes(control_plane.ca_file.read_bytes())
    monkeypatch.setattr(kube, "SA_DIR", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    config = kube.load_config()
    assert config.server == "https://10.96.0.1:443" and config.token() == "sa-token"


def test_a_kubeconfig_without_a_server_says_so(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="no server"):
        kube.load_config(str(_kubeconfig(tmp_path, {}, {"token": "t"})))
