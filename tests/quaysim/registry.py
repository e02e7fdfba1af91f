"""The registry side (``/v2/``, ``/v2/auth``, tags list): proves an app token works as a password.

``server.py`` routes ``/v2/...`` here. Tokens are RS256 JWTs shaped like Quay's (093-100); the
signing key is made once per process. Logging in with ``$app:<token_code>`` sets the token's
``last_accessed`` as Quay does (101).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.quaysim import views
from tests.quaysim.state import State

# Sample repositories the tags endpoint can answer for (096).
REPOSITORIES = {"devtable/simple": ["latest", "prod"]}
_SCOPE = re.compile(r"^repository:([a-z0-9_.-]+/[a-z0-9_./-]+):([a-z,*]*)$")
_TOKEN_LIFETIME = 3600
# flask-cors on the registry blueprint; Allow-Headers is sent once per header (092).
_REGISTRY_CORS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "OPTIONS, HEAD, GET"),
    ("Access-Control-Max-Age", "21600"),
    ("Access-Control-Allow-Headers", "Authorization"),
    ("Access-Control-Allow-Headers", "Content-Type"),
]


@functools.cache
def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _kid() -> str:
    der = _key().public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return _b64(hashlib.sha256(der).digest())


def _sign(payload: dict[str, Any]) -> str:
    header = {"alg": "RS256", "kid": _kid(), "typ": "JWT"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = _key().sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _verify(token: str, *, audience: str, now: float) -> dict[str, Any] | None:
    try:
        head, body, signature = token.split(".")
        _key().public_key().verify(_unb64(signature), f"{head}.{body}".encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
        payload: dict[str, Any] = json.loads(_unb64(body))
    except (ValueError, InvalidSignature, binascii.Error):
        return None
    if payload.get("aud") != audience or not payload.get("nbf", 0) <= now < payload["exp"]:
        return None
    return payload


def _challenge(base: str, host: str) -> list[tuple[str, str]]:
    return [("WWW-Authenticate", f'Bearer realm="{base}/v2/auth",service="{host}"'),
            ("Docker-Distribution-API-Version", "registry/2.0")]


def _unauthorized(message: str, *, base: str, host: str) -> views.Reply:
    body = {"errors": [{"code": "UNAUTHORIZED", "detail": {}, "message": message}]}
    return views.Reply(401, views.JSON, views.dumps(body), _challenge(base, host))


def base(state: State, authorization: str, *, base: str, host: str) -> views.Reply:
    """``GET /v2/``: only a registry JWT is accepted (091, 092, 095)."""
    scheme, _, credentials = authorization.partition(" ")
    sparse = ("X-Sparse-Manifest-Support", "false")
    if not authorization:
        return views.Reply(401, views.HTML, b"true", [*_challenge(base, host), sparse])
    if scheme.lower() != "bearer":
        return views.Reply(401, views.HTML,
                           views.html_json({"error": "Invalid bearer token format"}),
                           [*_challenge(base, host), *_REGISTRY_CORS, ("Vary", "Origin")])
    if _verify(credentials.strip(), audience=host, now=state.now()) is None:
        return _unauthorized("Invalid bearer token", base=base, host=host)
    return views.Reply(200, views.HTML, b"true", [*_challenge(base, host), sparse])


def tags(state: State, authorization: str, repository: str, *, base: str,
         host: str) -> views.Reply:
    """``GET /v2/<ns>/<repo>/tags/list`` with a pull-scoped JWT (096)."""
    scheme, _, credentials = authorization.partition(" ")
    claims = (_verify(credentials.strip(), audience=host, now=state.now())
              if scheme.lower() == "bearer" else None)
    granted = any(entry.get("name") == repository and "pull" in entry.get("actions", [])
                  for entry in (claims or {}).get("access", []))
    if not granted or repository not in REPOSITORIES:
        return _unauthorized("access to the requested resource is not authorized",
                             base=base, host=host)
    body = {"name": repository, "tags": REPOSITORIES[repository]}
    return views.Reply(200, views.JSON, views.dumps(body))


def auth(state: State, authorization: str, scope: str | None, *, base: str,
         host: str) -> views.Reply:
    """``GET /v2/auth``: Basic ``$app:<code>``, ``$oauthtoken:<token>`` or ``user:password``."""
    scheme, _, encoded = authorization.partition(" ")
    try:
        username, sep, secret = _unb64(encoded.strip()).decode().partition(":")
    except (ValueError, binascii.Error):
        sep = ""
    if scheme.lower() != "basic" or not sep:
        return _unauthorized(views.BAD_LOGIN, base=base, host=host)
    context: dict[str, Any] = {"version": 2}
    if username == "$app":
        token = state.token_by_code(secret)
        if token is None:
            return _unauthorized("Invalid token", base=base, host=host)
        state.touch(token.uuid)
        user = token.owner
        context.update(entity_kind="appspecifictoken", entity_reference=token.uuid,
                       kind="user", user=user)
    elif username == "$oauthtoken":
        oauth = state.valid_oauth(secret)
        if oauth is None:
            return _unauthorized("Invalid oauth access token", base=base, host=host)
        user = oauth.user
        context.update(entity_kind="oauthtoken", entity_reference=oauth.uuid, kind="oauth",
                       oauth=oauth.uuid, user=user)
    else:
        result = state.check_password(username, secret)
        if result.retry_after is not None:
            return views.Reply(429, views.HTML, views.TOO_MANY_LOGINS.encode(),
                               [("Retry-After", str(int(result.retry_after)))])
        if result.user is None:
            return _unauthorized(views.BAD_LOGIN, base=base, host=host)
        user = result.user.name
        context.update(entity_kind="user", entity_reference=result.user.uuid, kind="user",
                       user=user)
    access, roots = _access(scope, user)
    context.update({"com.apostille.roots": roots, "com.apostille.root": "$disabled"})
    now = int(state.now())
    payload = {"iss": "quay", "aud": host, "nbf": now, "iat": now, "exp": now + _TOKEN_LIFETIME,
               "sub": user, "access": access, "context": context}
    return views.Reply(200, views.JSON, views.dumps({"token": _sign(payload)}),
                       [("Cache-Control", "no-cache, no-store, must-revalidate")])


def _access(scope: str | None, user: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Grant what the scope asks on the user's own namespace; nothing elsewhere."""
    match = _SCOPE.match(scope or "")
    if match is None:
        return [], {}
    name, wanted = match.groups()
    own = name.split("/", 1)[0] == user
    actions = [a for a in wanted.split(",") if own and a in ("pull", "push")]
    return [{"type": "repository", "name": name, "actions": actions}], {name: "$disabled"}
