"""Everything the function asks of the Kubernetes API server. The only module importing ``kubernetes``.

Objects travel as plain dicts (JSON as the server sent it). ``ApiException`` and transport errors
are mapped here, once: 404 becomes ``None`` or is ignored where absence is fine, 409/429/5xx and
unreachable servers become ``KubeTransient`` (503, retried), anything else ``PermanentError``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from function.errors import KubeTransient, PermanentError
from function.model import GROUP, PLURAL, VERSION

logger = logging.getLogger(__name__)
# (connect, read) seconds: an API server slower than this is treated as unavailable.
REQUEST_TIMEOUT = (5, 30)
PAGE_SIZE = 500

_client_lock = threading.Lock()
_shared_client: Any = None


class Conflict(KubeTransient):
    """The object changed since we read it (409, or a failed JSON-patch test): re-read and retry."""

    reason = "Conflict"


def load_client() -> Any:
    """One ApiClient per process: in-cluster config in a pod, else KUBECONFIG / ~/.kube/config."""
    global _shared_client
    with _client_lock:
        if _shared_client is None:
            from kubernetes import client, config

            cfg: Any = config
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                cfg.load_incluster_config()
                _shared_client = client.ApiClient()
            else:
                _shared_client = cfg.new_client_from_config(
                    config_file=os.environ.get("KUBECONFIG") or None
                )
        return _shared_client


def _call(what: str, fn: Callable[[], Any], *, missing_ok: bool = False) -> Any:
    """Run one API call and translate its failures; return None on 404 when ``missing_ok``."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn()
    # 404: absent is a normal answer for reads and deletes
    except ApiException as exc:
        status = exc.status or 0
        if status == 404 and missing_ok:
            return None
        detail = _message(exc)
        if status == 409 or (status == 422 and "test operation" in detail):
            raise Conflict(f"{what}: the object changed meanwhile ({detail})") from None
        if status == 429 or status >= 500 or status == 0:
            raise KubeTransient(f"{what}: API server answered {status} ({detail})") from None
        raise PermanentError(f"{what}: API server answered {status} ({detail})") from None
    # no answer at all: the API server is down or unreachable, a retry may work
    except (HTTPError, OSError) as exc:
        raise KubeTransient(f"{what}: API server unreachable ({type(exc).__name__})") from None


def _message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message", ""))[:300]
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or "")[:300]


class _CoreSecrets:
    """The four Secret calls of ``CoreV1Api``, made through the same ApiClient (auth, TLS, pool).

    ``CoreV1Api`` itself is not imported: its module imports about 250 model classes for its
    annotations (~1 s on the first event after a cold start). Same paths, same answers (the raw
    urllib3 response, as with ``_preload_content=False``), same ``ApiException`` on non-2xx.
    """

    _ONE = "/api/v1/namespaces/{namespace}/secrets/{name}"
    _ALL = "/api/v1/namespaces/{namespace}/secrets"

    def __init__(self, api: Any) -> None:
        self._api = api

    def _request(self, method: str, path: str, params: dict[str, str], body: Any = None) -> Any:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = self._api.param_serialize(method=method, resource_path=path, path_params=params,
                                            header_params=headers, body=body,
                                            auth_settings=["BearerToken"])
        response = self._api.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        return self._request("GET", self._ONE, {"namespace": namespace, "name": name})

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> Any:
        return self._request("POST", self._ALL, {"namespace": namespace}, body)

    def replace_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any]) -> Any:
        return self._request("PUT", self._ONE, {"namespace": namespace, "name": name}, body)

    def delete_namespaced_secret(self, name: str, namespace: str, body: Any = None) -> Any:
        return self._request("DELETE", self._ONE, {"namespace": namespace, "name": name}, body)


class Kube:
    """Typed calls on one ApiClient; counts its writes so tests and benchmarks can check idempotency."""

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client

        self._api: Any = api_client or load_client()
        # Any: plain dicts go in and out; the generated models are not used
        self._custom: Any = client.CustomObjectsApi(self._api)
        # not client.CoreV1Api: importing it loads ~250 model modules, about 1 s of cold start
        self._core = _CoreSecrets(self._api)
        self.writes = 0

    # -- DockerTokens ------------------------------------------------------------------------
    def get_dockertoken(self, namespace: str, name: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = _call(
            f"get dockertoken {namespace}/{name}",
            lambda: self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT),
            missing_ok=True,
        )
        return obj

    def iter_dockertokens(self, namespace: str | None = None,
                          page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
        """Every DockerToken (in one namespace, or all), a page at a time."""
        token: str | None = None
        while True:
            kwargs = {"limit": page_size, "_continue": token, "_request_timeout": REQUEST_TIMEOUT}
            if namespace:
                call = functools.partial(self._custom.list_namespaced_custom_object, GROUP, VERSION,
                                         namespace, PLURAL, **kwargs)
            else:
                call = functools.partial(self._custom.list_cluster_custom_object, GROUP, VERSION,
                                         PLURAL, **kwargs)
            page = _call("list dockertokens", call) or {}
            yield from page.get("items") or ()
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def set_finalizers(self, namespace: str, name: str, finalizers: list[str],
                       resource_version: str) -> dict[str, Any]:
        """Replace metadata.finalizers, conditioned on resourceVersion (409 if anyone wrote since)."""
        self.writes += 1
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        result = _call(
            f"patch finalizers of {namespace}/{name}",
            lambda: self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=REQUEST_TIMEOUT),
            missing_ok=True,
        )
        return result or {}

    def patch_status(self, namespace: str, name: str, status: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        """Merge-patch the status subresource; with ``resource_version`` it is a compare-and-swap."""
        self.writes += 1
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        result = _call(
            f"patch status of {namespace}/{name}",
            lambda: self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=REQUEST_TIMEOUT),
            missing_ok=True,
        )
        return result or {}

    # -- Secrets -------------------------------------------------------------------------------
    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        resp = _call(
            f"get secret {namespace}/{name}",
            lambda: self._core.read_namespaced_secret(name, namespace),
            missing_ok=True,
        )
        return None if resp is None else dict(json.loads(resp.data))

    def create_secret(self, body: dict[str, Any]) -> bool:
        """Create; False when the namespace does not exist (the only 404 a create can get)."""
        self.writes += 1
        meta = body["metadata"]
        created = _call(
            f"create secret {meta['namespace']}/{meta['name']}",
            lambda: self._core.create_namespaced_secret(meta["namespace"], body),
            missing_ok=True,
        )
        return created is not None

    def replace_secret(self, body: dict[str, Any]) -> None:
        """PUT with the resourceVersion the body carries: a concurrent edit gets 409."""
        self.writes += 1
        meta = body["metadata"]
        _call(
            f"update secret {meta['namespace']}/{meta['name']}",
            lambda: self._core.replace_namespaced_secret(meta["name"], meta["namespace"], body),
        )

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete if present; with ``uid`` only that exact object (never a same-named newcomer)."""
        self.writes += 1
        body = {"preconditions": {"uid": uid}} if uid else None
        _call(
            f"delete secret {namespace}/{name}",
            lambda: self._core.delete_namespaced_secret(name, namespace, body),
            missing_ok=True,
        )
