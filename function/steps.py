"""The vocabulary between ``decide.py`` and ``apply.py``: typed steps, the token's questions,
the plan. Values only (frozen dataclasses): ``decide.py`` makes them, ``apply.py`` performs them.

A step says what to write, revoke or ask, and the action the log line names when it is done.
The token's questions (Verify, Fetch, Acquire, CheckRegistry, CheckCredential) are answered by
``decide``'s continuations, each returning the next question or the token (Obtained).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from function.kevents import Transition
from function.model import Ref, Status, Token
from function.result import Failure, Report

READY = Report("ready")


# -- steps: what apply.py performs, each logging its action ----------------------------------
@dataclass(frozen=True)
class PatchMetadata:
    """Our finalizer before anything is made in Quay, the claim labels and the registration as
    a user of the connection Secret (one write)."""

    finalizers: tuple[str, ...] | None
    labels: Mapping[str, str | None] | None  # labels to add or drop (None)
    action: str
    annotations: Mapping[str, str | None] | None = None


@dataclass(frozen=True)
class ProtectConnection:
    """Our in-use finalizer on the connection Secret before a token is made with it."""

    where: Ref


@dataclass(frozen=True)
class ReleaseConnection:
    """This object no longer uses the Secret: its in-use finalizer goes unless another still does."""

    where: Ref


@dataclass(frozen=True)
class WriteStatus:
    status: Status  # written as a merge patch of what differs from the stored status


@dataclass(frozen=True)
class CreateSecret:
    where: Ref
    body: Mapping[str, Any]
    action: str = "create-secret"


@dataclass(frozen=True)
class ReplaceSecret:
    body: Mapping[str, Any]  # carries the resourceVersion read: a concurrent edit gets 409
    action: str = "update-secret"


@dataclass(frozen=True)
class RecreateSecret:
    """A Secret's type is immutable: delete exactly that object (by uid), create it anew."""

    where: Ref
    uid: str
    body: Mapping[str, Any]
    action: str = "update-secret"


@dataclass(frozen=True)
class DeleteSecret:
    where: Ref
    uid: str  # only that exact object, never a same-named newcomer
    action: str = "delete-secret"


@dataclass(frozen=True)
class EditServiceAccount:
    """A ServiceAccount's new imagePullSecrets (a merge patch guarded by its resourceVersion)."""

    namespace: str
    name: str
    pull_secrets: tuple[Mapping[str, Any], ...]
    resource_version: str
    action: str  # attach-to-serviceaccount | detach-from-serviceaccount


@dataclass(frozen=True)
class Revoke:
    uuids: tuple[str, ...]  # one already gone counts as revoked
    action: str


@dataclass(frozen=True)
class RevokeByTitle:
    """Deletion of an object with no UUID: also every unclaimed token titled ``title``."""

    title: str
    also: tuple[str, ...]  # revoked with them


@dataclass(frozen=True)
class WaitForCreator:
    """A delivery is POSTing this object's token: let it record the UUID (then restart)."""


@dataclass(frozen=True)
class RemoveFinalizer:
    finalizers: tuple[str, ...]  # those left: every other controller's
    action: str = "remove-finalizer"


# -- the token's walk: one question each, answered by a continuation ------------------------------
@dataclass(frozen=True)
class Verify:
    uuid: str
    held: Token | None
    wave: str
    status: Status


@dataclass(frozen=True)
class Fetch:
    uuid: str
    status: Status


@dataclass(frozen=True)
class Acquire:
    """Adopt an unclaimed token titled ``title``, else create one (``creation.py``)."""

    title: str
    rotation: bool
    revoke_old: bool    # the recorded token goes to pendingRevocation
    grace_until: str    # a rotation's old token keeps working until then
    why: str            # replacing a recorded token: the Ready message
    status: Status


@dataclass(frozen=True)
class CheckRegistry:
    token: Token
    how: str  # created | adopted | rotated
    why: str
    status: Status


@dataclass(frozen=True)
class CheckCredential:
    realm: str
    service: str | None
    token: Token
    how: str
    why: str
    status: Status


@dataclass(frozen=True)
class Obtained:
    token: Token | None  # None: no return Secret, nothing to hold
    how: str             # kept | fetched | created | adopted | rotated
    why: str
    status: Status


TokenWork = Verify | Fetch | Acquire | CheckRegistry | CheckCredential | Obtained


@dataclass(frozen=True)
class Ensure:
    """What settle() needs of the plan besides the token."""

    held: Token | None                     # the token the return Secret holds, when usable
    write_secret: Ref | None
    deletes: tuple[DeleteSecret, ...]      # ours, no longer wanted (moved)
    sa_edits: tuple[EditServiceAccount, ...]
    attached: tuple[str, ...]              # status.serviceAccounts once sa_edits are done


@dataclass(frozen=True)
class ObtainToken:
    first: TokenWork
    ensure: Ensure


Step = (PatchMetadata | ProtectConnection | ReleaseConnection | WriteStatus | CreateSecret
        | ReplaceSecret | RecreateSecret | DeleteSecret | EditServiceAccount | Revoke | RevokeByTitle
        | WaitForCreator | RemoveFinalizer | ObtainToken)


@dataclass(frozen=True)
class Settlement:
    """Steps that end a pass, the status they reach, the Events and the report."""

    steps: tuple[Step, ...]
    status: Status
    events: tuple[Transition, ...]
    report: Report
    base: Status  # what a failure among the steps builds on


@dataclass(frozen=True)
class Plan:
    """What a pass does, in order; ``apply.py`` carries it out."""

    steps: tuple[Step, ...] = ()
    status: Status | None = None          # the status the steps write, when known without Quay
    events: tuple[Transition, ...] = ()
    report: Report = READY
    failure: Failure | None = None        # recorded instead of acting
    recordable: bool = False              # a refusal among the steps is recorded (on_error)
    cleanup: bool = False                 # a deletion pass
    inputs: str = ""                      # digest recorded with a failure


class Challenge(Protocol):
    """The registry's Bearer challenge (``quay.RegistryChallenge``)."""

    @property
    def realm(self) -> str: ...
    @property
    def service(self) -> str | None: ...
