"""Read everything one pass decides on: the object, its connection, its Secrets, the consents.

Read-only (API server GETs, no Quay call). ``reconcile.py`` calls :func:`observe` and hands the
frozen :class:`decide.Observed` to :func:`decide.plan`.

Tenant isolation lives here: a reference into another namespace is followed only with that
namespace's consent (README "Tenant isolation"), and a refusal reads the same whether or not
the referenced object exists.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol

from function import conditions, decide, lastaccess, protection, pullsecret
from function.connection import Connection, parse_connection
from function.decide import Observed
from function.errors import PermanentError
from function.model import DockerToken, Ref

# On a connection Secret, or on a Namespace: the namespaces (comma-separated, or "*") whose
# DockerTokens may use that Secret, or write their pull Secret into that namespace.
ALLOWED_NAMESPACES = "quay.herve4m.github.io/allowed-namespaces"


class Reads(Protocol):
    """The reads a pass makes: ``kube.Kube`` for one object, ``inventory`` answers them from lists."""

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_namespace(self, name: str) -> dict[str, Any] | None: ...
    def get_serviceaccount(self, namespace: str, name: str) -> dict[str, Any] | None: ...


#: Connection Secrets already parsed, by ``id()`` of the Secret as read and the name it was read
#: by: (that Secret, the connection or why not, the digest of its data). A page of the bulk
#: resync shares one: its objects use a few Secrets, each read once per run.
ParsedConnections = MutableMapping[
    tuple[int, str], tuple[Mapping[str, Any], Connection | None, PermanentError | None, str]]


def observe(kube: Reads, obj: Mapping[str, Any], *, verify: bool, now: datetime.datetime,
            wave: str = "", resync_period: datetime.timedelta = decide.RESYNC_PERIOD,
            rotation_grace: datetime.timedelta = decide.ROTATION_GRACE,
            registry_check: bool = True, last_accessed_refresh: datetime.timedelta = lastaccess.DEFAULT,
            view: DockerToken | None = None,
            parsed: ParsedConnections | None = None) -> Observed:
    """The observed state of the DockerToken ``obj`` (as just read from the API server).
    ``view``: ``DockerToken.from_object(obj)`` when the caller has it already; ``parsed``: see
    :data:`ParsedConnections` (the many objects of a page share a few connection Secrets)."""
    dt = view if view is not None else DockerToken.from_object(obj)
    bad_name = dt.name_error()
    if bad_name is not None:
        # a name that is not a Kubernetes name is never sent to the API server (decide.plan
        # reports it through DockerToken.validate): nothing is read
        return Observed(dt=dt, now=now, verify=verify, wave=wave, conn=None, conn_error=bad_name,
                        conn_version="", ret_secret=None, old_ret_secret=None,
                        registered=protection.registered(obj))
    conn, conn_error, conn_version, consent, conn_secret = _connection(kube, dt, parsed)
    ret_error, ret_consent = _return_namespace(kube, dt)
    ret = old = None
    if ret_error is None and dt.ret_secret is not None and dt.ret_secret.name:
        ret = kube.get_secret(dt.ret_secret.namespace, dt.ret_secret.name)
    moved = dt.status.ret_secret
    if moved is not None and moved != dt.ret_secret:
        old = kube.get_secret(moved.namespace, moved.name)
    accounts: dict[str, Mapping[str, Any] | None] = {}
    if ret_error is None and dt.ret_secret is not None:
        for name in dict.fromkeys((*dt.service_accounts, *dt.status.service_accounts)):
            accounts[name] = kube.get_serviceaccount(dt.ret_secret.namespace, name)
    return Observed(
        dt=dt, now=now, verify=verify, wave=wave, conn=conn, conn_error=conn_error, conn_version=conn_version,
        ret_secret=ret, old_ret_secret=old, consent_error=ret_error,
        consent_version=f"{consent}/{ret_consent}", service_accounts=accounts,
        resync_period=resync_period, rotation_grace=rotation_grace, registry_check=registry_check,
        last_accessed_refresh=last_accessed_refresh,
        conn_secret=conn_secret, registered=protection.registered(obj),
    )


def _connection(kube: Reads, dt: DockerToken, parsed: ParsedConnections | None = None) -> tuple[
        Connection | None, PermanentError | None, str, str, Mapping[str, Any] | None]:
    """(connection, why not, digest of its content, consent state, the Secret as found) for
    spec.connSecretRef."""
    ref = dt.conn_secret
    if not ref.name:
        return None, None, "", "", None
    try:
        found = kube.get_secret(ref.namespace, ref.name)
    # e.g. 403: the same answer whether or not the Secret exists (authorization comes first)
    except PermanentError as exc:
        raise PermanentError(f"connSecretRef: cannot read Secret {ref}: {exc}; the function's "
                             "ServiceAccount needs get on secrets there (knative/base/rbac.yaml)"
                             ).with_reason(conditions.SECRET_UNREADABLE) from None
    if ref.namespace != dt.namespace and (found is None or not _allows(found, dt.namespace)):
        return None, _denied_connection(dt, ref), "", "denied", None
    if found is None:
        # the original operator's wording, which users may already match on
        return None, PermanentError(f"connSecretRef: {ref.name}: secret not found").with_reason(
            conditions.SECRET_NOT_FOUND), "", "", None
    key = (id(found), ref.name)
    known = parsed.get(key) if parsed is not None else None
    if known is None or known[0] is not found:  # the same object, not one reusing a freed id
        known = (found, *_parse(found, ref.name))
        if parsed is not None:
            parsed[key] = known
    _, conn, error, version = known
    return conn, error, version, "", found


def _parse(found: Mapping[str, Any], name: str) -> tuple[Connection | None, PermanentError | None, str]:
    version = _content_digest(found)
    try:
        return parse_connection(pullsecret.decoded(found), secret_name=name), None, version
    except PermanentError as exc:
        return None, exc, version


def _content_digest(secret: Mapping[str, Any]) -> str:
    """What an edit that could fix the connection changes: its data, not its resourceVersion
    (which moves with the in-use finalizer this function itself puts on and takes off)."""
    data = json.dumps(secret.get("data") or {}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _return_namespace(kube: Reads, dt: DockerToken) -> tuple[PermanentError | None, str]:
    """Whether the pull Secret may be written where spec.retSecretRef says."""
    ref = dt.ret_secret
    if ref is None or ref.namespace == dt.namespace:
        return None, ""
    namespace = kube.get_namespace(ref.namespace)
    if namespace is not None and _allows(namespace, dt.namespace):
        return None, ""
    return PermanentError(
        f"spec.retSecretRef.namespace: {ref.namespace!r} is not this DockerToken's namespace and "
        f"does not allow namespace {dt.namespace!r} to write pull Secrets there; to allow it, "
        f"annotate that namespace: kubectl annotate namespace {ref.namespace} "
        f"{ALLOWED_NAMESPACES}={dt.namespace} (a comma-separated list, or \"*\"), or leave "
        "retSecretRef.namespace out to write the Secret next to the DockerToken"
    ).with_reason(conditions.CROSS_NAMESPACE_DENIED), "denied"


def _denied_connection(dt: DockerToken, ref: Ref) -> PermanentError:
    # The same words whether or not the Secret exists: no existence oracle across namespaces.
    return PermanentError(
        f"spec.connSecretRef.namespace: {ref.namespace!r} is not this DockerToken's namespace, and "
        f"a connection Secret there is used only if it allows namespace {dt.namespace!r}; to allow "
        f"it, annotate the Secret: kubectl annotate secret -n {ref.namespace} {ref.name} "
        f"{ALLOWED_NAMESPACES}={dt.namespace} (a comma-separated list, or \"*\"), or use a "
        f"connection Secret in namespace {dt.namespace!r}"
    ).with_reason(conditions.CROSS_NAMESPACE_DENIED)


def _allows(obj: Mapping[str, Any], namespace: str) -> bool:
    value = str(((obj.get("metadata") or {}).get("annotations") or {}).get(ALLOWED_NAMESPACES) or "")
    allowed = {part.strip() for part in value.split(",")}
    return "*" in allowed or namespace in allowed
