"""function.kube finds the API server and its credentials the ways a user runs the function:
in a pod (ServiceAccount files), or with a kubeconfig (token, token file, inline CA data)."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from function import kube
from function.errors import KubeTransient, PermanentError
from tests.controlplane import ControlPlane
from tests.env import G, P, V
from tests.rbac_audit import PROBE_AGENT


def _kubeconfig(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": cluster}], "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return path


def _probe(path: Path) -> kube.Kube:
    """A ``Kube`` for the kubeconfig at ``path``, its requests marked as a test's (left out of the RBAC audit)."""
    client = kube.Kube(kube.http_client(kube.load_config(str(path))))
    client._http.headers["User-Agent"] = PROBE_AGENT
    return client


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
    client = _probe(path)
    pages: list[httpx.Request] = []
    client._http.event_hooks["request"].append(pages.append)
    listed = list(client.iter_dockertokens(namespace, page_size=2))
    assert sorted(o["metadata"]["name"] for o in listed) == names
    # two pages of at most two objects: the second asked for with the first page's continue token
    assert len(pages) == 2
    assert "continue" not in pages[0].url.params and pages[1].url.params["continue"]
    assert all(r.url.params["limit"] == "2" for r in pages)


def test_a_wrong_token_is_a_permanent_error_naming_the_call(control_plane: ControlPlane, tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, {"server": control_plane.url, "certificate-authority": str(control_plane.ca_file)},
                       {"token": "not-a-token"})
    with pytest.raises(PermanentError, match="get dockertoken ns/x: API server answered 401"):
        kube.Kube(kube.http_client(kube.load_config(str(path)))).get_dockertoken("ns", "x")


def test_an_unreachable_api_server_is_transient(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}, {"token": "t"})
    with pytest.raises(KubeTransient, match="unreachable"):
        kube.Kube(kube.http_client(kube.load_config(str(path)))).get_secret("ns", "x")


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


# -- exec plugins (the one kubeconfig form handed to the ``kubernetes`` package) ------------------

# Prints an ExecCredential carrying the token kept in argv[1], and notes each run in argv[2].
# With argv[3] it says the token expires that many seconds from now.
EXEC_PLUGIN = '''\
import datetime, json, sys
with open(sys.argv[2], "a") as runs:
    runs.write("run\\n")
status = {"token": open(sys.argv[1]).read().strip()}
if len(sys.argv) > 3:
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=int(sys.argv[3]))
    status["expirationTimestamp"] = until.strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": status}))
'''


def _exec_kubeconfig(control_plane: ControlPlane, tmp_path: Path, identity: str,
                     expires_in: int | None = None) -> tuple[Path, Path, Path]:
    """A kubeconfig whose user is the exec plugin above; returns it, the token file and the run log."""
    plugin, token, runs = tmp_path / "plugin.py", tmp_path / "plugin-token", tmp_path / "plugin-runs"
    plugin.write_text(f"#!{sys.executable}\n{EXEC_PLUGIN}")
    plugin.chmod(0o700)
    token.write_text(control_plane.tokens[identity])
    token.chmod(0o600)
    args = [str(token), str(runs)] + ([str(expires_in)] if expires_in is not None else [])
    path = _kubeconfig(tmp_path, {"server": control_plane.url, "certificate-authority": str(control_plane.ca_file)},
                       {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                                 "args": args, "interactiveMode": "Never"}})
    return path, token, runs


def test_an_exec_plugin_kubeconfig_acts_as_the_plugins_identity(
        control_plane: ControlPlane, admin_api: Any, namespace: str, tmp_path: Path) -> None:
    _create_dockertokens(admin_api, namespace, ["a", "b"])
    path, _, runs = _exec_kubeconfig(control_plane, tmp_path, "dockertoken-source")
    client = _probe(path)
    assert runs.read_text().count("run") == 1
    # the source's identity may list DockerTokens ...
    assert sorted(o["metadata"]["name"] for o in client.iter_dockertokens(namespace)) == ["a", "b"]
    # ... and nothing else: so the request did carry that identity, not a stronger one
    with pytest.raises(PermanentError, match="answered 403"):
        client.get_secret(namespace, "any")


def test_an_expiring_exec_credential_is_fetched_again(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    # 60 s is inside the kubernetes package's 5-minute safety margin: expired on every request
    path, token, runs = _exec_kubeconfig(control_plane, tmp_path, "dockertoken-source", expires_in=60)
    client = _probe(path)
    with pytest.raises(PermanentError, match="answered 403"):
        client.get_secret(namespace, "missing")
    token.write_text(control_plane.tokens["dockertoken-reconciler"])  # the plugin's next answer
    assert client.get_secret(namespace, "missing") is None  # 404: the reconciler may read Secrets
    assert runs.read_text().count("run") >= 2
