"""In-use protection of connection Secrets, as ``kubernetes.io/pvc-protection`` protects PVCs.

A Quay token can only be revoked with the credentials it was made with, so a DockerToken's
deletion must never depend on a connection Secret that can go first: a namespace is deleted all
at once, in whatever order its objects come. While a DockerToken holds (or is about to make) a
token with a connection Secret, that Secret carries the finalizer :data:`IN_USE_FINALIZER`, and
the DockerToken is registered as one of its users: the label :data:`CONNECTION_LABEL` (a hash of
the Secret's namespace/name, so all users are one labelled list) and the annotation
:data:`CONNECTION_ANNOTATION` (the namespace/name, to find the Secret again). When the token is
revoked or preserved, or the DockerToken moves to another Secret, it stops being a user, and
the last user out removes the finalizer (README "Deleting a connection Secret").

Pure decisions; ``apply.py`` carries them out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from function import conditions
from function.model import FINALIZER, Ref

IN_USE_FINALIZER = "quay.herve4m.github.io/connection-in-use"
CONNECTION_LABEL = "quay.herve4m.github.io/connection"
CONNECTION_ANNOTATION = "quay.herve4m.github.io/connection"
# The condition type on a DockerToken whose connection Secret is being deleted, and the Ready
# reason of one that cannot start using it for that reason.
DELETING = "ConnectionSecretDeleting"


@dataclass(frozen=True)
class SecretState:
    """What protection reads from a connection Secret."""

    protected: bool = False   # carries our finalizer
    deleting: bool = False    # has a deletionTimestamp: it goes once its finalizers do


def secret_state(obj: Mapping[str, Any] | None) -> SecretState:
    if obj is None:
        return SecretState()
    meta = obj.get("metadata") or {}
    return SecretState(IN_USE_FINALIZER in (meta.get("finalizers") or ()),
                       bool(meta.get("deletionTimestamp")))


def key(ref: Ref) -> str:
    """The label value naming a connection Secret (a label value cannot hold namespace/name)."""
    return hashlib.sha256(f"{ref.namespace}/{ref.name}".encode()).hexdigest()[:40]


def selector(ref: Ref) -> str:
    return f"{CONNECTION_LABEL}={key(ref)}"


def registered(obj: Mapping[str, Any]) -> Ref | None:
    """The connection Secret a DockerToken object is registered as a user of, if any."""
    meta = obj.get("metadata") or {}
    value = str((meta.get("annotations") or {}).get(CONNECTION_ANNOTATION) or "")
    namespace, _, name = value.partition("/")
    return Ref(namespace, name) if namespace and name else None


@dataclass(frozen=True)
class Steps:
    """The protection part of a plan, in the order apply.py carries it out."""

    release: Ref | None = None      # no longer ours to use: drop its finalizer if nobody else uses it
    labels: Mapping[str, str | None] | None = None       # registration changes (merge patch)
    annotations: Mapping[str, str | None] | None = None
    protect: Ref | None = None      # put the finalizer on it (observed without)
    forget: bool = False            # deletion: record that nothing is left in Quay before releasing


def for_use(current: Ref | None, want: Ref | None, state: SecretState) -> Steps:
    """Steps of a pass that keeps the object (``want``: the Secret it will make or hold tokens
    with, None when it needs none, e.g. preserveInQuayOnDeletion)."""
    release = current if current is not None and current != want else None
    labels = annotations = None
    if current != want:
        labels = {CONNECTION_LABEL: key(want) if want else None}
        annotations = {CONNECTION_ANNOTATION: str(want) if want else None}
    protect = want if want is not None and not state.protected else None
    return Steps(release=release, labels=labels, annotations=annotations, protect=protect)


def for_deletion(current: Ref | None, *, revoking: bool) -> Steps:
    """Steps of a deletion pass that completes: once the tokens are revoked (or kept in Quay on
    purpose), this object stops being a user of its Secret."""
    return Steps(release=current, forget=revoking and current is not None)


def starts_using_deleted(current: Ref | None, want: Ref | None, state: SecretState) -> bool:
    """A Secret being deleted cannot get our finalizer again (the API server refuses new
    finalizers then), so an object that is not yet its user must not make tokens with it."""
    return want is not None and state.deleting and current != want


def holds(obj: Mapping[str, Any], ref: Ref) -> bool:
    """Whether a listed DockerToken (labelled as a user of ``ref``) still needs it: its spec still
    names it, it keeps our finalizer, its tokens are not preserved, and, once deleting, they are
    not yet revoked. Each condition is written before the object's owner looks for other users,
    so of two last users looking at once, the later one sees the other gone."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    conn = spec.get("connSecretRef") or {}
    named = Ref(str(conn.get("namespace") or meta.get("namespace") or ""), str(conn.get("name") or ""))
    if named != ref or FINALIZER not in (meta.get("finalizers") or ()) \
            or spec.get("preserveInQuayOnDeletion") is True:
        return False
    if not meta.get("deletionTimestamp"):
        return True
    status = obj.get("status") or {}
    return any(status.get(k) for k in ("uuid", "pendingRevocation", "existInQuay", "creation"))


def in_use(objects: Iterable[Mapping[str, Any]], ref: Ref, *, except_uid: str) -> bool:
    """Whether any DockerToken other than ``except_uid`` still needs the Secret ``ref``."""
    return any(holds(o, ref) for o in objects if (o.get("metadata") or {}).get("uid") != except_uid)


def forgotten(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status of a deleting object whose tokens are revoked: nothing left in Quay, so
    nothing needs the connection Secret any more (a later pass of it finishes without one)."""
    return {**status, "uuid": None, "pendingRevocation": None, "revokeAfter": None,
            "existInQuay": False, "creation": None}


def with_condition(conds: Sequence[Mapping[str, Any]], deleting: Ref | None, *, generation: int,
                   now: str) -> list[dict[str, Any]]:
    """The conditions with :data:`DELETING` set while ``deleting`` (the connection Secret) is being
    deleted, and without it otherwise (a pass that changes nothing writes nothing)."""
    if deleting is None:
        return [dict(c) for c in conds if c.get("type") != DELETING]
    return conditions.set_condition(conds, type_=DELETING, status=True, reason="InUse",
                                    message=deleting_message(deleting), generation=generation, now=now)


def deleting_message(ref: Ref) -> str:
    return (f"connSecretRef: Secret {ref} is being deleted; it is kept (finalizer {IN_USE_FINALIZER}) "
            "until this DockerToken is deleted, sets spec.preserveInQuayOnDeletion: true, or points "
            "connSecretRef to another Secret, so that its token can still be revoked. To replace "
            "the credentials, edit the Secret in place instead of deleting it")


def refused_message(ref: Ref) -> str:
    return (f"connSecretRef: Secret {ref} is being deleted; no token is made with it. Point "
            "connSecretRef to another Secret, or recreate it once it is gone")
