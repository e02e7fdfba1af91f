"""The return Secret (the pull Secret): what it must contain, whose it is, whether it is intact,
and the ServiceAccount ``imagePullSecrets`` edits that attach it.

Pure functions; ``decide.py`` builds the desired body here, ``apply.py`` hands it to ``kube.py``.
The keys are the original operator's (see the seed document), so pods that used its Secrets
keep working.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from function import template
from function.model import (
    API_VERSION,
    APP_USERNAME,
    KIND,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OWNER_ANNOTATION,
    OWNER_UID_ANNOTATION,
    OWNER_UID_LABEL,
    DockerToken,
    Ref,
    Token,
)

__all__ = ["MANAGED_BY", "MANAGED_BY_LABEL", "OWNER_ANNOTATION", "OWNER_UID_ANNOTATION", "SECRET_TYPE",
           "build", "decoded", "is_intact", "is_ours", "pull_secret_edit", "string_data", "token_from"]

SECRET_TYPE = "kubernetes.io/dockerconfigjson"
KEYS = (".dockerconfigjson", "auth", "created", "expiration", "lastAccessed", "name", "tokenCode",
        "username", "uuid")


def string_data(token: Token, registry: str | Sequence[str]) -> dict[str, str]:
    """The decoded ``data`` of the Secret; empty strings where Quay says null.

    ``registry``: the host(s) ``.dockerconfigjson`` names: the API host, and the registry's own
    name when Quay announces another one.
    """
    auth = base64.b64encode(f"{APP_USERNAME}:{token.code}".encode()).decode()
    hosts = [registry] if isinstance(registry, str) else list(dict.fromkeys(registry))
    config = {"auths": {host: {"auth": auth, "email": ""} for host in hosts}}
    return {
        ".dockerconfigjson": json.dumps(config, separators=(",", ":")),
        "auth": auth,
        "created": token.created,
        "expiration": token.expiration,
        "lastAccessed": token.last_accessed,
        "name": token.title,
        "tokenCode": token.code,
        "username": APP_USERNAME,
        "uuid": token.uuid,
    }


def build(dt: DockerToken, where: Ref, token: Token, registry: str | Sequence[str]) -> dict[str, Any]:
    """The whole Secret object; an ownerReference only where Kubernetes allows one (same namespace),
    and spec.secretTemplate's labels and annotations (never replacing the ownership marks)."""
    labels, annotations = template.apply_template(
        {MANAGED_BY_LABEL: MANAGED_BY, OWNER_UID_LABEL: dt.uid},
        {OWNER_ANNOTATION: f"{dt.namespace}/{dt.name}", OWNER_UID_ANNOTATION: dt.uid},
        dt.secret_template)
    meta: dict[str, Any] = {
        "name": where.name,
        "namespace": where.namespace,
        "labels": labels,
        "annotations": annotations,
    }
    if where.namespace == dt.namespace:
        meta["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": KIND, "name": dt.name, "uid": dt.uid,
             "controller": True, "blockOwnerDeletion": False}
        ]
    data = {k: base64.b64encode(v.encode()).decode() for k, v in string_data(token, registry).items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": SECRET_TYPE, "data": data}


def is_ours(secret: Mapping[str, Any], dt: DockerToken) -> bool:
    """Ours if it carries our owner annotations with this object's exact uid, or an ownerReference
    to this object (the old operator's). An owner annotation with an empty or missing uid is
    not enough: anyone who may create a Secret could plant one and have a token code written
    into it."""
    meta = secret.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if annotations.get(OWNER_ANNOTATION) == f"{dt.namespace}/{dt.name}" \
            and annotations.get(OWNER_UID_ANNOTATION) == dt.uid and dt.uid:
        return True
    return any(ref.get("uid") == dt.uid for ref in meta.get("ownerReferences") or ())


def decoded(secret: Mapping[str, Any]) -> dict[str, str]:
    """The Secret's data, decoded; undecodable values become "" (they will not match)."""
    out = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode()
        except (ValueError, TypeError):
            out[key] = ""
    return out


def token_from(secret: Mapping[str, Any]) -> Token | None:
    """The token a Secret of ours holds; None when a key is missing or the copies of the code
    disagree (someone edited one of them: the code must then come from Quay again)."""
    data = decoded(secret)
    if not data.get("uuid") or not data.get("tokenCode"):
        return None
    auth = base64.b64encode(f"{APP_USERNAME}:{data['tokenCode']}".encode()).decode()
    try:
        auths = json.loads(data.get(".dockerconfigjson", "")).get("auths", {})
        copies = {entry.get("auth") for entry in auths.values()}
    except (ValueError, AttributeError):
        return None
    if data.get("auth") != auth or copies != {auth}:
        return None
    return Token(
        uuid=data["uuid"],
        title=data.get("name", ""),
        created=data.get("created", ""),
        expiration=data.get("expiration", ""),
        last_accessed=data.get("lastAccessed", ""),
        code=data["tokenCode"],
    )


def is_intact(secret: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Type, data, marks and ownerReferences as desired (other labels/annotations may be added)."""
    meta, want = secret.get("metadata") or {}, desired["metadata"]
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    return (
        secret.get("type") == desired["type"]
        # the same base64 is the same data; decoded only when the text differs
        and (secret.get("data") == desired.get("data") or decoded(secret) == decoded(desired))
        and all(labels.get(k) == v for k, v in want["labels"].items())
        and all(annotations.get(k) == v for k, v in want["annotations"].items())
        and [r.get("uid") for r in meta.get("ownerReferences") or ()]
        == [r["uid"] for r in want.get("ownerReferences", ())]
    )


def pull_secret_edit(current: Sequence[Any] | None, secret_name: str,
                     attach: bool) -> list[Any] | None:
    """A ServiceAccount's new ``imagePullSecrets`` with ``secret_name`` attached or detached;
    None when nothing changes (so no write is made).

    Every other entry is kept as it is and where it is, even one this code does not
    understand: only entries naming ``secret_name`` are added (at the end, once) or removed
    (all of them).
    """
    if not secret_name:
        raise ValueError("a Secret name is required")
    entries = list(current or ())
    ours = [e for e in entries if isinstance(e, Mapping) and e.get("name") == secret_name]
    if attach:
        return None if ours else [*entries, {"name": secret_name}]
    if not ours:
        return None
    return [e for e in entries if not (isinstance(e, Mapping) and e.get("name") == secret_name)]
