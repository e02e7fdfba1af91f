"""Everything the function asks of the Kubernetes API server, over one shared httpx client.

Objects travel as plain dicts (JSON as the server sent it). Failures are mapped here, once:
404 becomes ``None`` where absence is fine, 409 ``Conflict``, 429/5xx and unreachable servers
``KubeTransient`` (503, retried), anything else ``PermanentError``.

Why httpx and not the ``kubernetes`` package for the calls: importing that package costs more
than a whole functions-framework start (it loads hundreds of generated modules), and a
scale-from-zero pod pays it on its first event. The credentials come from the pod's
ServiceAccount (in-cluster) or from a kubeconfig with a token or client certificate; any other
kubeconfig (exec plugins, auth providers) is handed to the ``kubernetes`` package's loader.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from function.errors import Conflict, KubeTransient, PermanentError
from function.model import GROUP, PLURAL, VERSION

# Connect quickly or call the API server unavailable; reads may take a while on a busy server.
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# More than the function's threads (THREADS, 10 in knative/), so no request waits for a connection.
POOL = httpx.Limits(max_connections=64, max_keepalive_connections=32)
PAGE_SIZE = 500
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Bound ServiceAccount tokens rotate (the kubelet rewrites the file): re-read it this often.
TOKEN_RELOAD_SECONDS = 60.0
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
_CR = f"/apis/{GROUP}/{VERSION}"

_lock = threading.Lock()
_shared: httpx.Client | None = None


def _seg(value: str) -> str:
    """One URL path segment: a name is never a path. Refuses "", ".", ".." and anything with a
    "/" (the API server, and httpx before it, would resolve them to another object), and quotes
    the rest (so "%2e%2e" stays those six characters)."""
    if value in ("", ".", "..") or "/" in value:
        raise PermanentError(f"refused to use {value[:80]!r} as an object name in an API path; "
                             "names never contain '/' and are never '.' or '..'")
    return quote(value, safe="")


def _is(obj: dict[str, Any] | None, what: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    """``obj`` if it is the object asked for; a reply naming another object is refused."""
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    if meta.get("name") != name or (namespace is not None and meta.get("namespace") != namespace):
        raise PermanentError(f"{what}: the API server answered with another object; refused")
    return obj


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterConfig:
    """Where the API server is and how to prove who we are."""

    server: str
    tls: ssl.SSLContext  # the CA to trust, and our client certificate if we use one
    token: Callable[[], str]  # the current bearer token, or "" (client certificate)


def load_config(kubeconfig: str | None = None) -> ClusterConfig:
    """In a pod: its ServiceAccount. Otherwise KUBECONFIG (first file) or ~/.kube/config."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and (SA_DIR / "token").exists():
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return ClusterConfig(f"https://{host}:{port}", _tls(str(SA_DIR / "ca.crt")),
                             _FileToken(SA_DIR / "token"))
    path = kubeconfig or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or "~/.kube/config"
    return _from_kubeconfig(Path(path).expanduser())


class _FileToken:
    """A token kept in a file that may be rewritten (projected ServiceAccount tokens)."""

    def __init__(self, path: Path) -> None:
        self._path, self._value, self._read_at = path, "", -TOKEN_RELOAD_SECONDS

    def __call__(self) -> str:
        if time.monotonic() - self._read_at >= TOKEN_RELOAD_SECONDS:
            self._value, self._read_at = self._path.read_text().strip(), time.monotonic()
        return self._value


def _tls(ca: str | None = None, *, cadata: str | None = None,
         cert: tuple[bytes, bytes] | tuple[str, str] | None = None,
         insecure: bool = False) -> ssl.SSLContext:
    """A TLS context; ``cert`` is (certificate, key) as file paths or as PEM bytes."""
    ctx = ssl.create_default_context(cafile=ca, cadata=cadata)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert and isinstance(cert[0], bytes):
        _load_pem_chain(ctx, cert[0], bytes(cert[1]))
    elif cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def _load_pem_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl loads client certificates only from files: write them privately, load, remove."""
    with tempfile.TemporaryDirectory(prefix="qdt-kube-") as folder:
        paths = []
        for name, pem in (("cert.pem", cert), ("key.pem", key)):
            path = Path(folder) / name
            path.touch(mode=0o600)
            path.write_bytes(pem)
            paths.append(str(path))
        ctx.load_cert_chain(*paths)


def _from_kubeconfig(path: Path) -> ClusterConfig:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PermanentError(f"kubeconfig {path}: cannot read it ({type(exc).__name__})") from None
    contexts = {c["name"]: c["context"] for c in doc.get("contexts") or ()}
    context = contexts.get(doc.get("current-context"), {})
    cluster = {c["name"]: c["cluster"] for c in doc.get("clusters") or ()}.get(context.get("cluster"), {})
    user = {u["name"]: u.get("user") or {} for u in doc.get("users") or ()}.get(context.get("user"), {})
    if not cluster.get("server"):
        raise PermanentError(f"kubeconfig {path}: no server for context {doc.get('current-context')!r}")
    if set(user) - {"token", "tokenFile", "client-certificate", "client-key",
                    "client-certificate-data", "client-key-data"}:
        return _from_kubernetes_loader(path)  # exec plugins, auth providers: the library knows them
    base = path.parent

    def pem(source: Mapping[str, Any], key: str) -> bytes | None:
        """The PEM bytes of ``key-data`` (inline) or of the file ``key`` names."""
        if source.get(f"{key}-data"):
            return base64.b64decode(source[f"{key}-data"])
        return (base / source[key]).read_bytes() if source.get(key) else None

    ca = pem(cluster, "certificate-authority")
    cert, key = pem(user, "client-certificate"), pem(user, "client-key")
    tls = _tls(cadata=ca.decode() if ca else None, cert=(cert, key) if cert and key else None,
               insecure=bool(cluster.get("insecure-skip-tls-verify")))
    if user.get("tokenFile"):
        return ClusterConfig(cluster["server"], tls, _FileToken(base / user["tokenFile"]))
    value = str(user.get("token") or "")
    return ClusterConfig(cluster["server"], tls, lambda: value)


def _from_kubernetes_loader(path: Path) -> ClusterConfig:
    from kubernetes import client, config

    cfg: Any = client.Configuration()
    loader: Any = config
    loader.load_kube_config(config_file=str(path), client_configuration=cfg)
    cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file and cfg.key_file else None

    def token() -> str:  # refreshed by the exec plugin / auth provider hook when it expires
        header = cfg.get_api_key_with_prefix("BearerToken") or ""
        return str(header).removeprefix("Bearer ").strip()

    return ClusterConfig(cfg.host, _tls(cfg.ssl_ca_cert, cert=cert, insecure=not cfg.verify_ssl), token)


class _Bearer(httpx.Auth):
    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        value = self._token()
        if value:
            request.headers["Authorization"] = f"Bearer {value}"
        yield request


def http_client(config: ClusterConfig) -> httpx.Client:
    return httpx.Client(base_url=config.server, verify=config.tls, auth=_Bearer(config.token),
                        timeout=TIMEOUT, limits=POOL,
                        headers={"Accept": "application/json", "User-Agent": "quay-dockertoken"})


def shared_client() -> httpx.Client:
    """One client (one connection pool) per process, built on the first event."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = http_client(load_config())
        return _shared


# -- the calls -----------------------------------------------------------------------------------
class Kube:
    """Typed calls; counts its writes so tests and benchmarks can check idempotency."""

    def __init__(self, http: httpx.Client | None = None) -> None:
        self._http = http or shared_client()
        self.writes = 0

    def session(self) -> Kube:
        """The same connection pool with a write counter of its own (one per reconcile pass)."""
        return Kube(self._http)

    @classmethod
    def from_kubeconfig(cls, path: str | Path) -> Kube:
        """For the command-line tools (audit, the kubectl plugin): the kubeconfig they are given."""
        return cls(http_client(load_config(str(path))))

    def _request(self, what: str, method: str, path: str, *, body: Any = None,
                 params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                 missing_ok: bool = False) -> dict[str, Any] | None:
        """One call, its failures translated; None on 404 when ``missing_ok``."""
        try:
            resp = self._http.request(method, path, json=body, params=params, headers=headers)
        # no answer at all: the API server is down or unreachable, a retry may work
        except httpx.TransportError as exc:
            raise KubeTransient(f"{what}: API server unreachable ({type(exc).__name__})") from None
        status = resp.status_code
        if status == 404 and missing_ok:
            return None
        if status >= 300:
            detail = _message(resp)
            if status == 409:
                raise Conflict(f"{what}: the object changed meanwhile ({detail})")
            if status == 403 and _terminating(resp):
                raise NamespaceTerminating(f"{what}: API server answered {status} ({detail})")
            if status == 429 or status >= 500:
                raise KubeTransient(f"{what}: API server answered {status} ({detail})")
            raise PermanentError(f"{what}: API server answered {status} ({detail})")
        try:
            return dict(resp.json())
        # a 2xx that is not JSON: the caller only needed the status
        except ValueError:
            return {}

    # -- DockerTokens ------------------------------------------------------------------------
    def get_dockertoken(self, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"get dockertoken {namespace}/{name}"
        return _is(self._request(what, "GET", f"{_CR}/namespaces/{_seg(namespace)}/{PLURAL}/{_seg(name)}",
                                 missing_ok=True), what, namespace, name)

    def iter_dockertokens(self, namespace: str | None = None, page_size: int = PAGE_SIZE, *,
                          label_selector: str | None = None) -> Iterator[dict[str, Any]]:
        """Every DockerToken (in one namespace, or all; those matching ``label_selector``), a page
        at a time."""
        cont = ""
        while True:
            items, cont = self.list_dockertokens_page(namespace, cont, page_size,
                                                      label_selector=label_selector)
            yield from items
            if not cont:
                return

    def list_dockertokens_page(self, namespace: str | None = None, cont: str = "",
                               limit: int = PAGE_SIZE, *,
                               label_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """One page of DockerTokens (in one namespace, or all; those matching ``label_selector``)
        from ``cont``; and the next page's continue token ("" after the last page). The bulk
        resync's unit of work."""
        path = f"{_CR}/namespaces/{_seg(namespace)}/{PLURAL}" if namespace else f"{_CR}/{PLURAL}"
        params: dict[str, Any] = {"limit": limit}
        if label_selector:
            params["labelSelector"] = label_selector
        if cont:
            params["continue"] = cont
        page = self._request("list dockertokens", "GET", path, params=params) or {}
        return list(page.get("items") or ()), str((page.get("metadata") or {}).get("continue") or "")

    def patch_metadata(self, namespace: str, name: str, resource_version: str, *,
                       finalizers: Sequence[str] | None = None,
                       labels: Mapping[str, str | None] | None = None,
                       annotations: Mapping[str, str | None] | None = None) -> dict[str, Any]:
        """Replace metadata.finalizers and/or merge labels and annotations, conditioned on
        resourceVersion (409 if anyone wrote since); {} when the object is gone."""
        self.writes += 1
        meta: dict[str, Any] = {"resourceVersion": resource_version}
        if finalizers is not None:
            meta["finalizers"] = list(finalizers)
        if labels:
            meta["labels"] = dict(labels)
        if annotations:
            meta["annotations"] = dict(annotations)
        body = {"metadata": meta}
        return self._request(f"patch metadata of {namespace}/{name}", "PATCH",
                             f"{_CR}/namespaces/{_seg(namespace)}/{PLURAL}/{_seg(name)}", body=body,
                             headers=MERGE_PATCH, missing_ok=True) or {}

    def patch_status(self, namespace: str, name: str, status: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        """Merge-patch the status subresource; with ``resource_version`` it is a compare-and-swap."""
        self.writes += 1
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self._request(f"patch status of {namespace}/{name}", "PATCH",
                             f"{_CR}/namespaces/{_seg(namespace)}/{PLURAL}/{_seg(name)}/status", body=body,
                             headers=MERGE_PATCH, missing_ok=True) or {}

    # -- Namespaces ----------------------------------------------------------------------------
    def get_namespace(self, name: str) -> dict[str, Any] | None:
        what = f"get namespace {name}"
        return _is(self._request(what, "GET", f"/api/v1/namespaces/{_seg(name)}", missing_ok=True),
                   what, None, name)

    # -- Secrets -------------------------------------------------------------------------------
    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"get secret {namespace}/{name}"
        return _is(self._request(what, "GET", f"/api/v1/namespaces/{_seg(namespace)}/secrets/{_seg(name)}",
                                 missing_ok=True), what, namespace, name)

    def iter_secrets(self, label_selector: str, page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
        """The Secrets of every namespace that match ``label_selector``, a page at a time."""
        params: dict[str, Any] = {"limit": page_size, "labelSelector": label_selector}
        while True:
            page = self._request("list secrets", "GET", "/api/v1/secrets", params=params) or {}
            yield from page.get("items") or ()
            params["continue"] = (page.get("metadata") or {}).get("continue")
            if not params["continue"]:
                return

    def create_secret(self, body: dict[str, Any]) -> bool:
        """Create; False when the namespace does not exist (the only 404 a create can get)."""
        self.writes += 1
        meta = body["metadata"]
        created = self._request(f"create secret {meta['namespace']}/{meta['name']}", "POST",
                                f"/api/v1/namespaces/{_seg(meta['namespace'])}/secrets", body=body,
                                missing_ok=True)
        return created is not None

    def replace_secret(self, body: dict[str, Any]) -> None:
        """PUT with the resourceVersion the body carries: a concurrent edit gets 409."""
        self.writes += 1
        meta = body["metadata"]
        self._request(f"update secret {meta['namespace']}/{meta['name']}", "PUT",
                      f"/api/v1/namespaces/{_seg(meta['namespace'])}/secrets/{_seg(meta['name'])}",
                      body=body)

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete if present; with ``uid`` only that exact object (never a same-named newcomer)."""
        self.writes += 1
        body = {"preconditions": {"uid": uid}} if uid else None
        self._request(f"delete secret {namespace}/{name}", "DELETE",
                      f"/api/v1/namespaces/{_seg(namespace)}/secrets/{_seg(name)}", body=body,
                      missing_ok=True)

    def set_secret_finalizers(self, secret: Mapping[str, Any],
                              finalizers: list[str]) -> dict[str, Any] | None:
        """Give the Secret exactly ``finalizers`` (a connection Secret's in-use protection): a PUT
        of the object as read, so conditioned on its resourceVersion (409 if anyone wrote since),
        with the ``update`` right return Secrets need anyway; None when it is gone."""
        self.writes += 1
        meta = secret["metadata"]
        body = {**secret, "metadata": {**meta, "finalizers": finalizers}}
        return self._request(f"update finalizers of secret {meta['namespace']}/{meta['name']}", "PUT",
                             f"/api/v1/namespaces/{_seg(meta['namespace'])}/secrets/{_seg(meta['name'])}",
                             body=body, missing_ok=True)

    # -- ServiceAccounts (spec.serviceAccounts) --------------------------------------------------
    def get_serviceaccount(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ServiceAccount, or None when it does not exist (yet)."""
        what = f"get serviceaccount {namespace}/{name}"
        return _is(self._request(what, "GET",
                                 f"/api/v1/namespaces/{_seg(namespace)}/serviceaccounts/{_seg(name)}",
                                 missing_ok=True), what, namespace, name)

    def list_serviceaccounts(self, namespace: str) -> list[dict[str, Any]]:
        """Every ServiceAccount of ``namespace`` (one request: a namespace holds few)."""
        page = self._request(f"list serviceaccounts in {namespace}", "GET",
                             f"/api/v1/namespaces/{_seg(namespace)}/serviceaccounts") or {}
        return list(page.get("items") or ())

    def patch_serviceaccount_pull_secrets(self, namespace: str, name: str,
                                          pull_secrets: list[Mapping[str, Any]],
                                          resource_version: str) -> dict[str, Any] | None:
        """Set imagePullSecrets to exactly ``pull_secrets`` (a merge patch replaces the whole list,
        so build it with ``pullsecret.pull_secret_edit`` from the list just read), conditioned on
        ``resource_version``: 409 ``Conflict`` if anyone changed the ServiceAccount since, None
        when it was deleted."""
        self.writes += 1
        body = {"metadata": {"resourceVersion": resource_version},
                "imagePullSecrets": list(pull_secrets)}
        return self._request(f"patch imagePullSecrets of serviceaccount {namespace}/{name}", "PATCH",
                             f"/api/v1/namespaces/{_seg(namespace)}/serviceaccounts/{_seg(name)}",
                             body=body, headers=MERGE_PATCH, missing_ok=True)

    # -- TokenReviews (who sent an event: auth.py) -------------------------------------------------
    def review_token(self, token: str, audience: str) -> dict[str, Any]:
        """The API server's verdict on a bearer token for ``audience`` (TokenReview status).
        Not a write: nothing is stored."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [audience]}}
        review = self._request("review a sender's token", "POST",
                               "/apis/authentication.k8s.io/v1/tokenreviews", body=body) or {}
        return dict(review.get("status") or {})

    # -- Events (events.k8s.io/v1) -----------------------------------------------------------------
    def list_events(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        """The Events about the object ``uid`` (``kubectl dockertoken status``, as its user)."""
        found = self._request(f"list events of {namespace}", "GET",
                              f"/apis/events.k8s.io/v1/namespaces/{namespace}/events",
                              params={"fieldSelector": f"regarding.uid={uid}"}) or {}
        return list(found.get("items") or ())

    def create_event(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create an Event (build it with ``kevents.build_event``); None when it was not created
        because its namespace is gone or going (the API server refuses new objects in a
        terminating namespace) or the very same Event (same name) already exists."""
        self.writes += 1
        meta = body["metadata"]
        path = f"/apis/events.k8s.io/v1/namespaces/{_seg(meta['namespace'])}/events"
        try:
            return self._request(f"create event {meta['namespace']}/{meta['name']}", "POST", path,
                                 body=body, missing_ok=True)
        # a POST gets 409 only as AlreadyExists: this report was made already
        except Conflict:
            return None
        except NamespaceTerminating:
            return None


class NamespaceTerminating(PermanentError):
    """403: no new object may be created in a namespace that is being deleted."""


def _terminating(resp: httpx.Response) -> bool:
    """The API server's NamespaceLifecycle refusal (details.causes[].reason NamespaceTerminating)."""
    try:
        causes = (resp.json().get("details") or {}).get("causes") or ()
    except (ValueError, AttributeError):
        return False
    return any(isinstance(c, Mapping) and c.get("reason") == "NamespaceTerminating" for c in causes)


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("message", ""))[:300]
    except (ValueError, AttributeError):
        return resp.reason_phrase[:300]
