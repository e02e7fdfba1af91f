"""Response bodies exactly as Quay (Flask, gunicorn) writes them: JSON views, errors, pages.

``server.py`` picks which one to send; the texts are copied from the recorded transcripts.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import pprint
import textwrap
from dataclasses import dataclass, field
from typing import Any

from tests.quaysim.state import AppToken, User

JSON = "application/json"
HTML = "text/html; charset=utf-8"

# endpoints/api/appspecifictokens.py and endpoints/api/user.py schemas, in Quay's key order.
NEW_TOKEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title"],
    "properties": {
        "title": {"type": "string", "description": "The user-defined title for the token"},
    },
}
SIGNIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Information required to sign in a user.",
    "required": ["username", "password"],
    "properties": {
        "username": {"type": "string", "description": "The user's username"},
        "password": {"type": "string", "description": "The user's password"},
        "invite_code": {"type": "string", "description": "The optional invite code"},
    },
}
VERIFY_SCHEMA: dict[str, Any] = {
    "id": "VerifyUser",
    "type": "object",
    "description": "Information required to verify the signed in user.",
    "required": ["password"],
    "properties": {"password": {"type": "string", "description": "The user's password"}},
}

# Flask/werkzeug texts (014, 015) and Quay's own (043, 070, 077, 083).
NOT_JSON = ("Did not attempt to load JSON data because the request Content-Type was not "
            "'application/json'.")
BAD_JSON = "The browser (or proxy) sent a request that this server could not understand."
CSRF_FAILED = "CSRF token was invalid or missing."
NEED_XHR = "API calls must be invoked with an X-Requested-With header if called from a browser"
TOO_MANY_LOGINS = "Too many login attempts. \nPlease reset your Quay password and try again."
BAD_LOGIN = "Invalid Username or Password"
NOT_ALLOWED = "The method is not allowed for the requested URL."

# Every /api/v1 answer carries these (001).
CORS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "DELETE, GET, HEAD, OPTIONS, POST, PUT"),
    ("Access-Control-Max-Age", "21600"),
    ("Access-Control-Allow-Headers", "AUTHORIZATION, CONTENT-TYPE, X-REQUESTED-WITH"),
]

_GATEWAY_TITLES = {
    429: "429 Too Many Requests",
    502: "502 Bad Gateway",
    503: "503 Service Temporarily Unavailable",
    504: "504 Gateway Time-out",
}
_ERROR_TYPES = {400: "invalid_request", 401: "invalid_token", 403: "insufficient_scope",
                404: "not_found", 409: "conflict"}


@dataclass
class Reply:
    """One HTTP answer; ``server.py`` adds Server, Date, Connection and Content-Length."""

    status: int
    content_type: str | None = JSON
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


def dumps(body: object) -> bytes:
    """Flask's ``jsonify`` output: default separators and a trailing newline."""
    return (json.dumps(body) + "\n").encode()


def html_json(body: object) -> bytes:
    """Quay's ``{"error": ...}`` bodies sent as text/html, without a newline (043)."""
    return json.dumps(body).encode()


def rfc2822(timestamp: float | None) -> str | None:
    """Quay's ``format_date``: whole seconds, always ``-0000``."""
    if timestamp is None:
        return None
    return email.utils.formatdate(int(timestamp), localtime=False, usegmt=False)


def token_view(token: AppToken, *, include_code: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "uuid": token.uuid,
        "title": token.title,
        "last_accessed": rfc2822(token.last_accessed),
        "created": rfc2822(token.created),
        "expiration": rfc2822(token.expiration),
    }
    if include_code:
        data["token_code"] = token.code
    return data


def api_error(status: int, error_type: str, message: str, *, base: str,
              session_required: bool | None = None) -> dict[str, Any]:
    """Quay's RFC 7807-like error body (010, 030, 031, 042, 125)."""
    body: dict[str, Any] = {}
    if session_required is not None:
        body["session_required"] = session_required
    body.update({"detail": message, "error_message": message, "error_type": error_type,
                 "title": error_type, "type": f"{base}/api/v1/error/{error_type}",
                 "status": status})
    return body


def schema_error(schema: dict[str, Any], instance: object) -> str | None:
    """The first jsonschema error for Quay's flat object schemas, in jsonschema's wording."""
    if not isinstance(instance, dict):
        return _validation_text(f"{instance!r} is not of type 'object'", "type", "schema",
                                schema, "instance", instance)
    for name in schema["required"]:
        if name not in instance:
            return _validation_text(f"{name!r} is a required property", "required", "schema",
                                    schema, "instance", instance)
    for name, sub in schema["properties"].items():
        if name in instance and not isinstance(instance[name], str):
            return _validation_text(f"{instance[name]!r} is not of type 'string'", "type",
                                    f"schema['properties'][{name!r}]", sub,
                                    f"instance[{name!r}]", instance[name])
    return None


def _validation_text(message: str, validator: str, schema_path: str, schema: object,
                     instance_path: str, instance: object) -> str:
    def block(value: object) -> str:
        return textwrap.indent(pprint.pformat(value, width=72), "    ")

    return (f"{message}\n\nFailed validating {validator!r} in {schema_path}:\n{block(schema)}"
            f"\n\nOn {instance_path}:\n{block(instance)}")


def page(csrf: str, *, error_code: int | None = None) -> bytes:
    """A (much shortened) Quay web page: what clients read is ``window.__token``."""
    error = f"      window.__error_code = {error_code};\n" if error_code else ""
    return (
        "<!DOCTYPE html>\n<html ng-app=\"quay\" class=\"onprem\">\n  <head>\n"
        "    <base href=\"/\">\n    <title>Quay</title>\n"
        "    <script type=\"text/javascript\">\n"
        f"      window.__token = '{csrf}';\n"
        "      window.__registry_state = 'normal';\n"
        f"{error}"
        "    </script>\n  </head>\n  <body>\n    <div ng-view></div>\n"
        "    <nav id=\"co-l-footer\"><ul><li>Quay v3.11.0 (simulated)</li></ul></nav>\n"
        "  </body>\n</html>"
    ).encode()


def fault_body(status: int, *, base: str) -> tuple[str, bytes]:
    """Content-Type and body for an injected status: proxy pages for 5xx/429, else Quay JSON."""
    if status in _GATEWAY_TITLES:
        title = _GATEWAY_TITLES[status]
        text = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
                f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
                "</body>\r\n</html>\r\n")
        return "text/html", text.encode()
    if status >= 500:
        # gunicorn's own page for a worker crash.
        return "text/html", (b"<html>\n  <head>\n    <title>Internal Server Error</title>\n"
                             b"  </head>\n  <body>\n    <h1><p>Internal Server Error</p></h1>\n"
                             b"    \n  </body>\n</html>\n")
    error_type = _ERROR_TYPES.get(status, "invalid_request")
    message = error_type.replace("_", " ").capitalize()
    return JSON, dumps(api_error(status, error_type, message, base=base))


# -- GET /api/v1/user/ --------------------------------------------------------------------------

# initdb.py's devtable, as recorded in 001/067.
DEVTABLE_EMAIL = "jschorr@devtable.com"
_AVATARS = {
    "devtable": ("94adf3582e0c629956006b1d1f77926e26d998780448cff0340499bd27a3a064", "#393b79"),
    "buynlarge": ("f9a899918948034278719f9ba5eec74817c2d41efb16b99c9109858ad0f71dc3", "#31a354"),
    "testorgforautoprune": ("2f556c602def76e4856b5c67e82690a55f9b693eb818cbc9edb8018013afc844",
                            "#c7c7c7"),
    "library": ("0eed90d4d1538f9584ff6dcff764141bc9fb6ea2fd60d64c000d68ab0969b833", "#7f7f7f"),
    "titi": ("744a960f25e23e5f9f3eb0a39df69af82e7451a04b53bcbf21b5aba4d3918d7d", "#393b79"),
    "sellnsmall": ("765f10127b62e13feb6432b57d8c537a1beb43e7b5e43167f1b56f3ebe4997e3", "#6b6ecf"),
    "proxyorg": ("a84c42797abd252b3172ada70c1ac9d2d112d431ae929b0c3710ddbca7edb9d8", "#9467bd"),
}
DEVTABLE_ORGS = ("buynlarge", "testorgforautoprune", "library", "titi", "sellnsmall", "proxyorg")
# Organizations whose stripe_id is set: preferred_namespace is true for them (001).
_PAID = frozenset({"devtable", "buynlarge"})
_COLORS = ("#393b79", "#31a354", "#7f7f7f", "#6b6ecf", "#9467bd", "#c7c7c7")


def _avatar(name: str, kind: str, email: str) -> dict[str, str]:
    digest, color = _AVATARS.get(name, ("", ""))
    if not digest:
        digest = hashlib.sha256(email.encode()).hexdigest()
        color = _COLORS[int(digest[:2], 16) % len(_COLORS)]
    return {"name": name, "hash": digest, "color": color, "kind": kind}


def user_view(user: User, *, admin: bool, read: bool, org_admin: bool, repo_create: bool,
              superuser: bool) -> dict[str, Any]:
    """``endpoints/api/user.py`` ``user_view`` for the permissions the caller holds."""
    view: dict[str, Any] = {"anonymous": False, "username": user.name,
                            "avatar": _avatar(user.name, "user", user.email)}
    if admin:
        view.update({
            "can_create_repo": True, "is_me": True, "verified": True, "email": user.email,
            "logins": [], "invoice_email": False, "invoice_email_address": None,
            "preferred_namespace": user.name in _PAID, "tag_expiration_s": 1209600,
            "prompts": [], "company": None, "family_name": None, "given_name": None,
            "location": None, "is_free_account": user.name not in _PAID,
            "has_password_set": True,
        })
    if read:
        orgs = []
        for org in user.orgs:
            entry: dict[str, Any] = {"name": org, "avatar": _avatar(org, "org", org),
                                     "can_create_repo": repo_create, "public": False}
            if admin:
                entry.update({"is_org_admin": org_admin, "preferred_namespace": org in _PAID})
            orgs.append(entry)
        view["organizations"] = orgs
    if superuser:
        view["super_user"] = True
    return view
