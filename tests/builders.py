"""Builders for the pure tables (test_plan.py, test_creation.py): objects as the API server
stores them, and what a pass observes of them, at a fixed ``NOW``. No server, no fakes of it."""

from __future__ import annotations

import datetime
from typing import Any

from function import decide, pullsecret, records
from function.connection import Connection
from function.errors import PermanentError
from function.model import FINALIZER, DockerToken, Ref, Token
from function.protection import CONNECTION_ANNOTATION, CONNECTION_LABEL, IN_USE_FINALIZER, key

NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)
CONN = Connection(base_url="https://quay.example", registry="quay.example", token="oauth")
NS, NAME, UID = "ns", "dt", "uid-1"
PULL = "pull"
CONN_REF = Ref(NS, "conn")
# Quay's RFC 2822 dates, relative to NOW
CREATED = "Thu, 26 Nov 2026 09:00:00 -0000"
LATER = "Fri, 27 Nov 2026 12:00:00 -0000"
EARLIER = "Thu, 26 Nov 2026 11:00:00 -0000"
TOKEN = Token("u1", "mytoken", CREATED, "", "", code="CODE1")


def at(minutes: float) -> str:
    """RFC 3339 ``minutes`` after NOW (before, when negative), as status times are written."""
    return (NOW + datetime.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def dockertoken(status: dict[str, Any] | None = None, *, title: str = "mytoken", ret: bool = True,
                finalizer: bool = True, deleting: bool = False, generation: int = 1,
                **spec: Any) -> dict[str, Any]:
    """A DockerToken as the API server returns it."""
    body: dict[str, Any] = {"connSecretRef": {"name": "conn"}, "name": title, **spec}
    if ret:
        body["retSecretRef"] = {"name": PULL}
    meta: dict[str, Any] = {"namespace": NS, "name": NAME, "uid": UID, "generation": generation,
                            "resourceVersion": "10", "finalizers": [FINALIZER] if finalizer else [],
                            "annotations": {CONNECTION_ANNOTATION: str(CONN_REF)},
                            "labels": {CONNECTION_LABEL: key(CONN_REF)}}
    if deleting:
        meta["deletionTimestamp"] = at(-1)
    return {"metadata": meta, "spec": body, "status": status or {}}


def settled(**extra: Any) -> dict[str, Any]:
    """The status of an object in order holding TOKEN (what its last pass wrote)."""
    dt = DockerToken.from_object(dockertoken())
    status = records.recorded(dt.status, dt, TOKEN, revoke_old=True)
    status, _, _ = records.ready_status(dt, status.with_(ret_secret=Ref(NS, PULL), registry_host=CONN.registry),
                                       replaced="", now=NOW)
    raw = {k: v for k, v in status.merge_patch(dt.status).items() if v is not None}
    return {**raw, **extra}


def secret(token: Token = TOKEN, *, obj: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    """The pull Secret of ``obj`` holding ``token``, as stored (with a uid and resourceVersion)."""
    dt = DockerToken.from_object(obj or dockertoken())
    body = pullsecret.build(dt, Ref(NS, PULL), token, [CONN.registry])
    body["metadata"].update({"uid": "secret-uid", "resourceVersion": "5", **meta})
    return body


def observed(obj: dict[str, Any] | None = None, *, ret_secret: dict[str, Any] | None = None,
             verify: bool = False, conn: Connection | None = CONN,
             conn_error: PermanentError | None = None, consent_error: PermanentError | None = None,
             old_ret_secret: dict[str, Any] | None = None, conn_version: str = "7",
             service_accounts: dict[str, dict[str, Any] | None] | None = None,
             now: datetime.datetime = NOW, registered: Ref | None = CONN_REF) -> decide.Observed:
    """What a pass observes; by default the object is a registered user of its connection Secret,
    which carries the in-use finalizer (test_protection.py has the rows where it does not)."""
    return decide.Observed(
        dt=DockerToken.from_object(obj or dockertoken()), now=now, verify=verify, wave="w",
        conn=None if conn_error else conn, conn_error=conn_error, conn_version=conn_version,
        ret_secret=ret_secret, old_ret_secret=old_ret_secret, consent_error=consent_error,
        service_accounts=service_accounts or {}, registered=registered,
        conn_secret={"metadata": {"namespace": NS, "name": "conn", "finalizers": [IN_USE_FINALIZER]}})


def spec_with(field: str, value: str) -> dict[str, Any]:
    """A valid spec whose name ``field`` (``connSecretRef.name``, ``serviceAccounts[0]``, ...) is
    ``value``: how the hostile-name tests put one value in one field."""
    spec: dict[str, Any] = {"name": "mytoken", "connSecretRef": {"name": "quay-credentials"},
                            "retSecretRef": {"name": "pull"}}
    if field == "serviceAccounts[0]":
        spec["serviceAccounts"] = [value]
    else:
        ref, key = field.split(".")
        spec[ref][key] = value
    return spec
