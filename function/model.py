"""The DockerToken resource as the reconciler sees it: constants and a typed, read-only view.

``kube.py`` fetches raw objects; ``observe.py`` turns one into this view
(``DockerToken.from_object``), which ``decide.py`` reads. Spec validation lives here so every
caller gets the same field-naming messages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
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
# Setting this annotation to a new value asks for a new token now (`kubectl dockertoken renew`);
# the value handled is recorded in status.renewRequest, so a value is acted on once.
RENEW_REQUEST = "quay.herve4m.github.io/renew-request"
MAX_REQUEST = 128  # longer values are recorded as their digest (request_key)
# On every DockerToken the function manages, one label per (Quay host, token title) whose tokens
# it may claim, keyed by a hash (claims.claim_label): the claim and lease checks list only the
# objects that can matter, whatever the size of the cluster.
CLAIM_LABEL_PREFIX = "quay.herve4m.github.io/claims-"
# The ownership marks of a return Secret (pullsecret.py): nothing else's Secret is ever written.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "quay-dockertoken"
OWNER_ANNOTATION = "quay.herve4m.github.io/owner"  # "<namespace>/<name>" of the DockerToken
OWNER_UID_ANNOTATION = "quay.herve4m.github.io/owner-uid"
# Quay's fixed username for application tokens (registry logins, the pull Secret's auth).
APP_USERNAME = "$app"
# Token codes are 120 characters of [A-Z0-9]: anything shaped like one is masked in every
# message, log line and Event, whatever put it there.
CODE_LIKE = re.compile(r"[A-Z0-9]{40,}")
# Kubernetes name rules (the CRD schema has the same patterns): Secret and ServiceAccount names are
# DNS-1123 subdomains, namespaces DNS-1123 labels. A name is never a path: no "/", no "." or "..".
SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
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
    account: str = ""  # Connection.account of the holder ("" for leases written before it existed)


@dataclass(frozen=True)
class Status:
    """``status`` of a DockerToken, typed; see the CRD for each field's meaning.

    Read with :meth:`from_object`; a pass builds the status it wants with :meth:`with_` and
    writes :meth:`merge_patch` against the stored one: only the fields that differ, nothing at
    all when equal (fields this version does not know are never touched).
    """

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
    renew_request: str = ""         # the RENEW_REQUEST value last acted on
    # the token's dates in RFC 3339 (expiration keeps Quay's text), and the registry the pull
    # Secret is for: what metrics, alerts and `kubectl dockertoken status` read
    created_time: str = ""
    expiration_time: str = ""
    last_accessed_time: str = ""
    registry_host: str = ""
    conditions: tuple[Mapping[str, Any], ...] = ()
    message: str | None = None      # None: not written yet ("" is the success message)
    observed_generation: int = 0

    @classmethod
    def from_object(cls, raw: Mapping[str, Any] | None) -> Status:
        raw = raw or {}
        ret = raw.get("retSecret") or {}
        creation = raw.get("creation") or None
        retry = raw.get("retry") or None
        message = raw.get("message")
        return cls(
            uuid=str(raw.get("uuid") or ""),
            token_name=str(raw.get("tokenName") or ""),
            expiration=str(raw.get("expiration") or ""),
            exist_in_quay=bool(raw.get("existInQuay")),
            ret_secret=Ref(ret["namespace"], ret["name"]) if ret.get("name") else None,
            pending_revocation=tuple(raw.get("pendingRevocation") or ()),
            creation=(
                Creation(str(creation.get("id", "")), str(creation.get("title", "")),
                         str(creation.get("since", "")), str(creation.get("account") or ""))
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
            renew_request=str(raw.get("renewRequest") or ""),
            created_time=str(raw.get("createdTime") or ""),
            expiration_time=str(raw.get("expirationTime") or ""),
            last_accessed_time=str(raw.get("lastAccessedTime") or ""),
            registry_host=str(raw.get("registryHost") or ""),
            conditions=tuple(raw.get("conditions") or ()),
            message=message if isinstance(message, str) else None,
            observed_generation=_int(raw.get("observedGeneration")),
        )

    def condition(self, type_: str) -> Mapping[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == type_), None)

    def with_(self, **changes: Any) -> Status:
        """A copy with ``changes`` (field names as in this class). What ``dataclasses.replace``
        does for this plain frozen class, without its per-field loop: a pass makes several
        copies per object, and a bulk resync plans a thousand objects per request."""
        unknown = changes.keys() - _KEYS.keys()
        if unknown:
            raise TypeError(f"Status has no field {sorted(unknown)[0]!r}")
        copy = object.__new__(Status)
        copy.__dict__.update(self.__dict__, **changes)
        return copy

    def merge_patch(self, stored: Status) -> dict[str, Any]:
        """The JSON merge patch that turns ``stored`` into this status; {} when they are equal.
        An empty value is written as null, which removes the key."""
        return {key: _raw(getattr(self, name), keep_empty=name == "message")
                for name, key in _KEYS.items() if getattr(self, name) != getattr(stored, name)}


# Status fields and their keys in the object.
_KEYS = {
    "uuid": "uuid", "token_name": "tokenName", "expiration": "expiration",
    "exist_in_quay": "existInQuay", "ret_secret": "retSecret",
    "pending_revocation": "pendingRevocation", "creation": "creation", "retry": "retry",
    "renewal_time": "renewalTime", "revoke_after": "revokeAfter", "registry": "registry",
    "service_accounts": "serviceAccounts", "conditions": "conditions", "message": "message",
    "observed_generation": "observedGeneration", "renew_request": "renewRequest",
    "created_time": "createdTime", "expiration_time": "expirationTime",
    "last_accessed_time": "lastAccessedTime", "registry_host": "registryHost",
}
# every field has its key (merge_patch writes only those, and with_ accepts only those)
assert _KEYS.keys() == {f.name for f in dataclasses.fields(Status)}


def _raw(value: object, *, keep_empty: bool = False) -> Any:
    """A status field as JSON: empty values as null (unless ``keep_empty``: the message "")."""
    if isinstance(value, Ref):
        return {"namespace": value.namespace, "name": value.name}
    if isinstance(value, Creation):
        return {"id": value.id, "title": value.title, "since": value.since}
    if isinstance(value, Retry):
        return {"inputs": value.inputs, "attempts": value.attempts, "notBefore": value.not_before,
                "temporary": value.temporary}
    if isinstance(value, bool):
        return value  # existInQuay: false is said, not removed
    if isinstance(value, tuple):
        return [dict(v) if isinstance(v, Mapping) else v for v in value] or None
    return value if keep_empty else value or None


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
    renew_request: str                 # the RENEW_REQUEST annotation ("" when unset)
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
            renew_request=request_key((meta.get("annotations") or {}).get(RENEW_REQUEST)),
            claim_labels=frozenset(k for k in meta.get("labels") or {} if k.startswith(CLAIM_LABEL_PREFIX)),
            status=Status.from_object(obj.get("status")),
        )

    def validate(self) -> None:
        """Raise ConfigError for a spec that cannot be reconciled (older objects skip the schema)."""
        if not self.conn_secret.name:
            raise ConfigError("spec.connSecretRef.name: required; name the Secret with the Quay connection")
        error = self.name_error()
        if error is not None:
            raise error
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


    def name_error(self) -> ConfigError | None:
        """The first spec field that would become part of an API URL and is not a Kubernetes name.

        Checked before anything is read (``observe.py``): objects stored before the CRD had its
        patterns, or on a cluster whose CRD is older, must never turn a name into a path.
        """
        fields: list[tuple[str, str, re.Pattern[str], str]] = [
            ("spec.connSecretRef.name", self.conn_secret.name, SUBDOMAIN, "a Secret name"),
            ("spec.connSecretRef.namespace", self.conn_secret.namespace, LABEL, "a namespace name"),
        ]
        if self.ret_secret is not None:
            fields += [("spec.retSecretRef.name", self.ret_secret.name, SUBDOMAIN, "a Secret name"),
                       ("spec.retSecretRef.namespace", self.ret_secret.namespace, LABEL,
                        "a namespace name")]
        fields += [(f"spec.serviceAccounts[{i}]", n, SUBDOMAIN, "a ServiceAccount name")
                   for i, n in enumerate(self.service_accounts)]
        for path, value, rule, what in fields:
            if value and not rule.match(value):
                # never echo the value: it may be long, or built to mislead whoever reads status
                return ConfigError(
                    f"{path}: not {what} ({len(value)} characters); use lower-case letters, digits "
                    f"and '-'{'' if rule is LABEL else ' or interior dots'}, at most "
                    f"{63 if rule is LABEL else 253} characters (a name, never a path)")
        return None


def request_key(raw: object) -> str:
    """The renew-request annotation as status records it: the value itself, or a digest of one
    longer than a timestamp needs (an annotation may hold 256 KiB; status never copies that)."""
    value = raw if isinstance(raw, str) else ""
    if len(value) <= MAX_REQUEST:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def _int(raw: object) -> int:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else 0


def _ref(raw: object, default_namespace: str) -> Ref | None:
    if not isinstance(raw, Mapping):
        return None
    return Ref(str(raw.get("namespace") or default_namespace), str(raw.get("name") or ""))
