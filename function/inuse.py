"""The connection Secret's in-use finalizer, put on and taken off (``protection.py`` has the rules).

``apply.py`` performs a plan's ``ProtectConnection`` and ``ReleaseConnection`` steps here. Both
are read-check-write sequences against the API server, guarded by the Secret's resourceVersion:

* protect: our finalizer on the Secret before any token is made with it; a Secret being deleted
  refuses new finalizers, so none is made with it (PermanentError, recorded); another first user
  protecting it at the same moment is no failure.
* release: once this object has stopped needing the Secret (its status, spec or registration
  says so, written before it looks), the finalizer goes unless another DockerToken still holds
  it; a user that registered while we looked gets it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from function import protection
from function.errors import Conflict, PermanentError, Restart
from function.model import Ref


class Api(Protocol):
    """What protection asks of the API server (``kube.Kube``)."""

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def set_secret_finalizers(self, secret: Mapping[str, Any],
                              finalizers: list[str]) -> dict[str, Any] | None: ...
    def iter_dockertokens(self, namespace: str | None = None, page_size: int = ..., *,
                          label_selector: str | None = None) -> Iterator[dict[str, Any]]: ...


def protect(api: Api, found: Mapping[str, Any] | None, ref: Ref, act: Callable[[str], None]) -> None:
    """Our finalizer on the connection Secret ``found`` (as observed) at ``ref``."""
    state = protection.secret_state(found)
    if found is None or state.protected:
        return
    if state.deleting:  # new finalizers are refused now
        raise PermanentError(protection.refused_message(ref)).with_reason(protection.DELETING)
    meta = found.get("metadata") or {}
    try:
        written = api.set_secret_finalizers(found, [*meta.get("finalizers", ()), protection.IN_USE_FINALIZER])
    # changed meanwhile: most often another first user protecting it at the same moment
    except Conflict:
        if protection.secret_state(api.get_secret(ref.namespace, ref.name)).protected:
            return
        raise
    if written is None:
        raise Restart  # gone meanwhile: observe again
    act("protect-connection-secret")


def release(api: Api, ref: Ref, *, except_uid: str, act: Callable[[str], None]) -> None:
    """Take our finalizer off ``ref`` unless a DockerToken other than ``except_uid`` still
    needs it (``protection.holds``)."""
    found = api.get_secret(ref.namespace, ref.name)
    if found is None or not protection.secret_state(found).protected:
        return
    if protection.in_use(api.iter_dockertokens(label_selector=protection.selector(ref)), ref,
                         except_uid=except_uid):
        return
    finalizers = list((found.get("metadata") or {}).get("finalizers") or ())
    released = api.set_secret_finalizers(found, [f for f in finalizers if f != protection.IN_USE_FINALIZER])
    act("release-connection-secret")
    # a user that registered while we looked (it read the Secret still protected): protect it
    # again, unless it is already on its way out
    if released and not protection.secret_state(released).deleting and protection.in_use(
            api.iter_dockertokens(label_selector=protection.selector(ref)), ref, except_uid=except_uid):
        api.set_secret_finalizers(released, finalizers)
        act("protect-connection-secret")
