"""One test's world: a namespace on the real control plane, a Quay simulator, the running function.

Integration tests drive everything over HTTP: they create objects as the admin user, post
events to the function as ApiServerSource would, and read back what a user would see.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests import harness
from tests.controlplane import ControlPlane
from tests.quaysim import ADMIN_TOKEN, QuaySimulator

G, V, P = "quay.herve4m.github.io", "v1alpha1", "dockertokens"
FINALIZER = "quay.herve4m.github.io/finalizer"
USER = "devtable"
_WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Env:
    cp: ControlPlane
    ns: str
    quay: QuaySimulator
    fn: harness.FunctionProcess

    @property
    def admin(self) -> Any:
        return self.cp.api_client("admin")

    @property
    def custom(self) -> Any:
        return client.CustomObjectsApi(self.admin)

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.admin)

    # -- objects ------------------------------------------------------------------------------
    def conn_secret(self, name: str = "quay-credentials", namespace: str | None = None,
                    **data: str) -> None:
        data = data or {"host": self.quay.base_url, "token": ADMIN_TOKEN}
        self.core.create_namespaced_secret(
            namespace or self.ns, {"metadata": {"name": name}, "stringData": data})

    def delete_conn_secret_unprotected(self, name: str = "quay-credentials",
                                       namespace: str | None = None) -> None:
        """Delete a connection Secret after taking the function's in-use finalizer off by hand (as
        for objects made before the protection existed): it goes at once."""
        ns = namespace or self.ns
        self.core.patch_namespaced_secret(name, ns, {"metadata": {"finalizers": None}})
        self.core.delete_namespaced_secret(name, ns)

    def dockertoken(self, name: str = "dockertoken-sample", *, title: str = "mytoken",
                    ret: str | None = "dockertoken-sample-ret-secret", **spec: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": f"{G}/{V}",
            "kind": "DockerToken",
            "metadata": {"name": name},
            "spec": {"connSecretRef": {"name": "quay-credentials"}, "name": title, **spec},
        }
        if ret:
            body["spec"]["retSecretRef"] = {"name": ret}
        return dict(self.custom.create_namespaced_custom_object(G, V, self.ns, P, body))

    def get(self, name: str = "dockertoken-sample") -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(G, V, self.ns, P, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_spec(self, dt_name: str = "dockertoken-sample", **spec: Any) -> None:
        self.custom.patch_namespaced_custom_object(G, V, self.ns, P, dt_name, {"spec": spec})

    def delete(self, name: str = "dockertoken-sample") -> None:
        self.custom.delete_namespaced_custom_object(G, V, self.ns, P, name)

    def secret(self, name: str = "dockertoken-sample-ret-secret",
               namespace: str | None = None) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.admin.sanitize_for_serialization(
                self.core.read_namespaced_secret(name, namespace or self.ns))
            return found
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def secret_data(self, name: str = "dockertoken-sample-ret-secret",
                    namespace: str | None = None) -> dict[str, str]:
        found = self.secret(name, namespace)
        assert found is not None, f"Secret {name} not found"
        return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}

    def ready(self, name: str = "dockertoken-sample") -> dict[str, Any]:
        obj = self.get(name) or {}
        conds = (obj.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "Ready"), {})

    # -- events -------------------------------------------------------------------------------
    def send(self, verb: str = "add", name: str = "dockertoken-sample", *, mode: str = "ref",
             content: str = "binary") -> httpx.Response:
        obj = self.get(name) or {"apiVersion": f"{G}/{V}", "kind": "DockerToken",
                                 "metadata": {"name": name, "namespace": self.ns}}
        event = harness.apiserver_event(verb, obj, mode=mode)
        if content == "structured":
            event = harness.structured(*event)
        return harness.post(self.fn.url, event)

    def request_reconcile(self, name: str = "dockertoken-sample") -> httpx.Response:
        """What a user does to retry a failed object at once: change the reconcile-request
        annotation (README "Failures and retries"); its update event is sent, as the source would."""
        self.custom.patch_namespaced_custom_object(G, V, self.ns, P, name, {"metadata": {"annotations": {
            "quay.herve4m.github.io/reconcile-request": str(time.time_ns())}}})
        return self.send("update", name)

    def expire_backoff(self, name: str = "dockertoken-sample") -> None:
        """Let the recorded retry time pass (as if the backoff had been waited out)."""
        self.custom.patch_namespaced_custom_object_status(G, V, self.ns, P, name, {"status": {"retry": {
            "notBefore": "2000-01-01T00:00:00Z"}}})

    def resync(self, name: str = "dockertoken-sample") -> httpx.Response:
        return harness.post(self.fn.url, harness.resync_event(self.ns, name))

    # -- Quay ---------------------------------------------------------------------------------
    def tokens(self, title: str | None = None) -> list[dict[str, Any]]:
        return [t for t in self.quay.tokens(USER) if title is None or t["title"] == title]

    def quay_create(self, title: str) -> str:
        """A token made by hand in Quay's UI (or by the old operator); returns its uuid."""
        return self.quay.state.create_token(USER, title).uuid

    def quay_revoke(self, uuid: str) -> None:
        """Revoke a token by hand in Quay's UI."""
        assert self.quay.state.revoke_token(USER, uuid) is not None

    def quay_calls(self, endpoint: str | None = None) -> int:
        return int(self.quay.total_calls if endpoint is None else self.quay.calls.get(endpoint, 0))

    # -- API server write counting (the server's own metrics) ------------------------------------
    def write_count(self) -> int:
        """Writes the API server has served so far to what the function writes: DockerTokens,
        Secrets, ServiceAccounts and Events."""
        return sum(n for labels, n in self.cp.request_totals()
                   if labels.get("verb") in _WRITE_VERBS
                   and labels.get("resource") in ("dockertokens", "secrets", "serviceaccounts", "events"))


def wait_for(check: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def dockerconfig(data: dict[str, str]) -> dict[str, Any]:
    return dict(json.loads(data[".dockerconfigjson"]))
