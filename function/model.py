"""The DockerToken resource as the reconciler sees it: constants and a typed, read-only view.

``kube.py`` fetches raw objects; ``DockerToken.from_object`` turns one into this view, which
``decide.py`` and ``reconcile.py`` read. Spec validation lives here so every caller gets the same
field-naming messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from function.errors import ConfigError

GROUP = "quay.herve4m.github.io"
VERSION = "v1alpha1"
PLURAL = "dockertokens"
KIND = "DockerToken"
API_VERSION = f"{GROUP}/{VERSION}"
# The Ansible operator's finalizer: objects it created keep working after the switch.
FINALIZER = "quay.herve4m.github.io/finalizer"
# Quay stores titles in a 255-character column.
MAX_TITLE = 255
# Changing this annotation's value asks for a reconcile now, even while a failure waits for its
# retry time (like Flux's reconcile.fluxcd.io/requestedAt): `kubectl annotate --overwrite ...`.
RECONCILE_REQUEST = "quay.herve4m.github.io/reconcile-request"
# On every DockerToken the function manages, one label per (Quay host, token title) whose tokens
# it may claim, keyed by a hash (decide.claim_label): the claim and lease checks list only the
# objects that can matter, whatever the size of the cluster.
CLAIM_LABEL_PREFIX = "quay.herve4m.github.io/claims-"
# The ownership marks of a return Secret (pullsecret.py): nothing else's Secret is ever written.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "quay-dockertoken"
OWNER_ANNOTATION = "quay.herve4m.github.io/owner"  # "<namespace>/<name>" of the DockerToken
OWNER_UID_ANNOTATION = "quay.herve4m.github.io/owner-uid"
# The same uid as a label: the bulk resync lists a page's pull Secrets by it (inventory.py).
OWNER_UID_LABEL = OWNER_UID_ANNOTATION


@dataclass(frozen=True)
class Ref:
    """Namespace and name of a Secret."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Token:
    """One Quay application token: what Quay lists, plus the code when a GET or POST returned it.

    Dates are Quay's RFC 2822 strings, "" where Quay says null.
    """

    uuid: str
    title: str
    created: str = ""
    expiration: str = ""
    last_accessed: str = ""
    code: str = field(default="", repr=False)  # a credential: never in repr, logs or status


@dataclass(frozen=True)
class Retry:
    """A recorded failure: what it was observed with, and when trying again is worth a Quay call."""

    inputs: str      # digest of what could fix it (see decide.inputs_digest)
    attempts: int
    not_before: str  # RFC 3339
    temporary: bool  # Quay was unavailable (the resync reports it), not a refusal


@dataclass(frozen=True)
class Creation:
    """The status lease taken before the one non-idempotent Quay call (POST)."""

    id: str
    title: str
    since: str  # RFC 3339, from the reconciler's clock


@dataclass(frozen=True)
class Status:
    """The persisted part of what we know; see the CRD for each field's meaning."""

    uuid: str = ""
    token_name: str = ""
    expiration: str = ""
    exist_in_quay: bool = False
    ret_secret: Ref | None = None
    pending_revocation: tuple[str, ...] = ()
    creation: Creation | None = None
    retry: Retry | None = None
    renewal_time: str = ""          # when the token is replaced before it expires
    revoke_after: str = ""          # pendingRevocation waits until then (a rotation's grace)
    registry: str = ""              # the registry's own host (Quay's SERVER_HOSTNAME), if other
    service_accounts: tuple[str, ...] = ()  # those whose imagePullSecrets hold the Secret
    conditions: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_object(cls, raw: Mapping[str, Any] | None) -> Status:
        raw = raw or {}
        ret = raw.get("retSecret") or {}
        creation = raw.get("creation") or None
        retry = raw.get("retry") or None
        return cls(
            uuid=str(raw.get("uuid") or ""),
            token_name=str(raw.get("tokenName") or ""),
            expiration=str(raw.get("expiration") or ""),
            exist_in_quay=bool(raw.get("existInQuay")),
            ret_secret=Ref(ret["namespace"], ret["name"]) if ret.get("name") else None,
            pending_revocation=tuple(raw.get("pendingRevocation") or ()),
            creation=(
                Creation(str(creation.get("id", "")), str(creation.get("title", "")),
                         str(creation.get("since", "")))
                if isinstance(creation, Mapping) and creation.get("id")
                else None
            ),
            retry=(
                Retry(str(retry.get("inputs", "")), _int(retry.get("attempts")),
                      str(retry.get("notBefore", "")), retry.get("temporary") is True)
                if isinstance(retry, Mapping) else None
            ),
            renewal_time=str(raw.get("renewalTime") or ""),
            revoke_after=str(raw.get("revokeAfter") or ""),
            registry=str(raw.get("registry") or ""),
            service_accounts=tuple(str(n) for n in raw.get("serviceAccounts") or ()),
            conditions=tuple(raw.get("conditions") or ()),
        )

    def condition(self, type_: str) -> Mapping[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == type_), None)


@dataclass(frozen=True)
class DockerToken:
    """What the reconciler reads from a DockerToken object."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    deleting: bool
    finalizers: tuple[str, ...]
    title: str
    conn_secret: Ref
    ret_secret: Ref | None
    preserve_in_quay: bool
    renew_before: str                  # spec.renewBefore as written ("" when unset)
    service_accounts: tuple[str, ...]  # spec.serviceAccounts
    secret_template: object            # spec.secretTemplate as written (None when unset)
    reconcile_request: str
    claim_labels: frozenset[str]
    status: Status

    @property
    def has_finalizer(self) -> bool:
        return FINALIZER in self.finalizers

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> DockerToken:
        """Build the view; a spec the CRD schema would reject raises ConfigError naming the field."""
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "")
        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            spec = {}
        return cls(
            namespace=ns,
            name=str(meta.get("name") or ""),
            uid=str(meta.get("uid") or ""),
            generation=int(meta.get("generation") or 0),
            resource_version=str(meta.get("resourceVersion") or ""),
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
            title=str(spec["name"]) if isinstance(spec.get("name"), str) else "",
            conn_secret=_ref(spec.get("connSecretRef"), ns) or Ref(ns, ""),
            ret_secret=_ref(spec.get("retSecretRef"), ns),
            preserve_in_quay=spec.get("preserveInQuayOnDeletion") is True,
            renew_before=str(spec.get("renewBefore") or ""),
            service_accounts=tuple(dict.fromkeys(
                str(n) for n in spec.get("serviceAccounts") or () if isinstance(n, str) and n)),
            secret_template=spec.get("secretTemplate"),
            reconcile_request=str((meta.get("annotations") or {}).get(RECONCILE_REQUEST) or ""),
            claim_labels=frozenset(k for k in meta.get("labels") or {} if k.startswith(CLAIM_LABEL_PREFIX)),
            status=Status.from_object(obj.get("status")),
        )

    def validate(self) -> None:
        """Raise ConfigError for a spec that cannot be reconciled (older objects skip the schema)."""
        if not self.conn_secret.name:
            raise ConfigError("spec.connSecretRef.name: required; name the Secret with the Quay connection")
        if not self.title:
            raise ConfigError("spec.name: required; set the title of the Quay token to manage")
        if len(self.title) > MAX_TITLE:
            raise ConfigError(
                f"spec.name: {len(self.title)} characters; Quay accepts at most {MAX_TITLE}, shorten it"
            )
        if self.ret_secret is not None and not self.ret_secret.name:
            raise ConfigError("spec.retSecretRef.name: required when retSecretRef is set")
        if self.service_accounts and self.ret_secret is None:
            raise ConfigError("spec.serviceAccounts: needs spec.retSecretRef (the Secret to attach); "
                              "set retSecretRef or remove serviceAccounts")


def _int(raw: object) -> int:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else 0


def _ref(raw: object, default_namespace: str) -> Ref | None:
    if not isinstance(raw, Mapping):
        return None
    return Ref(str(raw.get("namespace") or default_namespace), str(raw.get("name") or ""))
