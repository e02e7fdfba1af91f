"""The return Secret (the pull Secret): what it must contain, whose it is, whether it is intact.

Pure functions; ``apply.py`` builds the desired body here and hands it to ``kube.py``. The keys are the
original operator's (see the seed document), so pods that used its Secrets keep working.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from function.model import API_VERSION, KIND, DockerToken, Ref, Token

SECRET_TYPE = "kubernetes.io/dockerconfigjson"
USERNAME = "$app"  # Quay's fixed username for application tokens
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "quay-dockertoken"
OWNER_ANNOTATION = "quay.herve4m.github.io/owner"  # "<namespace>/<name>" of the DockerToken
OWNER_UID_ANNOTATION = "quay.herve4m.github.io/owner-uid"
KEYS = (".dockerconfigjson", "auth", "created", "expiration", "lastAccessed", "name", "tokenCode",
        "username", "uuid")


def string_data(token: Token, registry: str) -> dict[str, str]:
    """The decoded ``data`` of the Secret; empty strings where Quay says null."""
    auth = base64.b64encode(f"{USERNAME}:{token.code}".encode()).decode()
    config = {"auths": {registry: {"auth": auth, "email": ""}}}
    return {
        ".dockerconfigjson": json.dumps(config, separators=(",", ":")),
        "auth": auth,
        "created": token.created,
        "expiration": token.expiration,
        "lastAccessed": token.last_accessed,
        "name": token.title,
        "tokenCode": token.code,
        "username": USERNAME,
        "uuid": token.uuid,
    }


def build(dt: DockerToken, where: Ref, token: Token, registry: str) -> dict[str, Any]:
    """The whole Secret object; an ownerReference only where Kubernetes allows one (same namespace)."""
    meta: dict[str, Any] = {
        "name": where.name,
        "namespace": where.namespace,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY},
        "annotations": {OWNER_ANNOTATION: f"{dt.namespace}/{dt.name}", OWNER_UID_ANNOTATION: dt.uid},
    }
    if where.namespace == dt.namespace:
        meta["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": KIND, "name": dt.name, "uid": dt.uid,
             "controller": True, "blockOwnerDeletion": False}
        ]
    data = {k: base64.b64encode(v.encode()).decode() for k, v in string_data(token, registry).items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": SECRET_TYPE, "data": data}


def is_ours(secret: Mapping[str, Any], dt: DockerToken) -> bool:
    """Ours if it carries our owner annotation, or an ownerReference to this object (the old operator's)."""
    meta = secret.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if annotations.get(OWNER_ANNOTATION) == f"{dt.namespace}/{dt.name}":
        return annotations.get(OWNER_UID_ANNOTATION) in (None, "", dt.uid)
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
    auth = base64.b64encode(f"{USERNAME}:{data['tokenCode']}".encode()).decode()
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
        and decoded(secret) == decoded(desired)
        and all(labels.get(k) == v for k, v in want["labels"].items())
        and all(annotations.get(k) == v for k, v in want["annotations"].items())
        and [r.get("uid") for r in meta.get("ownerReferences") or ()]
        == [r["uid"] for r in want.get("ownerReferences", ())]
    )
